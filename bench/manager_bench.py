"""Benchmark the site manager's API on a large store: 1,000 VPGs with 5,000 disks.

    .venv/bin/python bench/manager_bench.py [--vpgs 1000] [--disks 5] [--requests 300]
                                            [--json FILE] [--keep]

Two managers run side by side, each a real hvds-manager process serving HTTPS on loopback:

  large  --vpgs VPGs of --disks disks each (1,000 x 5 by default), on 20 hosts whose exports
         hold every disk, with 5 tracked commands per VPG
  small  10 VPGs of the same shape: the baseline, what the same requests cost on a small site

The stores are written before each manager starts, straight through the manager's SQLAlchemy
models into its SQLite file (creating VPGs through the API would need a paired peer site and
VDSAs). Each manager runs as configured in production (a 2 s watch over every VPG included).
The client (httpx, one keep-alive HTTPS connection, one request at a time) runs on CPU 1 and
the managers on CPU 0. For each request, after a warm-up, --requests samples give p50, p95 and
p99 of the time to the whole answer, the ratio of p95 to the aim (100 ms), and large/small.
The hosts' statuses in the store report every VPG replicating, as heartbeats would, so that
the watch derives state and RPO for each as on a live site.

Then the large manager is restarted twice to time the VPG list and get "idle" (no watch pass
during the timing) and "watching" (one pass after another, the worst case), side by side with
their ratio, the number of passes and the duration of the last (``hvds_manager_watch_*``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
sys.path.insert(0, str(BENCH_DIR.parent / "agent" / "tests"))

import httpx  # noqa: E402
from harness import Manager  # noqa: E402
from hvds.manager.auth import create_token  # noqa: E402
from hvds.manager.db import CommandRow, Host, Store, Vpg, VpgMember, utcnow  # noqa: E402
from hvds.pki import CertificateAuthority  # noqa: E402
from replication_bench import percentile, pinned  # noqa: E402
from tap_bench import WORK_PARENT, BenchError, machine_environment  # noqa: E402

SERVER_CPU = 0
CLIENT_CPU = 1
AIM_P95 = 0.100  # seconds: list and get of VPGs under 100 ms p95 (the issue's aim)
HOSTS = 20
COMMANDS_PER_VPG = 5
SMALL_VPGS = 10
WARM_UP = 20


@dataclass
class Site:
    label: str
    vpgs: int
    disks: int
    manager: Manager
    token: str = ""
    commands: int = 0


@dataclass
class Timing:
    request: str
    site: str
    samples: int
    bytes: int
    p50: float
    p95: float
    p99: float
    max: float


def vpg_name(i: int) -> str:
    return f"vpg-{i:05d}"


def fill(store: Store, vpgs: int, disks: int) -> int:
    """VPGs of ``disks`` disks each (one VM), spread over HOSTS hosts whose exports hold them,
    COMMANDS_PER_VPG commands each; returns the number of commands."""
    rng = random.Random(vpgs)  # noqa: S311 - a reproducible store, not a secret
    now = utcnow()
    exports: dict[str, list[dict[str, Any]]] = {f"host-{h:02d}": [] for h in range(HOSTS)}
    rows: list[Any] = []
    for i in range(vpgs):
        name = vpg_name(i)
        host = f"host-{i % HOSTS:02d}"
        disk_names = [f"{name}-vm-disk{d}" for d in range(disks)]
        exports[host] += [{"name": disk, "size": 64 << 30} for disk in disk_names]
        spec = {
            "name": name,
            "vms": [{"name": f"{name}-vm", "host": host,
                     "disks": [{"export": disk} for disk in disk_names]}],
            "targets": [{"site": "site-b", "host": f"b-{i % HOSTS:02d}", "datastore": "ds1"}],
            "rpo_alert_seconds": 300, "journal_history_hours": 24.0,
            "journal_size_limit_bytes": 150 << 30, "checkpoint_interval_seconds": 5.0,
            "priority": rng.choice(["low", "medium", "high"]), "compression": True,
            "bandwidth_limit_bytes": 0,
        }  # fmt: skip
        links = [{"site": "site-b", "address": "192.0.2.2:7001", "server_name": "b"}]
        rows.append(Vpg(
            name=name, spec=spec, links=links, state="protected",
            disk_ids={f"{name}-vm/{disk}": d + 1 for d, disk in enumerate(disk_names)},
            rpo_seconds=rng.uniform(1, 20), created_at=now, updated_at=now,
        ))  # fmt: skip
        rows.append(VpgMember(vpg=name, vm=f"{name}-vm"))
        for c in range(COMMANDS_PER_VPG):
            started = now - datetime.timedelta(minutes=rng.randint(1, 10_000))
            rows.append(CommandRow(
                kind="initial_sync" if c == 0 else "failover_test_start", vpg=name,
                status="succeeded", progress=100, started_at=started,
                ended_at=started + datetime.timedelta(seconds=30),
                result={"links": links} if c == 0 else {"checkpoint": {"id": c}},
            ))  # fmt: skip
    # Each host reports its VPGs replicating and checkpointed, as a heartbeat would: the watch
    # derives every VPG's state and RPO from these, as on a live site.
    checkpoint_ns = int(now.timestamp() * 1e9)
    sources: dict[str, dict[str, Any]] = {host: {} for host in exports}
    for i in range(vpgs):
        sources[f"host-{i % HOSTS:02d}"][vpg_name(i)] = {
            "consistent": True, "checkpoints_taken": 100,
            "targets": {"b": {"connected": True, "acked_seq": 1000, "bytes_in": 1 << 30,
                              "bytes_deduplicated": 0, "bytes_on_wire": 1 << 29,
                              "checkpoint_time_ns": checkpoint_ns}},
        }  # fmt: skip
    for host, host_exports in exports.items():
        rows.append(Host(
            name=host, version="0.1.0", control_url=f"unix:///run/hvds/{host}/control.sock",
            replication_address="", exports=host_exports,
            datastores=[{"name": "ds1", "path": "/srv/ds1", "total_bytes": 1 << 40,
                         "free_bytes": 1 << 39}],
            status={"id": host, "managed_digest": "", "sources": sources[host], "targets": {}},
            last_seen=now,
        ))  # fmt: skip
    with store.session() as session:
        session.add_all(rows)
    return vpgs * COMMANDS_PER_VPG


def prepare(root: Path, ca: CertificateAuthority, label: str, vpgs: int, disks: int) -> Site:
    manager = Manager(root / label, f"site-{label}", ca.issue(f"manager-{label}", ["127.0.0.1"]))
    # As in production: the default watch interval and host timeout.
    manager.write_config(watch_interval=2.0, host_timeout=3600.0)
    state = root / label / "state"
    state.mkdir(mode=0o700)
    store = Store(f"sqlite:///{state / 'manager.db'}")
    site = Site(label, vpgs, disks, manager)
    site.commands = fill(store, vpgs, disks)
    site.token = create_token(store, "bench", "viewer")
    store.engine.dispose()
    return site


# What is timed, and whether it is held to the aim: the VPG list (a page) and get.
AIMED = {"GET /vpgs", "GET /vpgs?offset=N", "GET /vpgs/{name}"}


def requests(site: Site, rng: random.Random) -> dict[str, Callable[[], str]]:
    """The request's label, and a function giving the path of the next one."""
    names = [vpg_name(i) for i in range(site.vpgs)]
    return {
        "GET /site": lambda: "/site",
        "GET /vpgs": lambda: "/vpgs",
        "GET /vpgs?offset=N": lambda: f"/vpgs?offset={rng.randrange(site.vpgs)}",
        "GET /vpgs?limit=1000": lambda: "/vpgs?limit=1000",
        "GET /vpgs/{name}": lambda: f"/vpgs/{rng.choice(names)}",
        "GET /commands": lambda: "/commands",
        "GET /commands/{id}": lambda: f"/commands/{rng.randint(1, site.commands)}",
    }


