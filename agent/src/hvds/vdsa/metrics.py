"""Prometheus metrics of the VDSA, read from its state when Prometheus scrapes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from hvds.vdsa.service import VdsaService


class VdsaCollector(Collector):
    def __init__(self, service: Callable[[], VdsaService]) -> None:
        self._current = service  # the service of the moment: a reconfiguration replaces it

    @property
    def _service(self) -> VdsaService:
        return self._current()

    def collect(self) -> Iterator[Metric]:
        yield from self._source()
        yield from self._target()

    def _source(self) -> Iterator[Metric]:
        link_labels = ["vpg", "target"]
        rpo = GaugeMetricFamily(
            "hvds_vdsa_rpo_seconds",
            "Age of the newest checkpoint the target holds durably (the data at risk)",
            labels=link_labels,
        )
        up = GaugeMetricFamily("hvds_vdsa_link_up", "1 while connected", labels=link_labels)
        written = CounterMetricFamily(
            "hvds_vdsa_written_bytes", "Bytes of writes sent to the target", labels=link_labels
        )
        deduplicated = CounterMetricFamily(
            "hvds_vdsa_deduplicated_bytes",
            "Bytes of batches after zero elision and deduplication, before compression",
            labels=link_labels,
        )
        wire = CounterMetricFamily(
            "hvds_vdsa_wire_bytes", "Bytes sent on the wire, after compression", labels=link_labels
        )
        checkpoints = CounterMetricFamily(
            "hvds_vdsa_checkpoints", "Checkpoints cut at the source", labels=["vpg"]
        )
        held = GaugeMetricFamily(
            "hvds_vdsa_held_bytes", "Write data held until every target has it", labels=["vpg"]
        )
        journal_full = GaugeMetricFamily(
            "hvds_vdsa_target_journal_full",
            "1 while the target refuses writes because its journal is full",
            labels=link_labels,
        )
        mirror_full = GaugeMetricFamily(
            "hvds_vdsa_target_mirror_full",
            "1 while the target refuses writes because its mirrors' datastore is full",
            labels=link_labels,
        )
        consistent = GaugeMetricFamily(
            "hvds_vdsa_vpg_consistent",
            "0 while a resync keeps the VPG from taking checkpoints",
            labels=["vpg"],
        )
        now = time.time_ns()
        for source in self._service.sources:
            for link in source.links:
                labels = [source.name, link.target.server_name]
                stats = link.stats
                if stats.checkpoint_time_ns:
                    rpo.add_metric(labels, (now - stats.checkpoint_time_ns) / 1e9)
                up.add_metric(labels, int(stats.connected))
                written.add_metric(labels, stats.bytes_in)
                deduplicated.add_metric(labels, stats.bytes_deduplicated)
                wire.add_metric(labels, stats.bytes_on_wire)
                journal_full.add_metric(labels, int(stats.target_journal_full))
                mirror_full.add_metric(labels, int(stats.target_mirror_full))
            checkpoints.add_metric([source.name], source.checkpoints_taken)
            held.add_metric([source.name], source.held_bytes)
            consistent.add_metric([source.name], int(source.consistent))
        yield from (rpo, up, written, deduplicated, wire, journal_full, mirror_full)
        yield from (checkpoints, held, consistent)

    def _target(self) -> Iterator[Metric]:
        used = GaugeMetricFamily("hvds_vdsa_journal_bytes", "Journal space in use", labels=["vpg"])
        limit = GaugeMetricFamily(
            "hvds_vdsa_journal_limit_bytes", "Journal size limit", labels=["vpg"]
        )
        pending = GaugeMetricFamily(
            "hvds_vdsa_journal_pending_bytes",
            "Writes in the journal not yet in a checkpoint",
            labels=["vpg"],
        )
        kept = GaugeMetricFamily(
            "hvds_vdsa_journal_checkpoints", "Checkpoints that can be recovered", labels=["vpg"]
        )
        full = GaugeMetricFamily(
            "hvds_vdsa_journal_full",
            "1 while the journal refuses writes: its size limit or its file system (alert)",
            labels=["vpg"],
        )
        mirror_full = GaugeMetricFamily(
            "hvds_vdsa_mirror_full",
            "1 while the mirrors' datastore is full: checkpoints wait, the source is refused "
            "(alert)",
            labels=["vpg"],
        )
        history = GaugeMetricFamily(
            "hvds_vdsa_journal_history_seconds",
            "Age of the oldest checkpoint that can be recovered",
            labels=["vpg"],
        )
        now = time.time_ns()
        for name, state in self._service.targets.items():
            usage = state.usage
            if usage is None:
                continue
            used.add_metric([name], usage.bytes_used)
            limit.add_metric([name], usage.size_limit)
            pending.add_metric([name], usage.pending_redo_bytes)
            kept.add_metric([name], usage.checkpoints)
            full.add_metric([name], int(state.journal_full))
            mirror_full.add_metric([name], int(state.mirror_full))
            if usage.oldest_checkpoint_time_ns:
                history.add_metric([name], (now - usage.oldest_checkpoint_time_ns) / 1e9)
        yield from (used, limit, pending, kept, full, mirror_full, history)
