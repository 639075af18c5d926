"""The VDSA service: its source and target roles and its control socket, from one config."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import logging
import re
from functools import partial
from pathlib import Path
from typing import Any

from hvds.analyzer.debugfs import DebugfsError
from hvds.files import write_atomic
from hvds.journal import Checkpoint, JournalError
from hvds.journal.records import MAX_TEXT
from hvds.logfile import read_log
from hvds.nbd.server import ExportInfo
from hvds.recovery.files import nbd_as_file, read_file
from hvds.recovery.view import CheckpointView
from hvds.recovery.vm import VmBoot, Vms, run_script
from hvds.settings import ConfigError
from hvds.tap.config import load_config as load_tap_config
from hvds.tls import client_context, server_context
from hvds.vdsa import requests as rq
from hvds.vdsa.analysis import keep_analyzing, summary
from hvds.vdsa.config import ManagedVpgs, VdsaConfig
from hvds.vdsa.control import Handler, serve_control, serve_control_tls
from hvds.vdsa.failover import Failovers
from hvds.vdsa.receiver import serve_taps
from hvds.vdsa.source import VpgSource
from hvds.vdsa.source_taps import SourceRouter
from hvds.vdsa.tap_exports import TapExports
from hvds.vdsa.target import TargetServer, TargetVpgState, journal_label, open_journal
from hvds.vdsa.views import Binding, Views

log = logging.getLogger(__name__)


def _label(request: rq.Labelled) -> tuple[str, str]:
    """A checkpoint's tag and description, refused here if the target's journal could not
    keep them: once in the stream, such a checkpoint would stop the VPG's replication."""
    tag, description = request.tag, request.description
    for what, text in (("tag", tag), ("description", description)):
        if len(text.encode()) > MAX_TEXT:
            raise ValueError(f"the {what} is longer than {MAX_TEXT} bytes")
    return tag, description


def _find_checkpoint(checkpoints: list[Checkpoint], request: rq.At) -> Checkpoint:
    if request.time_ns is not None:  # the cut's own name, the same in every journal of the VPG
        found = [c for c in checkpoints if c.time_ns == request.time_ns]
    elif request.checkpoint is not None:
        found = [c for c in checkpoints if c.id == request.checkpoint]
    elif request.tag is not None:
        found = [c for c in checkpoints if c.tag == request.tag]
    else:
        found = checkpoints  # the latest
    if not found:
        wanted = request.model_dump(include={"time_ns", "checkpoint", "tag"}, exclude_none=True)
        raise KeyError(f"no such checkpoint of {request.vpg!r} is kept: {wanted}")
    return found[-1]


def recovered_vms(config: VdsaConfig) -> Vms:
    """Where this host runs recovered VMs (their consoles beside the journal)."""
    state_dir = config.vdsa.journal_dir or Path("/run/hvds")
    return Vms(state_dir / "vms", config.vdsa.vm_accel)


def managed_digest(managed: ManagedVpgs) -> str:
    """Names the manager's VPGs as this host runs them, so the manager sees a stale host."""
    return hashlib.sha256(managed.model_dump_json().encode()).hexdigest()[:16]


