"""The tap's metrics: plain counters on the request path, Prometheus families at scrape time."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest

from hvds.nbd.constants import Command
from hvds.tap.metrics import ExportStats, LinkStats, TapCollector


@dataclass
class FakeExport:
    name: str
    stats: ExportStats = field(default_factory=ExportStats)
    dirty_bytes: int = 0


def scrape(*exports: FakeExport, link: LinkStats | None = None) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(TapCollector(lambda: exports, link or LinkStats()))
    samples = {}
    for line in generate_latest(registry).decode().splitlines():
        if not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_requests_bytes_and_latency_histogram_per_export_and_op() -> None:
    export = FakeExport("vm1-disk0", dirty_bytes=65536)
    for seconds in (3e-6, 7e-5, 0.2):
        export.stats.in_flight += 1
        export.stats.done(Command.WRITE, 4096, seconds)
    export.stats.in_flight += 1  # one still waiting for its answer
    samples = scrape(export, link=LinkStats(up=True, buffered_bytes=lambda: 123))
    labels = 'export="vm1-disk0",op="write"'
    assert samples[f"hvds_tap_requests_total{{{labels}}}"] == 3
    assert samples[f"hvds_tap_bytes_total{{{labels}}}"] == 3 * 4096
    bucket = 'hvds_tap_request_seconds_bucket{{export="vm1-disk0",le="{}",op="write"}}'
    assert samples[bucket.format("5e-06")] == 1
    assert samples[bucket.format("0.0001")] == 2
    assert samples[bucket.format("0.5")] == 3
    assert samples[bucket.format("+Inf")] == 3
    assert samples['hvds_tap_queue_depth{export="vm1-disk0"}'] == 1
    assert samples['hvds_tap_dirty_bytes{export="vm1-disk0"}'] == 65536
    assert samples["hvds_tap_vdsa_link_up"] == 1
    assert samples["hvds_tap_vdsa_link_buffered_bytes"] == 123