def check(site: Site, label: str, response: httpx.Response) -> None:
    if response.status_code != 200:
        raise BenchError(f"{site.label}: {label}: {response.status_code} {response.text[:300]}")
    if label == "GET /vpgs":
        listed = len(response.json())
        total = int(response.headers["X-Total-Count"])
        if listed != min(site.vpgs, 100) or total != site.vpgs:
            raise BenchError(f"{site.label}: GET /vpgs gave {listed} VPGs of {total}")
    if label == "GET /vpgs?limit=1000" and len(response.json()) != min(site.vpgs, 1000):
        raise BenchError(f"{site.label}: GET /vpgs?limit=1000 gave {len(response.json())} VPGs")


def time_requests(
    site: Site, count: int, ca: Path, only: set[str] | None = None, tag: str = ""
) -> Iterator[Timing]:
    rng = random.Random(7)  # noqa: S311 - a reproducible load, not a secret
    headers = {"Authorization": f"Bearer {site.token}"}
    base = f"{site.manager.url}/api/v1"
    verify = __import__("ssl").create_default_context(cafile=str(ca))
    with httpx.Client(base_url=base, headers=headers, verify=verify, timeout=60) as client:
        for label, path in requests(site, rng).items():
            if only is not None and label not in only:
                continue
            for _ in range(WARM_UP):
                check(site, label, client.get(path()))
            times = []
            size = 0
            for _ in range(count):
                url = path()
                start = time.perf_counter()
                response = client.get(url)
                times.append(time.perf_counter() - start)
                check(site, label, response)
                size = max(size, len(response.content))
            yield Timing(
                label, tag or site.label, count, size, percentile(times, 50),
                percentile(times, 95), percentile(times, 99), max(times),
            )  # fmt: skip