class VdsaService:
    def __init__(
        self, config: VdsaConfig, managed: ManagedVpgs | None = None, vms: Vms | None = None,
        views: Views | None = None,
    ) -> None:  # fmt: skip
        """``config`` is the file's; ``managed`` the VPGs the site manager pushed; ``vms`` the
        recovered VMs and ``views`` the disks they run on: both outlive a restart of the
        roles."""
        self.base_config = config
        self.managed = managed or ManagedVpgs()
        self.config = config.with_managed(self.managed)
        # Set when the manager pushed other VPGs: the caller restarts the service with them.
        self.reconfigured = asyncio.Event()
        self.sources: list[VpgSource] = []
        self.router: SourceRouter | None = None
        self.targets: dict[str, TargetVpgState] = {}
        self.failed: dict[str, str] = {}  # journals that could not be opened, and why
        self._servers: list[asyncio.Server] = []
        self._analyzers: dict[str, asyncio.Task[None]] = {}  # by journal label
        self.views = views or Views()
        self._view_numbers = itertools.count(1)
        self.failovers: Failovers | None = None  # the target role's live failovers
        self.vms = vms or recovered_vms(config)
        self.tap_exports = TapExports(config.vdsa.tap_config)

    async def start(self) -> None:
        config = self.config
        settings = config.vdsa
        if config.target_vpg:
            assert config.tls is not None and settings.listen is not None
            assert settings.journal_dir is not None
            failovers = self.failovers = Failovers(
                settings.journal_dir / "failover",
                settings.view_socket or settings.journal_dir / "views.sock",
                self.views,
                self.targets,
            )
            failovers.read()
            for replica in config.target_vpg:
                if failovers.committed(replica.name):
                    continue  # its mirrors are live disks now; its journal is gone
                for source_id in replica.sources:
                    label = journal_label(replica.name, source_id)
                    try:
                        journal = await asyncio.to_thread(
                            open_journal, replica, settings.journal_dir, source_id
                        )
                    except (JournalError, OSError) as exc:
                        # One damaged journal, or a mirror that cannot be opened (a disk of
                        # the datastore gone, a path this service may not write), must not
                        # take the other VPGs down with it.
                        log.error("%s: journal or mirror unusable, refusing its source: %s",
                                  label, exc)  # fmt: skip
                        self.failed[label] = str(exc)
                        continue
                    state = TargetVpgState(replica, source_id, journal)
                    state.snapshot()
                    self.targets[state.label] = state
                    self._analyzers[state.label] = asyncio.create_task(keep_analyzing(state))
            self.views.bind(self.targets)
            failovers.resume()
            target = TargetServer(self.targets, self.failed, failovers.refused)
            server = await asyncio.start_server(
                target.handle,
                settings.listen.host,
                settings.listen.port,
                ssl=server_context(config.tls),
                limit=1 << 20,
            )
            self._servers.append(server)
            log.info("target role: listening on %s:%d", settings.listen.host, settings.listen.port)
        else:
            self.views.bind({})
        if config.source_vpg:
            assert config.tls is not None and settings.tap_socket is not None
            tls = client_context(config.tls)
            router = self.router = SourceRouter()
            for vpg in config.source_vpg:
                source = VpgSource(vpg, tls, settings.id, router)
                router.add(source)
                self.sources.append(source)
                source.start()
            self._servers.append(await serve_taps(router, str(settings.tap_socket)))
            log.info("source role: taps connect to %s", settings.tap_socket)
        if settings.view_socket is not None:
            await self.views.serve(settings.view_socket)
        handlers: dict[str, Handler] = {
            "checkpoint": self._checkpoint,
            "checkpoints": self._checkpoints,
            "hold": self._hold,
            "analysis": self._analysis,
            "view_open": self._view_open,
            "view_close": self._view_close,
            "release": self._release,
            "status": self.status,
            "logs": self._logs,
            "configure": self._configure,
            "failover": self._failover,
            "failover_rollback": self._failover_rollback,
            "failover_commit": self._failover_commit,
            "vm_start": self._vm_start,
            "restore_disk": self._restore_disk,
            "run_script": self._run_script,
            "file_read": self._file_read,
            "tap_detach": self._tap_detach,
            "tap_publish": self._tap_publish,
            "vm_status": lambda request: self.vms.status(rq.parse(rq.VmName, request).name),
            "vm_stop": lambda request: self.vms.stop(rq.parse(rq.VmName, request).name),
        }
        if settings.control_socket is not None:
            self._servers.append(await serve_control(settings.control_socket, handlers))
        if settings.control_listen is not None:
            assert config.tls is not None
            self._servers.append(await serve_control_tls(
                settings.control_listen.host, settings.control_listen.port,
                server_context(config.tls), settings.control_clients, handlers,
            ))  # fmt: skip

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        for task in self._analyzers.values():
            task.cancel()
        self.views.unbind()  # the views stay served; their requests wait for the next roles
        if self.router is not None:
            self.router.close_all()  # the taps reconnect to the next roles, and resync
        for source in self.sources:
            await source.stop()
        for state in self.targets.values():
            if state.session is not None:
                state.session.cancel()
            async with state.lock:
                state.journal.close()

    def _checkpoint(self, request: dict[str, Any]) -> dict[str, Any]:
        wanted = rq.parse(rq.Labelled, request)
        source = self._source(wanted.vpg)
        tag, description = _label(wanted)
        taken = source.checkpoint(tag, description)
        return {"taken": taken, "consistent": source.consistent}

    def _checkpoints(self, request: dict[str, Any]) -> dict[str, Any]:
        """A replicated VPG's checkpoints. A VPG fed by several hosts has one journal per host;
        its checkpoints are the cuts every one of them holds (matched by the cut's time)."""
        name = rq.parse(rq.Vpg, request).vpg
        parts = [state for state in self.targets.values() if state.config.name == name]
        if not parts:
            raise KeyError(f"no VPG {name!r} is replicated to this host")
        listed = [{c.time_ns: c for c in state.checkpoints} for state in parts]
        common = sorted(set.intersection(*(set(times) for times in listed)))
        checkpoints = []
        for time_ns in common:
            first = listed[0][time_ns]
            entry: dict[str, Any] = {
                "time_ns": time_ns,
                "tag": first.tag,
                "description": first.description,
            }
            if len(parts) == 1:
                entry.update(id=first.id, seq=first.seq)
            else:
                entry["parts"] = {
                    state.source: {"id": got[time_ns].id, "seq": got[time_ns].seq}
                    for state, got in zip(parts, listed, strict=True)
                }
            checkpoints.append(entry)
        return {"checkpoints": checkpoints}

    def _analysis(self, request: dict[str, Any]) -> dict[str, Any]:
        """The data analyzer's full reports on a replicated VPG's mirrors."""
        name = rq.parse(rq.Vpg, request).vpg
        parts = [state for state in self.targets.values() if state.config.name == name]
        if not parts:
            raise KeyError(f"no VPG {name!r} is replicated to this host")
        return {"analysis": {state.label: state.analysis for state in parts}}

    def _view_open(self, request: dict[str, Any] | rq.DiskAt) -> dict[str, Any]:
        """Serve a replicated disk as it was at a checkpoint (by id, or by tag: the newest with
        it), writable into a scratch overlay, over NBD on the view socket."""
        if not isinstance(request, rq.DiskAt):
            request = rq.parse(rq.DiskAt, request)
        settings = self.config.vdsa
        if settings.view_socket is None or settings.journal_dir is None:
            raise ValueError("no view_socket is configured")
        name, disk_name = request.vpg, request.disk
        for state in self.targets.values():
            disk = next((d for d in state.config.disks if d.name == disk_name), None)
            if state.config.name == name and disk is not None and disk.source == state.source:
                break
        else:
            raise KeyError(f"no disk {disk_name!r} of a VPG {name!r} is replicated here")
        checkpoint = _find_checkpoint(state.checkpoints, request)
        export = f"{name}.{disk_name}.at-{checkpoint.id}.{next(self._view_numbers)}"
        info = ExportInfo(export, disk.size, description=f"{disk_name} at {checkpoint.tag}")
        scratch = settings.journal_dir / "scratch"
        scratch.mkdir(parents=True, exist_ok=True)
        read_at = partial(state.journal.read_at, checkpoint.id, disk.disk)
        view = CheckpointView(info, read_at, state.journal_lock, scratch)
        self.views.add(view, Binding(state.label, disk.disk, checkpoint.id), state)
        log.info("view %s opened", export)
        uri = f"nbd+unix:///{export}?socket={settings.view_socket}"
        return {"export": export, "uri": uri, "checkpoint": checkpoint.id}

    def _view_close(self, request: dict[str, Any]) -> dict[str, Any]:
        export = rq.parse(rq.Export, request).export
        if export.endswith(".failover"):
            raise ValueError(f"{export} belongs to a failover: roll it back or commit it")
        self.views.remove(export)
        log.info("view %s closed, its scratch data discarded", export)
        return {}

    def _configure(self, request: dict[str, Any]) -> dict[str, Any]:
        """Take the VPGs the site manager wants on this host (all of them, each time). When
        they differ from the running ones they are kept and the roles restart with them: the
        taps keep what is not yet acknowledged in their bitmaps, the targets' sources resume."""
        wanted = {role: request.get(role, []) for role in ("source_vpg", "target_vpg")}
        managed = ManagedVpgs.model_validate(wanted)
        if managed == self.managed:
            return {"changed": False}
        self.base_config.with_managed(managed)  # the whole must be valid before it is kept
        path = self.config.vdsa.managed_config
        if path is None:
            raise ValueError("this VDSA has no managed_config: it takes no VPGs from a manager")
        write_atomic(path, managed.model_dump_json(indent=2).encode())
        log.info("the manager changed this host's VPGs; restarting the roles with them")
        # After this answer is written: the restart closes the control socket too.
        asyncio.get_running_loop().call_later(0.1, self.reconfigured.set)
        return {"changed": True}

    def _failovers(self) -> Failovers:
        if self.failovers is None:
            raise ValueError("this VDSA keeps no replicas: nothing to fail over")
        return self.failovers

    def _failover(self, request: dict[str, Any]) -> dict[str, Any]:
        """Fail a VPG over to a checkpoint: views the recovered VMs run on (decision 0011)."""
        wanted = rq.parse(rq.At, request)
        name = wanted.vpg
        parts = [state for state in self.targets.values() if state.config.name == name]
        if not parts:
            raise KeyError(f"no VPG {name!r} is replicated to this host")
        checkpoint = _find_checkpoint(parts[0].checkpoints, wanted)
        return self._failovers().start(name, checkpoint.time_ns)

    def _failover_rollback(self, request: dict[str, Any]) -> dict[str, Any]:
        return self._failovers().rollback(rq.parse(rq.Vpg, request).vpg)

    async def _failover_commit(self, request: dict[str, Any]) -> dict[str, Any]:
        name = rq.parse(rq.Vpg, request).vpg
        done = await asyncio.to_thread(self._failovers().commit, name)
        # Its journal is gone, and its source refused for good: it is no target here any more.
        for label in [label for label, state in self.targets.items() if state.config.name == name]:
            self._analyzers.pop(label).cancel()
            del self.targets[label]
        return done

    async def _vm_start(self, request: dict[str, Any]) -> dict[str, Any]:
        """Boot a recovered VM from NBD URIs (views of a failover test or failover)."""
        wanted = rq.parse(rq.VmStart, request)
        boot = VmBoot.model_validate(wanted.boot)
        network = wanted.network
        if network and not re.fullmatch(r"(bridge|netns):[A-Za-z0-9][A-Za-z0-9._-]{0,14}", network):
            raise ValueError(f"network {network!r}: expected bridge:NAME or netns:NAME")
        return await self.vms.start(wanted.name, list(wanted.disks), boot, network)

    async def _run_script(self, request: dict[str, Any]) -> dict[str, Any]:
        """A recovery script of this host's scripts_dir, by name (a peer names, never paths)."""
        directory = self.config.vdsa.scripts_dir
        if directory is None:
            raise ValueError("this VDSA has no scripts_dir: it runs no recovery scripts")
        wanted = rq.parse(rq.RunScript, request)
        name = wanted.name
        env = {k: v for k, v in wanted.env.items() if k.startswith("HVDS_")}
        return await run_script(directory / name, env)

    async def _restore_disk(self, request: dict[str, Any]) -> dict[str, Any]:
        """Copy a replicated disk as it was at a checkpoint to an image in a datastore."""
        wanted = rq.parse(rq.RestoreDisk, request)
        stores = {store.name: store.path for store in self.config.datastore}
        where = stores.get(wanted.datastore)
        if where is None:
            raise KeyError(f"no datastore {wanted.datastore!r} on this host")
        name = wanted.name
        target = where / "restores" / f"{name}.raw"
        if target.exists():
            raise ValueError(f"{target} exists: restore under another name")
        target.parent.mkdir(parents=True, exist_ok=True)
        view = self._view_open(wanted)
        try:
            # nbdcopy leaves the zero blocks as holes: the image is as sparse as can be.
            process = await asyncio.create_subprocess_exec(
                "nbdcopy", view["uri"], str(target), stderr=asyncio.subprocess.PIPE
            )
            _out, error = await process.communicate()
            if process.returncode != 0:
                target.unlink(missing_ok=True)
                raise ValueError(f"copy failed: {error.decode(errors='replace').strip()}")
        finally:
            self._view_close(view)
        return {"path": str(target), "size": target.stat().st_size,
                "checkpoint": view["checkpoint"]}  # fmt: skip

    async def _file_read(self, request: dict[str, Any]) -> dict[str, Any]:
        """One file of a replicated disk as it was at a checkpoint (ext2/3/4), as base64."""
        wanted = rq.parse(rq.FileRead, request)
        path, partition = wanted.path, wanted.partition
        view = self._view_open(wanted)
        try:

            def read() -> bytes:
                with nbd_as_file(view["uri"]) as disk:
                    return read_file(disk, path, partition)

            content = await asyncio.to_thread(read)
        except (OSError, DebugfsError) as exc:
            raise ValueError(str(exc)) from exc
        finally:
            self._view_close(view)
        return {"path": path, "size": len(content), "checkpoint": view["checkpoint"],
                "content": base64.b64encode(content).decode()}  # fmt: skip

    async def _tap_detach(self, request: dict[str, Any]) -> dict[str, Any]:
        """Detach disks from this host's tap (a failover's split-brain guard), or attach them."""
        wanted = rq.parse(rq.TapDetach, request)
        return await self.tap_exports.detach(list(wanted.exports), wanted.detached)

    async def _tap_publish(self, request: dict[str, Any]) -> dict[str, Any]:
        """Serve disks recovered here (name -> image) through this host's tap."""
        wanted = rq.parse(rq.TapPublish, request)
        return {"uris": await self.tap_exports.publish(wanted.group, dict(wanted.disks))}

    async def _logs(self, _request: dict[str, Any]) -> dict[str, Any]:
        """The tails of this host's tap and VDSA logs (for the manager's log bundles): each
        service's log_file, else its unit's journal; at most logfile.TAIL_BYTES each."""
        tap_log = None
        path = self.config.vdsa.tap_config
        if path is not None:
            with contextlib.suppress(ConfigError):  # then the journal, if any
                tap_log = load_tap_config(path).tap.log_file
        return {"logs": {
            "tap": await read_log("hvds-tap.service", tap_log),
            "vdsa": await read_log("hvds-vdsa.service", self.config.vdsa.log_file),
        }}  # fmt: skip

    def _source(self, name: str) -> VpgSource:
        for source in self.sources:
            if source.name == name:
                return source
        raise KeyError(f"no VPG {name!r} is protected from this host")

    async def _hold(self, request: dict[str, Any]) -> dict[str, Any]:
        """Phase one of a coordinated checkpoint: hold the VPG's writes here, cut the stream."""
        wanted = rq.parse(rq.Hold, request)
        taken = await self._source(wanted.vpg).hold(wanted.cut, *_label(wanted))
        return {"taken": taken}

    def _release(self, request: dict[str, Any]) -> dict[str, Any]:
        """Phase two: every host has cut; let the held writes complete."""
        wanted = rq.parse(rq.Cut, request)
        self._source(wanted.vpg).release(wanted.cut)
        return {}

    def status(self, _request: dict[str, Any] | None = None) -> dict[str, Any]:
        sources = {
            source.name: {
                "consistent": source.consistent,
                "checkpoints_taken": source.checkpoints_taken,
                "targets": {
                    link.target.server_name: {
                        "connected": link.stats.connected,
                        "down_since_ns": link.stats.down_since_ns,
                        "acked_seq": link.stats.acked_seq,
                        "bytes_in": link.stats.bytes_in,
                        "bytes_deduplicated": link.stats.bytes_deduplicated,
                        "bytes_on_wire": link.stats.bytes_on_wire,
                        "checkpoint_time_ns": link.stats.checkpoint_time_ns,
                        "target_full": link.stats.target_full,
                    }
                    for link in source.links
                },
            }
            for source in self.sources
        }
        targets: dict[str, dict[str, Any]] = {}
        for name, state in self.targets.items():
            latest = state.checkpoints[-1] if state.checkpoints else None
            targets[name] = {
                "last_seq": state.last_seq,
                "checkpoints": len(state.checkpoints),
                "latest_checkpoint": None
                if latest is None
                else {"id": latest.id, "seq": latest.seq, "time_ns": latest.time_ns,
                      "tag": latest.tag},
                "analysis": summary(state.analysis) if state.analysis else None,
                "full": state.full,
            }  # fmt: skip
        for label, reason in self.failed.items():
            targets[label] = {"failed": reason}
        return {
            "id": self.config.vdsa.id,
            "managed_digest": managed_digest(self.managed),
            "sources": sources,
            "targets": targets,
        }
