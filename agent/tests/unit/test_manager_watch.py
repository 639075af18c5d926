"""The manager's watch over every VPG (decision 0017): state and RPO derived from the hosts'
last statuses, written where they changed, in a worker thread that leaves the event loop free.
A real SQLite store; no network."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from hvds.manager.config import ManagerConfig
from hvds.manager.db import Host, Store, Vpg
from hvds.manager.site import SiteManager

HOSTS = 20


def a_site(root: Path, vpgs: int) -> SiteManager:
    """``vpgs`` VPGs of one VM each, on HOSTS hosts that report them replicating and
    checkpointed 10 s ago; the last host reports nothing yet."""
    store = Store(f"sqlite:///{root / 'manager.db'}")
    checkpoint_ns = time.time_ns() - 10 * 10**9
    statuses: dict[str, dict[str, Any]] = {f"h{h}": {"sources": {}} for h in range(HOSTS)}
    rows: list[Any] = []
    for i in range(vpgs):
        host = f"h{i % HOSTS}"
        spec = {"name": f"v{i}", "checkpoint_interval_seconds": 5.0,
                "vms": [{"name": f"vm{i}", "host": host, "disks": [{"export": f"d{i}"}]}],
                "targets": [{"site": "b", "host": "b1", "datastore": "ds1"}]}  # fmt: skip
        rows.append(Vpg(name=f"v{i}", spec=spec, links=[{"site": "b"}], state="syncing"))
        if host != f"h{HOSTS - 1}":
            statuses[host]["sources"][f"v{i}"] = {
                "consistent": True,
                "targets": {"b1": {"connected": True, "checkpoint_time_ns": checkpoint_ns}},
            }
    rows += [Host(name=name, status=status) for name, status in statuses.items()]
    with store.session() as session:
        session.add_all(rows)
    config = ManagerConfig.model_validate({"manager": {
        "site": "a", "listen": "127.0.0.1:9443", "url": "https://a", "state_dir": str(root),
    }})  # fmt: skip
    return SiteManager(config, store)


def stored(site: SiteManager) -> dict[str, tuple[str, float | None]]:
    with site.store.session() as session:
        return {v.name: (v.state, v.rpo_seconds) for v in session.query(Vpg)}


def test_the_watch_derives_state_and_rpo(tmp_path: Path) -> None:
    site = a_site(tmp_path, 40)
    with site.store.session() as session:
        vpg = session.get(Vpg, "v0")
        assert vpg is not None
        vpg.state = "testing"  # a recovery's state: the watch leaves it
    asyncio.run(site.watch_once())
    after = stored(site)
    assert after["v0"][0] == "testing"
    assert after["v1"][0] == "protected" and 9 < (after["v1"][1] or 0) < 60
    assert after[f"v{HOSTS - 1}"] == ("syncing", None)  # its host has not reported it
    assert site.watch_passes == 1 and site.watch_seconds > 0


def test_the_watch_leaves_the_event_loop_free(tmp_path: Path) -> None:
    """While a pass over 1,000 VPGs runs, the loop goes on ticking: its longest gap is a
    fraction of the pass (the pass on the loop itself would be one gap as long as the pass)."""
    site = a_site(tmp_path, 1000)

    async def main() -> tuple[float, float, int]:
        gaps = []
        watching = asyncio.create_task(site.watch_once())
        last = time.perf_counter()
        while not watching.done():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
        await watching
        return max(gaps), site.watch_seconds, len(gaps)

    longest, took, ticks = asyncio.run(main())
    assert ticks >= 3 and longest < took / 2, (longest, took, ticks)
    assert {state for state, _rpo in stored(site).values()} == {"protected", "syncing"}


def test_no_barrier_while_a_host_is_out_of_write_order(tmp_path: Path) -> None:
    """A VPG over two hosts: the watch drives its barrier only while both hosts' last
    heartbeats say it is in write order. A host in a resync refuses the hold, and the other
    would cut its stream for a checkpoint the VPG does not get (found by the managed crash
    runs: after kills, more such barriers than whole ones)."""
    site = a_site(tmp_path, 1)
    spec = {"name": "w", "checkpoint_interval_seconds": 1.0,
            "vms": [{"name": "vm-a", "host": "h0", "disks": [{"export": "a"}]},
                    {"name": "vm-b", "host": "h1", "disks": [{"export": "b"}]}],
            "targets": [{"site": "b", "host": "b1", "datastore": "ds1"}]}  # fmt: skip
    link = {"b1": {"connected": True, "checkpoint_time_ns": time.time_ns()}}
    with site.store.session() as session:
        session.add(Vpg(name="w", spec=spec, links=[{"site": "b"}], state="protected"))
        for name, consistent in (("h0", True), ("h1", False)):
            host = session.get(Host, name)
            assert host is not None
            host.status = {"sources": {"w": {"consistent": consistent, "targets": link}}}
    assert site._watch_pass(time.monotonic()) == []
    with site.store.session() as session:
        host = session.get(Host, "h1")
        assert host is not None
        host.status = {"sources": {"w": {"consistent": True, "targets": link}}}
    assert site._watch_pass(time.monotonic() + 2) == [("w", ["h0", "h1"])]
