"""Recovery of a VPG, driven by its source site's manager and carried out at its target site:
failover tests, live failover with commit or rollback, and moves (decision 0011).

The source site (``SourceRecovery``) asks the target site's manager, which has the replica
(``TargetRecovery``): that one opens the checkpoint's views (a test) or fails the VPG over at
its VDSA (a live failover), then boots the VMs that have boot settings, in boot order, on the
recovery host. Every step is recorded before it is taken and may be asked again: a request
repeated after a crash finds the step done and answers the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import select

from hvds.manager.commands import Progress
from hvds.manager.db import Host, Vpg, utcnow
from hvds.manager.peer_client import PeerError, call_peer
from hvds.manager.schemas import (
    CheckpointChoice,
    FailoverIn,
    RecoveryIn,
    RecoveryVm,
    RestoreIn,
    ReverseIn,
    VpgSpec,
)
from hvds.manager.site import ConflictError, InvalidError, SiteManager, choose
from hvds.manager.vdsa_client import VdsaError

log = logging.getLogger(__name__)

LEARN_INTERVAL_SECONDS = 3.0


def _vms_of(spec: dict[str, Any]) -> list[RecoveryVm]:
    return [
        RecoveryVm(name=vm["name"], disks=[d["export"] for d in vm["disks"]], boot=vm.get("boot"))
        for vm in spec["vms"]
    ]


def _request(spec: dict[str, Any], choice: dict[str, Any], network: str) -> RecoveryIn:
    settings = spec.get("recovery", {})
    return RecoveryIn(
        **choice, vms=_vms_of(spec), network=settings.get(network, ""),
        pre_script=settings.get("pre_script", ""), post_script=settings.get("post_script", ""),
    )  # fmt: skip


class SourceRecovery:
    """The source site's side: one method per command; each updates the VPG's state."""

    def __init__(self, site: SiteManager) -> None:
        self._site = site

    def _vpg(self, name: str, *states: str) -> dict[str, Any]:
        with self._site.store.session() as session:
            vpg = session.get(Vpg, name)
            if vpg is None:
                raise InvalidError(f"no VPG {name}")
            if states and vpg.state not in states:
                raise ConflictError(
                    f"VPG {name} is {vpg.state}; this needs it {' or '.join(states)}"
                )
            return dict(vpg.spec)

    def _state(self, name: str) -> str:
        with self._site.store.session() as session:
            vpg = session.get(Vpg, name)
            return "" if vpg is None else vpg.state

    def _set(self, name: str, state: str, recovery: dict[str, Any] | None) -> None:
        with self._site.store.session() as session:
            vpg = session.get(Vpg, name)
            assert vpg is not None
            vpg.state, vpg.recovery = state, recovery

    async def _ask(self, name: str, method: str, path: str, json: Any = None) -> Any:
        return await call_peer(self._site.first_target(name), method, f"/replicas/{name}{path}",
                               json=json)  # fmt: skip

    async def test_start(self, name: str, wanted: dict[str, Any], progress: Progress) -> Any:
        spec = self._vpg(name, "syncing", "protected", "testing")
        request = _request(spec, wanted, "test_network")
        opened = await self._ask(name, "POST", "/test", request.model_dump(mode="json"))
        progress(80)
        self._set(name, "testing", {"kind": "test", "started_at": utcnow().isoformat(), **opened})
        return opened

    async def test_stop(self, name: str, progress: Progress) -> dict[str, Any]:
        with self._site.store.session() as session:
            vpg = session.get(Vpg, name)
            if vpg is None or vpg.recovery is None or vpg.recovery["kind"] != "test":
                raise ConflictError(f"no failover test of {name} is running")
            test = dict(vpg.recovery)
        closed = await self._ask(name, "DELETE", "/test")
        progress(80)
        self._set(name, "syncing", None)
        started = datetime.datetime.fromisoformat(test["started_at"])
        vms = closed["vms"]
        return {"report": {
            "checkpoint": test["checkpoint"],
            "disks": [view["disk"] for view in test["views"]],
            "vms": vms,
            "started_at": test["started_at"],
            "duration_seconds": round((utcnow() - started).total_seconds(), 3),
            "result": "passed" if all(vm["exit_code"] in (None, 0) for vm in vms) else "failed",
        }}  # fmt: skip

    async def _fence(self, spec: dict[str, Any], detached: bool) -> dict[str, Any]:
        """Detach (or attach again) the VPG's disks from the source hosts' taps: once failed
        over, no VM left here may write them (split-brain guard). A host that cannot be
        reached is reported, not waited for: a failover is for when the source is in trouble."""
        fenced: dict[str, Any] = {}
        for host in sorted({vm["host"] for vm in spec["vms"]}):
            exports = [d["export"] for vm in spec["vms"] if vm["host"] == host for d in vm["disks"]]
            try:
                message = {"op": "tap_detach", "exports": exports, "detached": detached}
                await self._site.control(host, message)
                fenced[host] = exports
            except VdsaError as exc:
                log.warning("source host %s not fenced: %s", host, exc)
                fenced[host] = f"not reached: {exc}"
        return fenced

    async def failover(self, name: str, wanted: FailoverIn, progress: Progress) -> Any:
        spec = self._vpg(name, "syncing", "protected", "failing_over")
        request = _request(spec, wanted.model_dump(include={"checkpoint", "tag"}),
                           "failover_network")  # fmt: skip
        fenced = await self._fence(spec, detached=True)
        progress(20)
        try:
            opened = await self._ask(name, "POST", "/failover", request.model_dump(mode="json"))
        except Exception:
            # Not failed over: the VMs here must have their disks back (unless a previous run
            # of this command did fail it over, which the recovery site would have said).
            if self._state(name) != "failing_over":
                await self._fence(spec, detached=False)
            raise
        opened["source_fenced"] = fenced
        self._set(name, "failing_over", {"kind": "failover", **opened})
        progress(60)
        if wanted.auto_commit_seconds is None:
            return opened
        await asyncio.sleep(wanted.auto_commit_seconds)
        with self._site.store.session() as session:
            vpg = session.get(Vpg, name)
            if vpg is None or vpg.state != "failing_over":
                return opened  # rolled back (or committed) meanwhile
        return await self.commit(name, progress)

    async def commit(self, name: str, progress: Progress) -> Any:
        self._vpg(name, "failing_over", "failed_over")
        committed = await self._ask(name, "POST", "/failover/commit")
        self._set(name, "failed_over", {"kind": "failover", **committed})
        progress(90)
        # The old source stops replicating it: the recovery site has the live copy now.
        for host in sorted({vm["host"] for vm in self._vpg(name)["vms"]}):
            self._site.push_soon(host)
        return committed

    async def rollback(self, name: str, progress: Progress) -> Any:
        spec = self._vpg(name, "failing_over")
        rolled = await self._ask(name, "POST", "/failover/rollback")
        progress(80)
        rolled["source_attached"] = await self._fence(spec, detached=False)
        self._set(name, "syncing", None)  # the source resumes where the target stopped it
        return rolled

    async def move(self, name: str, progress: Progress) -> Any:
        """A planned move: the disks detached here first (the VMs should be shut down before;
        any still running can write no more), then a last checkpoint, which therefore holds
        every write; failover to it, commit."""
        spec = self._vpg(name, "protected")
        await self._fence(spec, detached=True)
        tag = f"move-{utcnow().strftime('%Y%m%dT%H%M%S')}"
        try:
            checkpoint = await self._site.take_checkpoint(name, tag, "the last of a move")
        except Exception:
            await self._fence(spec, detached=False)  # not moved: the VMs keep their disks
            raise
        progress(30)
        await self.failover(name, FailoverIn(checkpoint=checkpoint.id), progress)
        return {"checkpoint": checkpoint.model_dump(mode="json"),
                **await self.commit(name, progress)}  # fmt: skip

    async def keep_learning(self) -> None:
        while True:
            try:
                await self.learn_once()
            except Exception:
                log.exception("learning the recovery sites' failovers failed; trying again")
            await asyncio.sleep(LEARN_INTERVAL_SECONDS)

    async def learn_once(self) -> None:
        """Take up failovers started at a recovery site while this site could not take part
        (it was down): fence the old disks here (split-brain guard) and follow the recovery
        site's state. Only VPGs that are not protected are asked about."""
        with self._site.store.session() as session:
            names = [vpg.name for vpg in session.scalars(select(Vpg))
                     if vpg.state in ("syncing", "error", "failing_over")]  # fmt: skip
        for name in names:
            try:
                there = await self._ask(name, "GET", "")
            except (PeerError, InvalidError):
                continue  # unreachable or unpaired: nothing learnt
            with self._site.store.session() as session:
                vpg = session.get(Vpg, name)
                if vpg is None:
                    continue
                state, recovery, spec = vpg.state, dict(vpg.recovery or {}), dict(vpg.spec)
            if (there.get("recovery") == "failover" and state != "failing_over") or (
                state == "failing_over" and there.get("state") == "committed"
            ):
                committed = there.get("state") == "committed"
                log.warning("VPG %s was failed over at its recovery site: following it", name)
                fenced = await self._fence(spec, detached=True)
                self._set(name, "failed_over" if committed else "failing_over", {
                    **recovery, "kind": "failover", "learned": True, "state": there["state"],
                    "checkpoint": there["checkpoint"], "source_fenced": fenced,
                })  # fmt: skip
                if committed:
                    for host in sorted({vm["host"] for vm in spec["vms"]}):
                        self._site.push_soon(host)
            elif state == "failing_over" and there.get("recovery") is None:
                # Rolled back at the recovery site: protection resumes.
                await self._fence(spec, detached=False)
                self._set(name, "syncing", None)

    async def reverse(self, name: str, progress: Progress) -> Any:
        """After a commit: protect the recovered VMs back to this site, into their old disks,
        so that only what differs is sent (decision 0012)."""
        spec = self._vpg(name, "failed_over")
        hosts = sorted({vm["host"] for vm in spec["vms"]})
        if len(hosts) != 1:
            raise InvalidError("reverse protection of a VPG spread over hosts is not supported")
        with self._site.store.session() as session:
            host = session.get(Host, hosts[0])
            assert host is not None
            paths = {e["name"]: e["path"] for e in host.exports if e.get("detached")}
        exports = [d["export"] for vm in spec["vms"] for d in vm["disks"]]
        missing = [export for export in exports if export not in paths]
        if missing:
            raise ConflictError(f"the old disks {missing} are not detached on {hosts[0]}")
        request = {"host": hosts[0], "in_place": {export: paths[export] for export in exports}}
        reversed_ = await self._ask(name, "POST", "/reverse", request)
        progress(90)
        with self._site.store.session() as session:
            vpg = session.get(Vpg, name)
            assert vpg is not None and vpg.recovery is not None
            vpg.recovery = {**vpg.recovery, "reverse": reversed_}
        return dict(reversed_)

    async def restore(self, name: str, wanted: RestoreIn, progress: Progress) -> Any:
        """One disk as it was at a checkpoint, copied to an image at the recovery site."""
        self._vpg(name)
        restored = await self._ask(name, "POST", "/restore", wanted.model_dump(mode="json"))
        progress(95)
        return restored

    async def read_file(self, name: str, query: dict[str, Any]) -> Any:
        """One file of a disk as it was at a checkpoint (file-level restore)."""
        self._vpg(name)
        return await self._ask(name, "GET", f"/file?{urlencode(query)}")


