"""The site manager's work behind the API: hosts, VPGs and their replicas, checkpoints.

Routes validate and authorize; this module does. Everything long runs as a tracked command
(``commands.Commands``). A periodic watch derives each VPG's state and RPO from the hosts'
heartbeats and drives the checkpoint barrier of the VPGs that span hosts.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from functools import partial
from typing import Any, cast

from sqlalchemy import Table, bindparam, delete, select, update
from sqlalchemy.orm import Session

from hvds.manager.commands import Commands, Progress
from hvds.manager.config import ManagerConfig
from hvds.manager.db import Host, Peer, Replica, Store, Vpg, VpgMember, utcnow
from hvds.manager.pairing import PairingAuthority
from hvds.manager.peer_client import call_peer
from hvds.manager.planner import disk_key, host_plan, source_hosts
from hvds.manager.schemas import CheckpointOut, ReplicaDisk, ReplicaIn, VpgSpec
from hvds.manager.vdsa_client import VdsaError, ask
from hvds.tls import client_context
from hvds.vdsa.service import managed_digest

log = logging.getLogger(__name__)

# The watch lets other threads have the GIL after each slice of this many VPGs: a thread that
# waits for it (the event loop after each read of a socket, an API request after each query)
# would otherwise wait for the interpreter's switch interval (5 ms) each time.
WATCH_SLICE = 50


class ConflictError(Exception):
    """The request cannot be done in the present state (HTTP 409)."""


class InvalidError(Exception):
    """The request names things that do not exist or cannot hold it (HTTP 400)."""


def as_utc(value: datetime.datetime) -> datetime.datetime:
    return value if value.tzinfo else value.replace(tzinfo=datetime.UTC)


def checkpoint_out(entry: dict[str, Any]) -> CheckpointOut:
    time_ns = int(entry["time_ns"])
    return CheckpointOut(
        id=time_ns,
        time=datetime.datetime.fromtimestamp(time_ns / 1e9, datetime.UTC),
        tag=entry.get("tag", ""),
        description=entry.get("description", ""),
    )


class SiteManager:
    def __init__(self, config: ManagerConfig, store: Store) -> None:
        self.config = config
        self.name = config.manager.site
        self.store = store
        self.commands = Commands(store)
        # Its pairing CA, made on the first start: signs the client certificates of the paired
        # sites' managers (decision 0018).
        self.pairing = PairingAuthority(config.manager.state_dir / "pairing", self.name)
        self._pushing: dict[str, asyncio.Task[None]] = {}
        self._watch: asyncio.Task[None] | None = None
        self._barrier_due: dict[str, float] = {}  # the watch's own (in its worker thread)
        self.watch_seconds = 0.0  # how long the last pass took (hvds_manager_watch_seconds)
        self.watch_passes = 0
        files = config.vdsa_tls
        self._vdsa_tls = client_context(files) if files is not None else None

    async def start(self) -> None:
        self.commands.interrupted_by_restart()
        self._watch = asyncio.create_task(self._keep_watching())

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        await self.commands.stop()

    # -- hosts ------------------------------------------------------------------------------

    def host_is_up(self, host: Host) -> bool:
        age = (utcnow() - as_utc(host.last_seen)).total_seconds()
        return age <= self.config.manager.host_timeout

    def heartbeat(self, session: Session, name: str, report: dict[str, Any]) -> None:
        host = session.get(Host, name)
        if host is None:
            host = Host(name=name)
            session.add(host)
            log.info("host %s registered", name)
        for key, value in report.items():
            setattr(host, key, value)
        host.last_seen = utcnow()
        session.flush()
        wanted = managed_digest(host_plan(session, name))
        if report["status"].get("managed_digest") != wanted:
            self.push_soon(name)  # it restarted, or missed a change

    def push_soon(self, host: str) -> None:
        """Push the host's VPGs in the background (once at a time per host)."""
        running = self._pushing.get(host)
        if running is not None and not running.done():
            return
        self._pushing[host] = asyncio.create_task(self._push_quietly(host))

    async def _push_quietly(self, host: str) -> None:
        try:
            await self.push(host)
        except VdsaError as exc:
            log.warning("cannot push %s its VPGs yet: %s", host, exc)

    async def push(self, host_name: str) -> bool:
        """Send the host its whole set of VPGs; True if it changed anything."""
        with self.store.session() as session:
            host = session.get(Host, host_name)
            if host is None:
                raise VdsaError(f"host {host_name} has never sent a heartbeat")
            plan = host_plan(session, host_name)
            control = host.control_url
        message = {"op": "configure", **plan.model_dump(mode="json")}
        answer = await ask(control, message, self._vdsa_tls)
        return bool(answer.get("changed"))

    async def control(self, host_name: str, message: dict[str, Any]) -> dict[str, Any]:
        with self.store.session() as session:
            host = session.get(Host, host_name)
            if host is None:
                raise VdsaError(f"no host {host_name} at site {self.name}")
            control = host.control_url
        return await ask(control, message, self._vdsa_tls)

    # -- VPGs (source side) -----------------------------------------------------------------

    async def validate(self, session: Session, spec: VpgSpec, existing: Vpg | None) -> None:
        hosts = {host.name: host for host in session.scalars(select(Host))}
        size = 0
        for vm in spec.vms:
            host = hosts.get(vm.host)
            if host is None:
                raise InvalidError(f"VM {vm.name}: no host {vm.host} at site {self.name}")
            exports = {e["name"]: e["size"] for e in host.exports if not e.get("detached")}
            for disk in vm.disks:
                if disk.export not in exports:
                    raise InvalidError(f"VM {vm.name}: host {vm.host} serves no disk {disk.export}")
                size += exports[disk.export]
            others = [
                vpg
                for vpg in session.scalars(select(Vpg))
                if vpg is not existing and any(m["name"] == vm.name for m in vpg.spec["vms"])
            ]
            if len(others) >= 3:
                raise InvalidError(f"VM {vm.name} is already in 3 VPGs, the most it may be in")
        for target in spec.targets:
            peer = session.get(Peer, target.site)
            if peer is None:
                raise InvalidError(f"site {target.site} is not paired with {self.name}")
            topology = await call_peer(peer, "GET", "/topology")
            host_entry = next((h for h in topology["hosts"] if h["name"] == target.host), None)
            if host_entry is None:
                raise InvalidError(f"site {target.site} has no host {target.host}")
            if target.in_place:
                continue  # checked by the target site: images of its own, no datastore room
            stores = {store["name"]: store for store in host_entry["datastores"]}
            if target.datastore not in stores:
                raise InvalidError(f"host {target.host} of {target.site} has no datastore "
                              f"{target.datastore}")  # fmt: skip
            free = stores[target.datastore]["free_bytes"]
            if existing is None and size > free:
                raise InvalidError(f"datastore {target.datastore} at {target.site} has "
                              f"{free} bytes free, the VPG's disks need {size}")  # fmt: skip

    async def save_vpg(self, session: Session, spec: VpgSpec, existing: Vpg | None) -> Vpg:
        """Validate, store (a new VPG, or new settings of ``existing``) and set it up at its
        sites in an ``initial_sync`` command."""
        await self.validate(session, spec, existing)
        before = set(source_hosts(existing.spec)) if existing is not None else set()
        vpg = existing or Vpg(name=spec.name, spec={}, disk_ids={}, links=[])
        vpg.spec = spec.model_dump(mode="json")
        vpg.updated_at = utcnow()
        self.allocate_disk_ids(vpg)
        session.add(vpg)
        session.execute(delete(VpgMember).where(VpgMember.vpg == vpg.name))
        session.add_all(VpgMember(vpg=vpg.name, vm=vm["name"]) for vm in vpg.spec["vms"])
        session.commit()
        # Hosts that no longer serve its disks (a VM moved) let go first: two hosts feeding one
        # journal would take turns, each turn a comparison of the disks by hash.
        for host in sorted(before - set(source_hosts(vpg.spec))):
            try:
                await self.push(host)
            except VdsaError as exc:
                log.warning("host %s keeps VPG %s until it can be reached: %s", host, vpg.name, exc)
                self.push_soon(host)
        self.commands.start("initial_sync", vpg.name, partial(self._configure, vpg.name))
        return vpg

    async def _configure(self, name: str, progress: Progress) -> dict[str, Any]:
        try:
            return await self.configure_vpg(name, progress)
        except Exception:
            with self.store.session() as session:
                vpg = session.get(Vpg, name)
                if vpg is not None:
                    vpg.state = "error"
            raise

    def allocate_disk_ids(self, vpg: Vpg) -> None:
        ids = dict(vpg.disk_ids)
        for vm in vpg.spec["vms"]:
            for disk in vm["disks"]:
                key = disk_key(vm["name"], disk["export"])
                if key not in ids:
                    ids[key] = max(ids.values(), default=0) + 1
        vpg.disk_ids = ids

    async def configure_vpg(self, name: str, progress: Progress) -> dict[str, Any]:
        """Set up (or update) a VPG's replicas at its target sites, then its sources here, then
        wait for the initial sync: the VPG is protected when every target holds a checkpoint."""
        with self.store.session() as session:
            vpg = session.get(Vpg, name)
            if vpg is None:
                raise InvalidError(f"no VPG {name}")
            spec = vpg.spec
            multi = len(source_hosts(vpg.spec)) > 1
            sizes = {
                host.name: {e["name"]: e["size"] for e in host.exports}
                for host in session.scalars(select(Host))
            }
            disks = [
                {
                    "disk": vpg.disk_ids[disk_key(vm["name"], d["export"])],
                    "name": d["export"],
                    "size": sizes.get(vm["host"], {}).get(d["export"], 0),
                    "source": vm["host"] if multi else "",
                }
                for vm in spec["vms"]
                for d in vm["disks"]
            ]
            peers = {t["site"]: session.get(Peer, t["site"]) for t in spec["targets"]}
        links = []
        for target in spec["targets"]:
            peer = peers[target["site"]]
            if peer is None:
                raise InvalidError(f"site {target['site']} is no longer paired")
            replica = ReplicaIn(
                host=target["host"],
                datastore=target["datastore"],
                disks=[ReplicaDisk.model_validate(disk) for disk in disks],
                journal_history_hours=spec["journal_history_hours"],
                journal_size_limit_bytes=spec["journal_size_limit_bytes"],
                in_place=target.get("in_place", {}),
            )
            answer = await call_peer(
                peer, "PUT", f"/replicas/{name}", json=replica.model_dump(mode="json")
            )
            links.append({"site": target["site"], "address": answer["address"],
                          "server_name": answer["server_name"]})  # fmt: skip
        progress(30)
        with self.store.session() as session:
            vpg = session.get(Vpg, name)
            assert vpg is not None
            vpg.links = links
            vpg.state = "syncing"
            configured_at = time.time()
        for host in source_hosts(spec):
            await self.push(host)
        progress(50)
        while not self._synced(name, configured_at):
            await asyncio.sleep(0.5)
        return {"links": links}

    def _synced(self, name: str, since: float) -> bool:
        with self.store.session() as session:
            vpg = session.get(Vpg, name)
            if vpg is None:
                return False
            hosts = source_hosts(vpg.spec)
            statuses = {
                h.name: h.status for h in session.scalars(select(Host).where(Host.name.in_(hosts)))
            }
            return _protected(_links_state(hosts, name, statuses), vpg.links, since)

    async def remove_vpg(self, session: Session, vpg: Vpg) -> None:
        hosts = source_hosts(vpg.spec)
        peers = [session.get(Peer, t["site"]) for t in vpg.spec["targets"]]
        session.delete(vpg)
        session.commit()  # before any await: the write lock is not held across them
        for host in hosts:
            self.push_soon(host)
        for peer in peers:
            if peer is not None:
                with contextlib.suppress(Exception):
                    await call_peer(peer, "DELETE", f"/replicas/{vpg.name}")

    # -- checkpoints ------------------------------------------------------------------------

    async def take_checkpoint(self, name: str, tag: str, description: str) -> CheckpointOut:
        with self.store.session() as session:
            vpg = session.get(Vpg, name)
            if vpg is None:
                raise InvalidError(f"no VPG {name}")
            hosts = source_hosts(vpg.spec)
        if len(hosts) == 1:
            message = {"op": "checkpoint", "vpg": name, "tag": tag, "description": description}
            answer = await self.control(hosts[0], message)
            taken = bool(answer.get("taken"))
        else:
            taken = await self.barrier(name, hosts, tag, description)
        if not taken:
            raise ConflictError(
                f"VPG {name} is not consistent yet (initial sync or resync running)"
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = [c for c in await self.checkpoints(name) if c.tag == tag]
            if found:
                return found[-1]
            await asyncio.sleep(0.2)
        raise ConflictError(f"checkpoint {tag!r} of {name} did not reach its target in 30 s")

    async def barrier(self, name: str, hosts: list[str], tag: str = "", description: str = ""
                      ) -> bool:  # fmt: skip
        """The checkpoint barrier of a VPG spread over hosts (decision 0009): hold everywhere,
        then release everywhere; taken only if every host cut."""
        cut = time.time_ns()
        hold = {"op": "hold", "vpg": name, "cut": cut, "tag": tag, "description": description}
        answers = await asyncio.gather(
            *(self.control(host, hold) for host in hosts), return_exceptions=True
        )
        await asyncio.gather(
            *(self.control(host, {"op": "release", "vpg": name, "cut": cut}) for host in hosts),
            return_exceptions=True,
        )
        return all(isinstance(a, dict) and a.get("taken") for a in answers)

    async def checkpoints(self, name: str) -> list[CheckpointOut]:
        peer = self.first_target(name)
        listed = await call_peer(peer, "GET", f"/replicas/{name}/checkpoints")
        return [CheckpointOut.model_validate(entry) for entry in listed]

    def first_target(self, name: str) -> Peer:
        with self.store.session() as session:
            vpg = session.get(Vpg, name)
            if vpg is None:
                raise InvalidError(f"no VPG {name}")
            peer = session.get(Peer, vpg.spec["targets"][0]["site"])
            if peer is None:
                raise InvalidError(f"the target site of {name} is no longer paired")
            return peer

    # -- replicas (target side, asked by a peer site) ---------------------------------------

    async def put_replica(self, source_site: str, name: str, wanted: ReplicaIn) -> dict[str, Any]:
        with self.store.session() as session:
            host = session.get(Host, wanted.host)
            if host is None:
                raise InvalidError(f"site {self.name} has no host {wanted.host}")
            _check_placement(host, wanted)
            clash = session.scalars(
                select(Replica).where(Replica.vpg == name, Replica.source_site != source_site)
            ).first()
            if clash is not None:
                raise ConflictError(f"a VPG named {name} is already replicated here from "
                               f"{clash.source_site}")  # fmt: skip
            replica = session.get(Replica, (name, source_site))
            if replica is None:
                replica = Replica(vpg=name, source_site=source_site, spec={})
                session.add(replica)
            moved_from = replica.host if replica.host and replica.host != wanted.host else None
            replica.host = wanted.host
            replica.datastore = wanted.datastore
            replica.spec = wanted.model_dump(mode="json")
            address, server_name = host.replication_address, host.name
        await self.push(wanted.host)
        if moved_from is not None:
            self.push_soon(moved_from)
        return {"address": address, "server_name": server_name}

    async def delete_replica(self, session: Session, source_site: str, name: str) -> None:
        replica = session.get(Replica, (name, source_site))
        if replica is None:
            raise InvalidError(f"no replica of {name} from {source_site}")
        session.delete(replica)
        session.commit()
        self.push_soon(replica.host)

    def replica(self, session: Session, source_site: str, name: str) -> Replica:
        replica = session.get(Replica, (name, source_site))
        if replica is None:
            raise InvalidError(f"no replica of {name} from {source_site} at {self.name}")
        return replica

    async def replica_checkpoints(self, source_site: str, name: str) -> list[CheckpointOut]:
        with self.store.session() as session:
            host = self.replica(session, source_site, name).host
        answer = await self.control(host, {"op": "checkpoints", "vpg": name})
        return [checkpoint_out(entry) for entry in answer["checkpoints"]]

    # -- the watch --------------------------------------------------------------------------

    async def _keep_watching(self) -> None:
        while True:
            try:
                await self.watch_once()
            except Exception:
                log.exception("watch failed; trying again")
            await asyncio.sleep(self.config.manager.watch_interval)

    async def watch_once(self) -> None:
        """Update each VPG's state and RPO; drive the barrier of VPGs spread over hosts.

        The pass over every VPG runs in a worker thread with sessions of its own (decision
        0017): at 1,000 VPGs it is tens of milliseconds of work that the event loop, and so
        every API request, would otherwise wait for."""
        started = time.perf_counter()
        due = await asyncio.to_thread(self._watch_pass, time.monotonic())
        self.watch_seconds = time.perf_counter() - started
        self.watch_passes += 1
        for name, hosts in due:
            await self.barrier(name, hosts)

    def _watch_pass(self, now: float) -> list[tuple[str, list[str]]]:
        """One pass (in a worker thread): read the VPGs and the hosts' last statuses, derive,
        then write what changed. A state is written only where it is still what was read: a
        recovery that changed it meanwhile (on the event loop) is not undone."""
        with self.store.session() as session:
            statuses: dict[str, dict[str, Any]] = {
                name: status for name, status in session.execute(select(Host.name, Host.status))
            }
            rows: list[Any] = []
            listed = session.execute(
                select(Vpg.name, Vpg.spec, Vpg.links, Vpg.state, Vpg.rpo_seconds)
            )
            for part in listed.partitions(WATCH_SLICE):
                rows += part
                time.sleep(0)  # the GIL to the API's threads and the event loop, now and then
        due: list[tuple[str, list[str]]] = []
        states: list[dict[str, Any]] = []
        rpos: list[dict[str, Any]] = []
        for i, (name, spec, links, state, rpo) in enumerate(rows):
            if i % WATCH_SLICE == 0:
                time.sleep(0)
            hosts = source_hosts(spec)
            sources = _links_state(hosts, name, statuses)
            if state in ("syncing", "protected", "error"):
                new = "protected" if _protected(sources, links, 0) else "syncing"
                if new != state:
                    states.append({"vpg": name, "seen": state, "new": new})
            new_rpo = _rpo(sources)
            if new_rpo != rpo:
                rpos.append({"vpg": name, "new": new_rpo})
            if len(hosts) > 1 and links and now >= self._barrier_due.get(name, 0):
                # Not while a host's last heartbeat says it is out of write order (a resync):
                # its hold is refused, and the other hosts would cut their streams for a
                # checkpoint the VPG does not get (the managed crash runs: more such barriers
                # than whole ones after kills).
                if sources is not None and all(source.get("consistent") for source in sources):
                    due.append((name, hosts))
                self._barrier_due[name] = now + spec["checkpoint_interval_seconds"]
        if states or rpos:
            with self.store.session() as session:
                if states:
                    session.execute(_SET_STATE, states)
                if rpos:
                    session.execute(_SET_RPO, rpos)
        return due


def _links_state(
    hosts: list[str], vpg: str, statuses: dict[str, dict[str, Any]]
) -> list[dict[str, Any]] | None:
    """The source VDSAs' view of the VPG's links, from their last heartbeats (``statuses`` by
    host); None when a source host has not reported the VPG."""
    states = []
    for host in hosts:
        source = statuses.get(host, {}).get("sources", {}).get(vpg)
        if source is None:
            return None
        states.append(source)
    return states


def _protected(states: list[dict[str, Any]] | None, links: list[Any], since: float) -> bool:
    if not states or not links:
        return False
    for source in states:
        if not source.get("consistent"):
            return False
        targets = source.get("targets", {})
        if len(targets) < len(links):
            return False
        for link in targets.values():
            if not link.get("connected") or link.get("checkpoint_time_ns", 0) / 1e9 <= since:
                return False
    return True


def _rpo(states: list[dict[str, Any]] | None) -> float | None:
    if not states:
        return None
    times = [
        link.get("checkpoint_time_ns", 0) for source in states
        for link in source.get("targets", {}).values()
    ]  # fmt: skip
    if not times or min(times) == 0:
        return None
    return max(0.0, time.time() - float(min(times)) / 1e9)


_VPGS = cast(Table, Vpg.__table__)
# The watch's writes, many rows at once: a state only where it is still the one the pass read.
_SET_STATE = (
    update(_VPGS)
    .where(_VPGS.c.name == bindparam("vpg"), _VPGS.c.state == bindparam("seen"))
    .values(state=bindparam("new"))
)
_SET_RPO = (
    update(_VPGS).where(_VPGS.c.name == bindparam("vpg")).values(rpo_seconds=bindparam("new"))
)


def _check_placement(host: Host, wanted: ReplicaIn) -> None:
    """The mirrors go to a datastore of the host, or in place of images the host's tap has
    detached (a failback's old disks): never to any other path a peer might name."""
    detached = {e["path"] for e in host.exports if e.get("detached")}
    for disk, path in wanted.in_place.items():
        if path not in detached:
            raise InvalidError(f"{path} (for {disk}) is no detached disk of host {host.name}")
    if {d.name for d in wanted.disks} <= set(wanted.in_place):
        return
    if wanted.datastore not in {store["name"] for store in host.datastores}:
        raise InvalidError(f"host {host.name} has no datastore {wanted.datastore}")


def choose(checkpoints: list[CheckpointOut], wanted: dict[str, Any]) -> CheckpointOut:
    if wanted.get("checkpoint") is not None:
        found = [c for c in checkpoints if c.id == wanted["checkpoint"]]
    elif wanted.get("tag"):
        found = [c for c in checkpoints if c.tag == wanted["tag"]]
    else:
        found = checkpoints
    if not found:
        raise InvalidError(f"no such checkpoint is kept: {wanted}")
    return found[-1]