# The large store's list and get again, the manager restarted with its watch: "idle", no pass
# during the timing (one at start, before it); "watching", one pass after another (the worst
# case: a production watch, every 2 s, runs a pass a few percent of the time).
WATCH_MODES = {"idle": 3600.0, "watching": 0.001}


@dataclass
class WatchFigures:
    mode: str
    passes: float  # watch passes during the timing
    last_pass: float  # seconds, the last pass's duration (hvds_manager_watch_seconds)


def watch_metrics(site: Site, ca: Path) -> tuple[float, float]:
    """(passes so far, the last pass's seconds) from the manager's /metrics; NaN if absent."""
    verify = __import__("ssl").create_default_context(cafile=str(ca))
    text = httpx.get(f"{site.manager.url}/metrics", verify=verify, timeout=30).text
    found = {"hvds_manager_watch_passes_total": float("nan"),
             "hvds_manager_watch_seconds": float("nan")}  # fmt: skip
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in found:
            found[name] = float(value)
    return found["hvds_manager_watch_passes_total"], found["hvds_manager_watch_seconds"]


def time_watch(site: Site, count: int, ca: Path) -> tuple[list[Timing], list[WatchFigures]]:
    timings: list[Timing] = []
    figures = []
    for mode, interval in WATCH_MODES.items():
        site.manager.stop()
        site.manager.write_config(watch_interval=interval, host_timeout=3600.0)
        with pinned(SERVER_CPU):
            site.manager.start()
        log(f"{site.label}, watch {mode}: timing {count} requests of each aimed kind")
        time.sleep(1.0)  # the first pass, at start, is over
        before, _ = watch_metrics(site, ca)
        timings += time_requests(site, count, ca, AIMED, tag=mode)
        after, last = watch_metrics(site, ca)
        figures.append(WatchFigures(mode, after - before, last))
    return timings, figures


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f}"


def report(timings: list[Timing], sites: list[Site], env: dict[str, str]) -> Iterator[str]:
    yield "hvds-manager API benchmark"
    for key, value in env.items():
        yield f"  {key}: {value}"
    for site in sites:
        yield (f"  store {site.label}: {site.vpgs} VPGs, {site.vpgs * site.disks} disks, "
               f"{HOSTS} hosts, {site.commands} commands")  # fmt: skip
    yield ""
    yield (f"{'request':<22} {'store':<6} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
           f"{'max ms':>8} {'KiB':>7} {'p95/aim':>8} {'vs small':>9}  verdict")  # fmt: skip
    small = {t.request: t for t in timings if t.site == "small"}
    for t in timings:
        base = small.get(t.request)
        versus = f"{t.p95 / base.p95:8.2f}x" if base and t.site != "small" else f"{'':>9}"
        verdict = ("PASS" if t.p95 <= AIM_P95 else "MISS") if t.request in AIMED else "-"
        yield (f"{t.request:<22} {t.site:<6} {_ms(t.p50)} {_ms(t.p95)} {_ms(t.p99)} "
               f"{_ms(t.max)} {t.bytes / 1024:7.1f} {t.p95 / AIM_P95:8.2f} {versus}  "
               f"{verdict}")  # fmt: skip
    yield ""
    yield (f"aim: p95 <= {AIM_P95 * 1000:.0f} ms for a page of the VPG list (100, the default) "
           "and a VPG's get, on the large store; the other rows are for comparison")  # fmt: skip


