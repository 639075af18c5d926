"""Live failover of a replicated VPG at its target host (decision 0011).

``start``: the VPG's source is refused from now on (a source that is still up keeps its writes
in its taps' bitmaps), and every disk is served as a writable view of the chosen checkpoint:
the recovered VMs run on those views while the mirror and journal stay as they were.
``rollback``: the views and their writes are thrown away and the source is let in again; it
resumes at the last sequence the journal holds, so protection goes on with nothing resent.
``commit``: the mirrors are rolled back to the checkpoint, the VMs' writes are put on them, and
the journal is deleted: the mirrors are now the live disks.

Each failover is kept in a small state file, written atomically at each step, so a VDSA that
dies in the middle picks it up where it was: views are reopened on the same scratch files,
and a commit that was under way is finished by the next ``commit``.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from hvds.disk import Disk
from hvds.files import write_atomic
from hvds.nbd.server import ExportInfo
from hvds.recovery.view import CheckpointView
from hvds.vdsa.target import TargetVpgState
from hvds.vdsa.views import Binding, Views

log = logging.getLogger(__name__)


@dataclass
class FailoverRecord:
    vpg: str
    time_ns: int  # the checkpoint (the cut's time: the same in every journal of the VPG)
    state: str = "live"  # live -> committing -> committed
    # export name -> its disk: journal label, disk id, name, mirror (all a commit needs, even
    # once the journal is gone)
    exports: dict[str, dict[str, Any]] = field(default_factory=dict)


class Failovers:
    def __init__(
        self, root: Path, view_socket: Path, views: Views, targets: dict[str, TargetVpgState]
    ) -> None:
        self._root = root
        self._view_socket = view_socket
        self._views = views
        self._targets = targets
        self.records: dict[str, FailoverRecord] = {}

    # -- state ---------------------------------------------------------------------------------

    def _path(self, vpg: str) -> Path:
        return self._root / f"{vpg}.json"

    def _save(self, record: FailoverRecord) -> None:
        write_atomic(self._path(record.vpg), json.dumps(asdict(record)).encode())

    def read(self) -> None:
        """The failovers a previous run left (before the journals are opened: a committed
        VPG's journal is gone for good)."""
        self._root.mkdir(parents=True, exist_ok=True)
        for path in sorted(self._root.glob("*.json")):
            record = FailoverRecord(**json.loads(path.read_text()))
            self.records[record.vpg] = record

    def committed(self, vpg: str) -> bool:
        record = self.records.get(vpg)
        return record is not None and record.state == "committed"

    def resume(self) -> None:
        """Once the journals are open: reopen the views of live failovers."""
        for record in self.records.values():
            if record.state == "live":
                self._open_views(record)
            log.info("failover of %s is %s", record.vpg, record.state)

    def refused(self, vpg: str) -> str | None:
        """Why the VPG's source may not replicate here, if it may not."""
        record = self.records.get(vpg)
        if record is None:
            return None
        return f"VPG {vpg} is failed over here ({record.state}): its source may not write"

    def _parts(self, vpg: str) -> list[TargetVpgState]:
        parts = [state for state in self._targets.values() if state.config.name == vpg]
        if not parts:
            raise KeyError(f"no VPG {vpg!r} is replicated to this host")
        return parts

    # -- operations ----------------------------------------------------------------------------

    def start(self, vpg: str, time_ns: int) -> dict[str, Any]:
        record = self.records.get(vpg)
        if record is not None:
            if record.time_ns != time_ns or record.state != "live":
                raise ValueError(f"VPG {vpg} is already failed over ({record.state}) at "
                                 f"checkpoint {record.time_ns}")  # fmt: skip
            return self._answer(record)  # the same request again: the same answer
        parts = self._parts(vpg)
        for state in parts:
            if not any(c.time_ns == time_ns for c in state.checkpoints):
                raise KeyError(f"checkpoint {time_ns} of {vpg} is not kept by {state.label}")
        record = FailoverRecord(vpg, time_ns)
        for state in parts:
            for disk in state.config.disks:
                if disk.source == state.source:
                    record.exports[f"{vpg}.{disk.name}.failover"] = {
                        "label": state.label, "disk": disk.disk, "name": disk.name,
                        "size": disk.size, "mirror": str(disk.mirror),
                    }  # fmt: skip
        self._save(record)  # first: a restart now finds the VPG failed over
        self.records[vpg] = record  # from now on its source is refused (``refused``)
        for state in parts:
            if state.session is not None:
                state.session.cancel()  # the source is cut off from here on
        self._open_views(record)
        log.warning("VPG %s failed over to checkpoint %d", vpg, time_ns)
        return self._answer(record)

    def _open_views(self, record: FailoverRecord) -> None:
        scratch = self._root / record.vpg
        scratch.mkdir(parents=True, exist_ok=True)
        for export, disk in record.exports.items():
            if export in self._views.bindings:
                continue  # served since before a restart of the roles
            state = self._targets[disk["label"]]
            checkpoint = next(c for c in state.checkpoints if c.time_ns == record.time_ns)
            info = ExportInfo(export, disk["size"], description=f"{disk['name']} failed over")
            read_at = partial(state.journal.read_at, checkpoint.id, disk["disk"])
            view = CheckpointView(
                info, read_at, state.journal_lock, scratch, scratch_name=f"{export}.scratch"
            )
            self._views.add(view, Binding(state.label, disk["disk"], checkpoint.id), state)

    def _answer(self, record: FailoverRecord) -> dict[str, Any]:
        disks = []
        for export, disk in record.exports.items():
            uri = f"nbd+unix:///{export}?socket={self._view_socket}"
            disks.append({"disk": disk["name"], "export": export, "uri": uri})
        return {"vpg": record.vpg, "checkpoint": record.time_ns, "state": record.state,
                "disks": disks}  # fmt: skip

    def _close_views(self, record: FailoverRecord, discard: bool) -> int:
        written = 0
        for export in record.exports:
            if export in self._views.bindings:
                written += self._views.remove(export, discard=discard).written_bytes()
        return written

    def rollback(self, vpg: str) -> dict[str, Any]:
        record = self.records.get(vpg)
        if record is None:
            return {"vpg": vpg, "state": "protected", "discarded_bytes": 0}  # done already
        if record.state != "live":
            raise ValueError(f"the failover of {vpg} is {record.state}: too late to roll back")
        discarded = self._close_views(record, discard=True)
        shutil.rmtree(self._root / vpg, ignore_errors=True)
        self._path(vpg).unlink()
        del self.records[vpg]  # the source may connect again, and resume
        log.warning("failover of %s rolled back; %d bytes of the VMs discarded", vpg, discarded)
        return {"vpg": vpg, "state": "protected", "discarded_bytes": discarded}

    def commit(self, vpg: str) -> dict[str, Any]:
        """Blocking (rolls back mirrors, copies the VMs' writes): run it in a thread, with the
        VMs stopped (their views are closed by it)."""
        record = self.records.get(vpg)
        if record is None:
            raise KeyError(f"VPG {vpg} is not failed over here")
        if record.state == "committed":
            return {**self._answer(record), "mirrors": self._mirrors(record)}
        record.state = "committing"
        self._save(record)
        self._open_views(record)  # after a restart in the middle, to read their scratch
        merged = 0
        for export, disk in record.exports.items():
            state = self._targets[disk["label"]]
            view = self._views.view(export)
            with state.journal_lock:
                checkpoint = next(c for c in state.journal.checkpoints()
                                  if c.time_ns == record.time_ns)  # fmt: skip
                state.journal.rollback(checkpoint.id)  # idempotent: already there after a crash
            mirror = Disk(Path(disk["mirror"]))
            try:
                merged += view.merge_into(mirror.write)
                mirror.flush()
            finally:
                mirror.close()
        self._close_views(record, discard=False)
        for state in self._parts(vpg):
            with state.journal_lock:
                state.journal.close()
            shutil.rmtree(state.journal.directory, ignore_errors=True)
        shutil.rmtree(self._root / vpg, ignore_errors=True)
        record.state = "committed"
        self._save(record)
        log.warning("failover of %s committed: its mirrors are the live disks", vpg)
        return {**self._answer(record), "merged_bytes": merged, "mirrors": self._mirrors(record)}

    @staticmethod
    def _mirrors(record: FailoverRecord) -> dict[str, str]:
        return {disk["name"]: disk["mirror"] for disk in record.exports.values()}