class TargetRecovery:
    """The target site's side, asked by the VPG's source site."""

    def __init__(self, site: SiteManager) -> None:
        self._site = site

    def _replica(self, source: str, name: str) -> tuple[str, dict[str, Any] | None]:
        with self._site.store.session() as session:
            replica = self._site.replica(session, source, name)
            return replica.host, replica.recovery

    def _record(self, source: str, name: str, recovery: dict[str, Any] | None) -> None:
        with self._site.store.session() as session:
            self._site.replica(session, source, name).recovery = recovery

    async def open(self, source: str, name: str, kind: str, wanted: RecoveryIn) -> dict[str, Any]:
        host, current = self._replica(source, name)
        checkpoint = choose(await self._site.replica_checkpoints(source, name),
                            wanted.model_dump())  # fmt: skip
        if current is not None and (
            current["kind"] != kind or current["checkpoint"]["id"] != checkpoint.id
        ):
            raise ConflictError(f"a {current['kind']} of {name} is under way: end it first")
        if current is None:  # the pre script first: if it refuses, nothing is left behind
            await self._script(host, wanted.pre_script, name, kind, checkpoint.id)
            self._record(source, name, {"kind": kind, "state": "opening",
                                        "checkpoint": checkpoint.model_dump(mode="json"),
                                        "views": [], "vms": []})  # fmt: skip
        if kind == "test":
            views = await self._open_views(host, source, name, checkpoint.id)
        else:
            message = {"op": "failover", "vpg": name, "time_ns": checkpoint.id}
            views = (await self._site.control(host, message))["disks"]
        vms = await self._boot(host, name, wanted, {view["disk"]: view["uri"] for view in views})
        await self._script(host, wanted.post_script, name, kind, checkpoint.id)
        opened = {
            "kind": kind, "state": "open", "checkpoint": checkpoint.model_dump(mode="json"),
            "views": views, "vms": vms,
            "wanted_vms": [vm.model_dump(mode="json") for vm in wanted.vms],
            "network": wanted.network,
        }  # fmt: skip
        self._record(source, name, opened)
        return opened

    async def _open_views(self, host: str, source: str, name: str, time_ns: int
                          ) -> list[dict[str, Any]]:  # fmt: skip
        with self._site.store.session() as session:
            replica = self._site.replica(session, source, name)
            disks = [d["name"] for d in replica.spec["disks"]]
            opened = list((replica.recovery or {}).get("views", []))
        done = {view["disk"] for view in opened}
        for disk in disks:
            if disk in done:
                continue
            message = {"op": "view_open", "vpg": name, "disk": disk, "time_ns": time_ns}
            answer = await self._site.control(host, message)
            opened.append({"disk": disk, "export": answer["export"], "uri": answer["uri"]})
            recovery = self._replica(source, name)[1]
            assert recovery is not None
            self._record(source, name, {**recovery, "views": opened})  # a crash now leaks none
        return opened

    async def _boot(self, host: str, name: str, wanted: RecoveryIn, uris: dict[str, str]
                    ) -> list[dict[str, Any]]:  # fmt: skip
        """Boot the VMs that have boot settings, in boot order, each on its disks' URIs."""
        reports = []
        booting = [vm for vm in wanted.vms if vm.boot is not None]
        for vm in sorted(booting, key=lambda vm: vm.boot.order if vm.boot else 0):
            assert vm.boot is not None
            disks = [uris[disk] for disk in vm.disks]
            message = {"op": "vm_start", "name": f"{name}.{vm.name}", "disks": disks,
                       "boot": vm.boot.model_dump(), "network": wanted.network}  # fmt: skip
            report = await self._site.control(host, message)
            report.pop("ok", None)
            reports.append(report)
            await asyncio.sleep(vm.boot.delay_seconds)
        return reports

    async def _script(self, host: str, script: str, name: str, kind: str, checkpoint: int
                      ) -> None:  # fmt: skip
        if script:
            env = {"HVDS_VPG": name, "HVDS_OPERATION": kind, "HVDS_CHECKPOINT": str(checkpoint)}
            await self._site.control(host, {"op": "run_script", "name": script, "env": env})

    async def _stop_vms(self, host: str, recovery: dict[str, Any]) -> list[dict[str, Any]]:
        reports = []
        for vm in recovery.get("vms", []):
            answer = await self._site.control(host, {"op": "vm_stop", "name": vm["name"]})
            answer.pop("ok", None)
            reports.append(answer)
        return reports

    async def close_test(self, source: str, name: str) -> dict[str, Any]:
        host, recovery = self._replica(source, name)
        if recovery is None:
            return {"vms": []}  # closed already
        if recovery["kind"] != "test":
            raise ConflictError(f"{name} is failing over, not being tested")
        vms = await self._stop_vms(host, recovery)
        for view in recovery["views"]:
            with contextlib.suppress(VdsaError):  # already gone with a VDSA restart
                await self._site.control(host, {"op": "view_close", "export": view["export"]})
        self._record(source, name, None)
        return {"vms": vms}

    async def rollback(self, source: str, name: str) -> dict[str, Any]:
        host, recovery = self._replica(source, name)
        if recovery is not None and recovery["kind"] != "failover":
            raise ConflictError(f"{name} is being tested, not failed over")
        vms = [] if recovery is None else await self._stop_vms(host, recovery)
        rolled = await self._site.control(host, {"op": "failover_rollback", "vpg": name})
        self._record(source, name, None)
        return {"vms": vms, "discarded_bytes": rolled["discarded_bytes"]}

    async def commit(self, source: str, name: str) -> dict[str, Any]:
        host, recovery = self._replica(source, name)
        if recovery is None or recovery["kind"] != "failover":
            raise ConflictError(f"{name} is not failed over")
        if recovery["state"] != "committed":
            await self._stop_vms(host, recovery)  # their writes must all be in the scratch
        committed = await self._site.control(host, {"op": "failover_commit", "vpg": name})
        mirrors: dict[str, str] = committed["mirrors"]
        # The committed disks are the live copies now: served by this host's tap, so that the
        # VMs' writes on them can be protected again (reverse protection).
        published = await self._site.control(
            host, {"op": "tap_publish", "group": name, "disks": mirrors}
        )
        uris: dict[str, str] = published["uris"]
        wanted = RecoveryIn.model_validate(
            {"vms": recovery.get("wanted_vms", []), "network": recovery.get("network", "")}
        )
        vms = await self._boot(host, name, wanted, uris)
        done = {**recovery, "state": "committed", "mirrors": mirrors, "uris": uris, "vms": vms,
                "merged_bytes": committed.get("merged_bytes", 0)}  # fmt: skip
        self._record(source, name, done)
        return done

    async def reverse(self, source: str, name: str, request: ReverseIn) -> dict[str, Any]:
        """Protect a committed VPG back to its old source site: a VPG of this site whose disks
        are the committed ones, kept at the old site in place of the old disks."""
        host, recovery = self._replica(source, name)
        if recovery is None or recovery.get("state") != "committed":
            raise ConflictError(f"{name} is not failed over and committed here")
        with self._site.store.session() as session:
            existing = session.get(Vpg, name)
            if existing is not None:
                return {"vpg": name, "site": self._site.name, "state": existing.state}
        wanted = {vm["name"]: vm for vm in recovery.get("wanted_vms", [])}
        spec = VpgSpec.model_validate({
            "name": name,
            "vms": [{"name": vm, "host": host, "boot": item.get("boot"),
                  "disks": [{"export": disk} for disk in item["disks"]]}
                 for vm, item in wanted.items()],
            "targets": [{"site": source, "host": request.host, "datastore": "in-place",
                         "in_place": request.in_place}],
        })  # fmt: skip
        exports = {d.export for vm in spec.vms for d in vm.disks}
        await self._wait_reported(host, exports)
        with self._site.store.request_session() as session:
            vpg = await self._site.save_vpg(session, spec, None)
            return {"vpg": name, "site": self._site.name, "state": vpg.state}

    async def _wait_reported(self, host: str, exports: set[str], timeout: float = 60) -> None:
        """Until the host's heartbeat lists the disks its tap now serves."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            with self._site.store.session() as session:
                row = session.get(Host, host)
                served = {e["name"] for e in (row.exports if row else []) if not e.get("detached")}
            if exports <= served:
                return
            if asyncio.get_running_loop().time() > deadline:
                raise ConflictError(f"host {host} does not report {sorted(exports - served)}")
            await asyncio.sleep(0.3)

    @staticmethod
    def _at(wanted: CheckpointChoice) -> dict[str, Any]:
        """The VDSA's name for the chosen checkpoint (the API's id is the cut's time)."""
        if wanted.checkpoint is not None:
            return {"time_ns": wanted.checkpoint}
        return {"tag": wanted.tag} if wanted.tag else {}

    async def restore(self, source: str, name: str, wanted: RestoreIn) -> dict[str, Any]:
        host, _recovery = self._replica(source, name)
        message = {
            "op": "restore_disk", "vpg": name, "disk": wanted.disk,
            "datastore": wanted.datastore, "name": wanted.name, **self._at(wanted),
        }  # fmt: skip
        answer = await self._site.control(host, message)
        answer.pop("ok", None)
        return answer

    async def read_file(
        self, source: str, name: str, disk: str, path: str,
        wanted: CheckpointChoice, partition: int | None,
    ) -> dict[str, Any]:  # fmt: skip
        host, _recovery = self._replica(source, name)
        message = {"op": "file_read", "vpg": name, "disk": disk, "path": path,
                   "partition": partition, **self._at(wanted)}  # fmt: skip
        answer = await self._site.control(host, message)
        answer.pop("ok", None)
        return answer
