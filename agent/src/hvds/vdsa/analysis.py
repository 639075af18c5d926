"""The target's data analyzer loop: what each replicated disk holds, kept up to date.

Every ``analysis_interval`` seconds, the mirrors of a journal that took a checkpoint since the
last look are analyzed (partition table, file systems, OS) in a worker thread. The mirror may
move to a newer checkpoint during the read; the report is about what the VM's disk holds, not
a recovery point, so a report that straddles two checkpoints is still a fair picture, and the
next pass corrects it.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from hvds.analyzer.analyze import analyze
from hvds.vdsa.target import TargetVpgState

log = logging.getLogger(__name__)


async def keep_analyzing(state: TargetVpgState) -> None:
    interval = state.config.analysis_interval
    if not interval:
        return
    analyzed_at: int | None = None  # id of the checkpoint the reports describe
    while True:
        latest = state.checkpoints[-1].id if state.checkpoints else None
        if latest is not None and latest != analyzed_at:
            disks = [d for d in state.config.disks if d.source == state.source]
            reports = await asyncio.to_thread(_analyze_all, [(d.name, d.mirror) for d in disks])
            state.analysis = {"checkpoint": latest, "disks": reports}
            analyzed_at = latest
        await asyncio.sleep(interval)


def _analyze_all(mirrors: list[tuple[str, Path]]) -> dict[str, dict[str, Any]]:
    reports = {}
    for name, path in mirrors:
        try:
            reports[name] = analyze(path).to_dict()
        except OSError as exc:
            log.warning("cannot analyze the mirror of %s: %s", name, exc)
            reports[name] = {"error": str(exc)}
    return reports


def summary(analysis: dict[str, Any]) -> dict[str, Any]:
    """One line per disk for the status: table, file systems, OS."""
    disks = {}
    for name, report in analysis.get("disks", {}).items():
        if "error" in report:
            disks[name] = {"error": report["error"]}
            continue
        filesystems = [
            p["filesystem"]["type"] for p in report.get("partitions", []) if p.get("filesystem")
        ]
        if report.get("filesystem"):
            filesystems.append(report["filesystem"]["type"])
        os_report = report.get("os") or {}
        disks[name] = {
            "partition_table": report.get("partition_table"),
            "filesystems": filesystems,
            "os": os_report.get("pretty_name") or os_report.get("name"),
        }
    return {"checkpoint": analysis.get("checkpoint"), "disks": disks}