def report_watch(timings: list[Timing], figures: list[WatchFigures]) -> Iterator[str]:
    yield ""
    yield "while the watch runs (large store, the manager restarted for each column):"
    for f in figures:
        yield (f"  {f.mode}: {f.passes:.0f} watch passes during the timing, the last "
               f"{f.last_pass * 1000:.1f} ms")  # fmt: skip
    yield (f"{'request':<22} {'idle p95':>9} {'watching p95':>13} {'watching/idle':>14} "
           f"{'watching p99':>13}  verdict")  # fmt: skip
    by = {(t.request, t.site): t for t in timings}
    for request in sorted({t.request for t in timings}):
        idle, busy = by[(request, "idle")], by[(request, "watching")]
        verdict = "PASS" if busy.p95 <= AIM_P95 else "MISS"
        yield (f"{request:<22} {_ms(idle.p95):>9} {_ms(busy.p95):>13} "
               f"{busy.p95 / idle.p95:13.2f}x {_ms(busy.p99):>13}  {verdict}")  # fmt: skip


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vpgs", type=int, default=1000, help="VPGs in the large store")
    parser.add_argument("--disks", type=int, default=5, help="disks per VPG")
    parser.add_argument("--requests", type=int, default=300, help="timed requests per kind")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--watch-only", action="store_true",
                        help="only the large store's list and get, idle and while watching")  # fmt: skip
    return parser.parse_args(argv)


def log(message: str) -> None:
    print(f"[manager_bench] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def work_dir(keep: bool) -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="hvds-manager-bench-", dir=WORK_PARENT))
    try:
        yield root
    finally:
        if keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("manager_bench: needs at least 2 CPUs (client and server pinned apart)")
    with work_dir(args.keep) as root:
        ca = CertificateAuthority(root / "pki")
        sites: list[Site] = []
        try:
            stores = [("small", SMALL_VPGS)] if not args.watch_only else []
            for label, vpgs in [*stores, ("large", args.vpgs)]:
                log(f"{label}: writing {vpgs} VPGs x {args.disks} disks into the store")
                start = time.monotonic()
                site = prepare(root, ca, label, vpgs, args.disks)
                log(f"{label}: store written in {time.monotonic() - start:.1f} s; starting")
                with pinned(SERVER_CPU):
                    site.manager.start()
                sites.append(site)
            timings: list[Timing] = []
            os.sched_setaffinity(0, {CLIENT_CPU})
            for label in ("large", "small") if not args.watch_only else ():
                site = next(s for s in sites if s.label == label)  # the small runs warm
                log(f"{label}: timing {args.requests} requests of each kind")
                timings += time_requests(site, args.requests, ca.path)
            large = sites[-1]
            for site in sites[:-1]:
                site.manager.stop()  # the small one: not to share the server's CPU
            watch_timings, watch_figures = time_watch(large, args.requests, ca.path)
        finally:
            for site in sites:
                site.manager.stop()
        order = [t.request for t in timings if t.site == "large"]
        timings.sort(key=lambda t: (order.index(t.request), t.site != "large"))
        env = machine_environment()
        if timings:
            print("\n".join(report(timings, sites, env)))
        print("\n".join(report_watch(watch_timings, watch_figures)))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            document = {"environment": env, "aim_p95_seconds": AIM_P95,
                        "timings": [asdict(t) for t in timings],
                        "watch_timings": [asdict(t) for t in watch_timings],
                        "watch": [asdict(f) for f in watch_figures]}  # fmt: skip
            args.json.write_text(json.dumps(document, indent=2))
    # The aim holds for the manager as configured (the production table) and idle; "watching"
    # (a pass always running, on the one CPU the manager has) is the worst case, shown beside.
    aimed = [t for t in timings + watch_timings
             if t.site in ("large", "idle") and t.request in AIMED]  # fmt: skip
    return 0 if all(t.p95 <= AIM_P95 for t in aimed) else 1


if __name__ == "__main__":
    sys.exit(main())
