"""Prometheus metrics of the tap. Label children are resolved once per export (see ExportMetrics)
so that the per-request cost is an increment, not a label lookup."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("hvds_tap_requests", "NBD requests served", ["export", "op"])
BYTES = Counter("hvds_tap_bytes", "Bytes read or written by NBD clients", ["export", "op"])
LATENCY = Histogram(
    "hvds_tap_request_seconds",
    "Time from receiving an NBD request to sending its reply",
    ["export", "op"],
    buckets=(5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 0.025, 0.1, 0.5, 2.5),
)
QUEUE_DEPTH = Gauge(
    "hvds_tap_queue_depth", "NBD requests received and not yet answered", ["export"]
)
DIRTY_BYTES = Gauge(
    "hvds_tap_dirty_bytes",
    "Bytes marked dirty: copies not yet acknowledged by the VDSA",
    ["export"],
)
RESYNC_BYTES = Counter("hvds_tap_resync_bytes", "Dirty blocks sent again from the disk", ["export"])
COPIES_LOST = Counter(
    "hvds_tap_copies_lost",
    "Write copies not sent (VDSA down or link full), left to the resync",
    ["export"],
)
CLIENTS = Gauge("hvds_tap_clients", "Connected NBD clients", ["export"])
LINK_UP = Gauge("hvds_tap_vdsa_link_up", "1 while the tap is connected to its VDSA")
LINK_BUFFERED = Gauge("hvds_tap_vdsa_link_buffered_bytes", "Copies queued to the VDSA, in bytes")

OPS = ("read", "write", "flush", "trim", "zero", "cache", "block_status")


@dataclass
class ExportMetrics:
    requests: dict[str, Counter]
    bytes: dict[str, Counter]
    latency: dict[str, Histogram]
    queue_depth: Gauge
    dirty_bytes: Gauge
    resync_bytes: Counter
    copies_lost: Counter
    clients: Gauge

    @classmethod
    def for_export(cls, name: str) -> ExportMetrics:
        return cls(
            requests={op: REQUESTS.labels(name, op) for op in OPS},
            bytes={op: BYTES.labels(name, op) for op in OPS},
            latency={op: LATENCY.labels(name, op) for op in OPS},
            queue_depth=QUEUE_DEPTH.labels(name),
            dirty_bytes=DIRTY_BYTES.labels(name),
            resync_bytes=RESYNC_BYTES.labels(name),
            copies_lost=COPIES_LOST.labels(name),
            clients=CLIENTS.labels(name),
        )

    @staticmethod
    def remove(name: str) -> None:
        for metric in (REQUESTS, BYTES, LATENCY):
            for op in OPS:
                metric.remove(name, op)
        for gauge in (QUEUE_DEPTH, DIRTY_BYTES, RESYNC_BYTES, COPIES_LOST, CLIENTS):
            gauge.remove(name)
