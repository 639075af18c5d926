"""The manager's Prometheus metrics, read from the database at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import select

from hvds.manager.db import Host, Vpg
from hvds.manager.site import SiteManager


class ManagerCollector(Collector):
    def __init__(self, site: SiteManager) -> None:
        self._site = site

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        rpo = GaugeMetricFamily("hvds_vpg_rpo_seconds", "Age of the newest checkpoint every "
                                "target of the VPG holds", labels=["vpg"])  # fmt: skip
        protected = GaugeMetricFamily(
            "hvds_vpg_protected", "1 when the VPG is protected", labels=["vpg", "state"]
        )
        alert = GaugeMetricFamily(
            "hvds_vpg_rpo_alert_seconds", "The VPG's RPO alert threshold", labels=["vpg"]
        )
        up = GaugeMetricFamily("hvds_host_up", "1 when the host's heartbeats arrive",
                               labels=["host"])  # fmt: skip
        journal = GaugeMetricFamily(
            "hvds_host_journal_checkpoints",
            "Checkpoints kept per replica on the host",
            labels=["host", "replica"],
        )
        with self._site.store.session() as session:
            for vpg in session.scalars(select(Vpg)):
                if vpg.rpo_seconds is not None:
                    rpo.add_metric([vpg.name], vpg.rpo_seconds)
                protected.add_metric([vpg.name, vpg.state], float(vpg.state == "protected"))
                alert.add_metric([vpg.name], vpg.spec["rpo_alert_seconds"])
            for host in session.scalars(select(Host)):
                up.add_metric([host.name], float(self._site.host_is_up(host)))
                for label, target in host.status.get("targets", {}).items():
                    journal.add_metric([host.name, label], target.get("checkpoints", 0))
        yield from (rpo, protected, alert, up, journal)
        yield GaugeMetricFamily(
            "hvds_manager_watch_seconds",
            "How long the last pass of the watch over every VPG took (in its worker thread)",
            value=self._site.watch_seconds,
        )
        yield CounterMetricFamily(
            "hvds_manager_watch_passes", "Passes of the watch since the manager started",
            value=self._site.watch_passes,
        )  # fmt: skip
