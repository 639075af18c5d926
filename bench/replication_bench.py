"""Benchmark continuous replication: the cost of it, its lag (RPO) and its bytes on the wire.

    .venv/bin/python bench/replication_bench.py [--runtime 20] [--size 1G] [--json FILE]
                                                [--journal-limit 4G] [--keep]

Two stacks run side by side, each on its own sparse raw disk of --size (export "disk0"):

  off  hvds-tap whose vdsa_socket points nowhere: no VDSA, every write only marks the dirty
       bitmap (the copy is "lost" to the resync that never comes): replication off
  on   hvds-tap -> source VDSA (vdsa-a1) -> mutual TLS -> target VDSA (vdsa-b1, journal and
       mirror), one VPG "vpg1": replication on, as agent/tests/integration wires it

The processes come from the test helpers (agent/tests/harness.py), the certificates from
hvds.pki. The bench waits until the initial full sync is over (the source VPG is consistent,
the tap has no dirty byte, the RPO is under 2 s), then runs fio (nbd engine), one job at a time:

  1. throughput, off vs on: 4 KiB random write iodepth 32 and 1 MiB sequential write iodepth 8,
     incompressible data (--refill_buffers), each workload on "off" then on "on";
  2. the RPO gauge of the source VDSA (hvds_vdsa_rpo_seconds) every 100 ms during every "on"
     job and after it, until the RPO is under 2 s and the tap has no dirty byte (caught up);
  3. bytes on the wire vs bytes written (the source VDSA's counters) for the incompressible
     jobs of 1. and for both workloads again with 50% compressible and 50% duplicate blocks.

At the end a tagged checkpoint is taken and the target's mirror is compared with the source
disk by sha256. fio runs on CPU 1, every hvds process (both taps, both VDSAs) on CPU 0; the
target VDSA, which would be on another host, competes for that core. Everything is stopped and
the work directory removed at the end, on error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
# The harness finds hvds-tap and hvds-vdsa on PATH when imported: the venv's bin first.
os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
sys.path.insert(0, str(BENCH_DIR.parent / "agent" / "tests"))

from harness import Lab, Service, Vdsa, scrape, sha256_file  # noqa: E402
from hvds.pki import CertificateAuthority  # noqa: E402
from tap_bench import (  # noqa: E402
    WORK_PARENT,
    BenchError,
    core_pct,
    core_times,
    cpu_seconds,
    machine_environment,
    parse_fio,
    parse_size,
    tool,
)

SERVER_CPU = 0
CLIENT_CPU = 1
EXPORT = "disk0"
VPG = "vpg1"
SOURCE_ID, TARGET_ID = "vdsa-a1", "vdsa-b1"
LINK = {"vpg": VPG, "target": TARGET_ID}
SAMPLE_INTERVAL = 0.1
RPO_AIM = 5.0  # p99 of the RPO under load, the aim of the issue
RPO_CAUGHT_UP = 2.0
SYNC_TIMEOUT = 180.0
CATCH_UP_TIMEOUT = 180.0
CHECKPOINT_INTERVAL = 1.0
OFF, ON = "off", "on"


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    rw: str
    block_size: str
    iodepth: int


@dataclass(frozen=True)
class Data:
    name: str
    title: str
    fio_args: tuple[str, ...]


WORKLOADS = (
    Workload("randwrite-4k", "4 KiB random write, iodepth 32", "randwrite", "4k", 32),
    Workload("seqwrite-1m", "1 MiB sequential write, iodepth 8", "write", "1m", 8),
)
DATA = (
    Data("random", "incompressible (--refill_buffers)", ("--refill_buffers",)),
    Data(
        "compress50",
        "50% compressible (--buffer_compress_percentage=50)",
        ("--refill_buffers", "--buffer_compress_percentage=50"),
    ),
    Data(
        "dedupe50",
        "50% duplicate blocks (--dedupe_percentage=50)",
        ("--refill_buffers", "--dedupe_percentage=50"),
    ),
    # A load the pipeline can sustain on its one core: the RPO of a site that is not saturated.
    Data(
        "paced",
        "incompressible, paced at 20 MB/s (--rate=20m)",
        ("--refill_buffers", "--rate=20m"),
    ),
)
DATA_BY_NAME = {d.name: d for d in DATA}


@dataclass
class JobResult:
    workload: str
    data: str
    replication: str  # OFF or ON
    iops: float | None = None
    mb_per_s: float | None = None
    fio_bytes: int | None = None
    lat_mean_us: float | None = None
    clat_p99_us: float | None = None
    fio_cpu_pct: float | None = None
    tap_cpu_pct: float | None = None
    source_cpu_pct: float | None = None
    target_cpu_pct: float | None = None
    core0_busy_pct: float | None = None
    steal_pct: float | None = None
    copies_lost: int | None = None
    resync_bytes: int | None = None
    # Replication on only.
    rpo_samples: int | None = None
    rpo_unread: int | None = None  # samples the VDSA did not answer (or had no RPO for)
    rpo_p50_s: float | None = None
    rpo_p99_s: float | None = None
    rpo_max_s: float | None = None
    rpo_p99_fio_s: float | None = None  # while fio ran only
    rpo_at_fio_end_s: float | None = None
    out_of_order_s: float | None = None  # VPG resyncing (no checkpoint possible), sampled
    catch_up_s: float | None = None  # after fio ended: RPO < 2 s and no dirty byte
    fio_seconds: float | None = None
    backlog_bytes: int | None = None  # dirty bytes left when the catch-up timed out
    written_bytes: int | None = None
    deduplicated_bytes: int | None = None
    wire_bytes: int | None = None
    error: str | None = None
    # [seconds since fio started, RPO or None, VPG consistent or None], every 100 ms.
    series: list[tuple[float, float | None, bool | None]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.workload}/{self.data}"

    @property
    def rpo_met(self) -> bool | None:
        return None if self.rpo_p99_s is None else self.rpo_p99_s <= RPO_AIM

    @property
    def replicated_mb_per_s(self) -> float | None:
        """What reached the target (acknowledged), over fio's run time and the catch-up."""
        if self.written_bytes is None or self.fio_seconds is None or self.catch_up_s is None:
            return None
        return self.written_bytes / 1e6 / (self.fio_seconds + self.catch_up_s)

    @property
    def wire_ratio(self) -> float | None:
        if self.wire_bytes is None or not self.written_bytes:
            return None
        return self.wire_bytes / self.written_bytes


@dataclass
class Integrity:
    tag: str = ""
    checkpoint_id: int | None = None
    checkpoint_seq: int | None = None
    source_sha256: str = ""
    mirror_sha256: str = ""
    error: str | None = None

    @property
    def match(self) -> bool:
        return (
            self.error is None
            and bool(self.source_sha256)
            and (self.source_sha256 == self.mirror_sha256)
        )


@dataclass
class LogReport:
    """ERROR / WARNING / Traceback lines of a process's log, during the run and at its stop."""

    name: str
    path: str
    errors: int = 0
    warnings: int = 0
    tracebacks: int = 0
    examples: list[str] = field(default_factory=list)
    at_stop: list[str] = field(default_factory=list)


# -- the two stacks ----------------------------------------------------------------------------


@contextlib.contextmanager
def pinned(cpu: int) -> Iterator[None]:
    """Processes started inside run on ``cpu`` (they inherit the affinity of this thread)."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def check_pinned(name: str, pid: int) -> None:
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that just ended
            affinity = os.sched_getaffinity(int(task.name))
            if affinity != {SERVER_CPU}:
                raise BenchError(f"{name} thread {task.name} runs on CPUs {sorted(affinity)}")


class Stacks:
    """The "off" tap alone, and the "on" tap with its source and target VDSA."""

    def __init__(self, root: Path, size: int, journal_limit: int) -> None:
        self.size = size
        ca = CertificateAuthority(root / "pki")
        self.off = Lab(root / "off")
        self.on = Lab(root / "on")
        for lab in (self.off, self.on):
            lab.root.mkdir()
            lab.add_disk(EXPORT, size)
        self.source = Vdsa(root / "on" / "vdsa", SOURCE_ID, ca.issue(SOURCE_ID))
        self.target = Vdsa(root / "target" / "vdsa", TARGET_ID, ca.issue(TARGET_ID))
        self.target.replicate_here(VPG, {1: (EXPORT, size)}, journal_size_limit=journal_limit)
        self.source.protect(
            VPG,
            {EXPORT: 1},
            [(self.target.address, TARGET_ID)],
            checkpoint_interval=CHECKPOINT_INTERVAL,
        )

    def start(self) -> None:
        with pinned(SERVER_CPU):
            self.target.start()
            self.source.start()
            self.on.start_tap(vdsa_socket=str(self.source.tap_socket))
            self.off.start_tap()  # its vdsa_socket (off/vdsa.sock) has no VDSA behind it
        for name, pid in self.pids().items():
            check_pinned(name, pid)

    def services(self) -> dict[str, Service | None]:
        return {
            "tap (off)": self.off.tap,
            "tap (on)": self.on.tap,
            "source VDSA": self.source.service,
            "target VDSA": self.target.service,
        }

    def pids(self) -> dict[str, int]:
        return {
            name: service.proc.pid
            for name, service in self.services().items()
            if service is not None and service.proc is not None
        }

    def check_alive(self) -> None:
        for name, service in self.services().items():
            if service is None or service.proc is None:
                continue
            status = service.proc.poll()
            if status is not None:
                tail = "\n".join(service.log_path.read_text(errors="replace").splitlines()[-15:])
                raise BenchError(f"{name} exited with status {status}:\n{tail}")

    def stop(self) -> None:
        """The taps first, then the source and the target; SIGTERM, SIGKILL after 10 s."""
        took = []
        for name, stop in zip(
            self.services(),
            (self.off.stop, self.on.stop, self.source.stop, self.target.stop),
            strict=True,
        ):
            start = time.monotonic()
            with contextlib.suppress(Exception):
                stop()
            took.append(f"{name} {time.monotonic() - start:.1f} s")
        log("stopped: " + ", ".join(took))
        # Whatever did not stop (a failed start, a hung stop): its whole process group.
        for service in self.services().values():
            if service is not None:
                with contextlib.suppress(Exception):
                    service.kill()

    # -- state -------------------------------------------------------------------------------

    def lab(self, replication: str) -> Lab:
        return self.on if replication == ON else self.off

    def tap_metric(self, replication: str, name: str) -> float:
        return self.lab(replication).metric(name, EXPORT)

    def dirty(self) -> float:
        return self.tap_metric(ON, "hvds_tap_dirty_bytes")

    def rpo(self) -> float | None:
        """The source VDSA's RPO to the target; None if it has none or did not answer."""
        try:
            return scrape(self.source.metrics_port, "hvds_vdsa_rpo_seconds", **LINK)
        except (KeyError, OSError, urllib.error.URLError, TimeoutError):
            return None

    def consistent(self) -> bool:
        vpg = self.source.status()["sources"][VPG]
        return bool(vpg["consistent"]) and bool(vpg["targets"][TARGET_ID]["connected"])

    def link_counter(self, name: str) -> int:
        return int(self.source.metric(name, **LINK))

    def wait(self, what: str, ready: Callable[[], bool], timeout: float) -> float:
        """Seconds until ``ready()``; BenchError if a process dies or the time is up."""
        start = time.monotonic()
        while True:
            self.check_alive()
            # AssertionError: the VDSA answered a control request with ok = false.
            with contextlib.suppress(KeyError, OSError, urllib.error.URLError, AssertionError):
                if ready():
                    return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise BenchError(f"no {what} after {timeout:.0f} s")
            time.sleep(SAMPLE_INTERVAL)

    def wait_synced(self) -> float:
        return self.wait(
            "initial sync (VPG consistent, no dirty byte, RPO under 2 s)",
            lambda: (
                self.consistent()
                and self.dirty() == 0
                and (rpo := self.rpo()) is not None
                and rpo < RPO_CAUGHT_UP
            ),
            SYNC_TIMEOUT,
        )

    def checkpoint_listed(self, tag: str) -> dict[str, Any] | None:
        listing = self.target.control(op="checkpoints", vpg=VPG)["checkpoints"]
        return next((c for c in listing if c["tag"] == tag), None)

    def tagged_checkpoint(self, tag: str) -> dict[str, Any]:
        """No dirty byte, a consistent VPG, a checkpoint tagged ``tag``, listed at the target."""
        self.wait("clean tap", lambda: self.dirty() == 0, CATCH_UP_TIMEOUT)

        def take() -> bool:
            return bool(self.source.control(op="checkpoint", vpg=VPG, tag=tag)["taken"])

        self.wait("checkpoint taken (VPG consistent)", take, CATCH_UP_TIMEOUT)
        self.wait(f"checkpoint {tag} at the target", lambda: bool(self.checkpoint_listed(tag)), 60)
        listed = self.checkpoint_listed(tag)
        assert listed is not None
        return listed


# -- jobs --------------------------------------------------------------------------------------


def fio_argv(workload: Workload, data: Data, uri: str, runtime: int, name: str) -> list[str]:
    return [
        tool("taskset"), "-c", str(CLIENT_CPU), tool("fio"),
        f"--name={name}", "--ioengine=nbd", f"--uri={uri}",
        f"--rw={workload.rw}", f"--bs={workload.block_size}", f"--iodepth={workload.iodepth}",
        "--time_based", f"--runtime={runtime}", "--norandommap", "--randrepeat=0",
        *data.fio_args, "--output-format=json",
    ]  # fmt: skip


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


class Job:
    """One fio job on one stack, with the stack's CPU use, counters and (on) RPO samples."""

    def __init__(
        self, stacks: Stacks, workload: Workload, data: Data, replication: str, workdir: Path
    ) -> None:
        self.stacks = stacks
        self.workload = workload
        self.data = data
        self.replication = replication
        self.result = JobResult(workload.name, data.name, replication)
        self.name = f"{workload.name}-{data.name}-{replication}"
        self.out = workdir / f"fio-{self.name}.json"
        self.err = workdir / f"fio-{self.name}.err"
        self.start = 0.0
        self.fio_samples = 0

    def counters(self) -> dict[str, int]:
        stacks, repl = self.stacks, self.replication
        values = {
            "copies_lost": int(stacks.tap_metric(repl, "hvds_tap_copies_lost_total")),
            "resync_bytes": int(stacks.tap_metric(repl, "hvds_tap_resync_bytes_total")),
        }
        if repl == ON:
            for key in ("written", "deduplicated", "wire"):
                values[f"{key}_bytes"] = stacks.link_counter(f"hvds_vdsa_{key}_bytes_total")
        return values

    def sample(self) -> float | None:
        """The RPO gauge, and whether the VPG is in write order (the control socket)."""
        rpo = self.stacks.rpo()
        consistent = None
        with contextlib.suppress(OSError, KeyError, AssertionError, ValueError):
            consistent = bool(self.stacks.source.status()["sources"][VPG]["consistent"])
        if rpo is None:
            self.result.rpo_unread = (self.result.rpo_unread or 0) + 1
        self.result.series.append((round(time.monotonic() - self.start, 3), rpo, consistent))
        return rpo

    def run(self, runtime: int) -> JobResult:
        stacks, result = self.stacks, self.result
        stacks.check_alive()
        os.sync()  # start without the previous job's dirty pages waiting for writeback
        before = self.counters()
        pids = stacks.pids()
        tap_pid = pids["tap (on)" if self.replication == ON else "tap (off)"]
        vdsa_pids = (pids["source VDSA"], pids["target VDSA"])
        cpu_before = [cpu_seconds(pid) for pid in (tap_pid, *vdsa_pids)]
        cores_before = core_times()
        uri = stacks.lab(self.replication).uri(EXPORT)
        argv = fio_argv(self.workload, self.data, uri, runtime, self.name)
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.start = time.monotonic()
            fio = subprocess.Popen(argv, stdout=out, stderr=err)  # noqa: S603 -- built here
            try:
                self._watch(fio, runtime)
            finally:
                if fio.poll() is None:
                    fio.kill()
                    fio.wait()
        cpu_after = [cpu_seconds(pid) for pid in (tap_pid, *vdsa_pids)]
        cores_after = core_times()
        if fio.returncode != 0:
            raise BenchError(
                f"fio failed ({fio.returncode}): {self.err.read_text(errors='replace')[-500:]}"
            )
        job = parse_fio(self.out.read_text(errors="replace"))
        if job.get("error"):
            raise BenchError(f"fio job error {job['error']}")
        seconds = job["job_runtime"] / 1000.0
        if seconds <= 0:
            raise BenchError("fio reports a run time of 0")
        io = job["write"]
        result.fio_seconds = seconds
        result.iops = float(io["iops"])
        result.mb_per_s = io["bw_bytes"] / 1e6
        result.fio_bytes = int(io["io_bytes"])
        result.lat_mean_us = io["lat_ns"]["mean"] / 1000.0
        p99 = io["clat_ns"].get("percentile", {}).get("99.000000")
        result.clat_p99_us = None if p99 is None else p99 / 1000.0
        result.fio_cpu_pct = float(job["usr_cpu"]) + float(job["sys_cpu"])
        used = [100.0 * (b - a) / seconds for a, b in zip(cpu_before, cpu_after, strict=True)]
        result.tap_cpu_pct, result.source_cpu_pct, result.target_cpu_pct = used
        result.core0_busy_pct = core_pct(cores_before, cores_after, SERVER_CPU, 0, seconds)
        result.steal_pct = max(
            core_pct(cores_before, cores_after, cpu, 2, seconds) for cpu in (SERVER_CPU, CLIENT_CPU)
        )
        if self.replication == ON:
            self._catch_up()
        after = self.counters()
        for key, value in after.items():
            setattr(result, key, value - before[key])
        return result

    def _watch(self, fio: subprocess.Popen[bytes], runtime: int) -> None:
        """Sample the RPO every 100 ms until fio exits (replication on); else just wait."""
        deadline = time.monotonic() + runtime + 120
        tick = time.monotonic()
        while fio.poll() is None:
            if time.monotonic() > deadline:
                raise BenchError(f"fio still running {runtime + 120} s after it started")
            if self.replication == ON:
                self.sample()
            tick += SAMPLE_INTERVAL
            time.sleep(max(0.0, tick - time.monotonic()))
        if self.replication == ON:
            self.result.rpo_at_fio_end_s = self.sample()
            self.fio_samples = len(self.result.series)

    def _catch_up(self) -> None:
        """After fio: sample on until the RPO is under 2 s and every copy is acknowledged."""
        stacks, result = self.stacks, self.result
        start = tick = time.monotonic()
        while True:
            stacks.check_alive()
            rpo = self.sample()
            dirty = stacks.dirty()
            waited = time.monotonic() - start
            if rpo is not None and rpo < RPO_CAUGHT_UP and dirty == 0:
                result.catch_up_s = waited
                break
            if waited > CATCH_UP_TIMEOUT:
                result.backlog_bytes = int(dirty)
                log(f"  not caught up {CATCH_UP_TIMEOUT:.0f} s after fio: {dirty / 1e6:.1f} MB "
                    f"dirty, RPO {rpo}, status {stacks.source.status()}")  # fmt: skip
                break
            tick += SAMPLE_INTERVAL
            time.sleep(max(0.0, tick - time.monotonic()))
        self._summarize()

    def _summarize(self) -> None:
        result, series = self.result, self.result.series
        every = [rpo for _, rpo, _ in series if rpo is not None]
        during = [rpo for _, rpo, _ in series[: self.fio_samples] if rpo is not None]
        result.rpo_samples = len(every)
        if every:
            result.rpo_p50_s = percentile(every, 50)
            result.rpo_p99_s = percentile(every, 99)
            result.rpo_max_s = max(every)
        if during:
            result.rpo_p99_fio_s = percentile(during, 99)
        result.out_of_order_s = sum(
            later[0] - earlier[0]
            for earlier, later in itertools.pairwise(series)
            if earlier[2] is False
        )


def plan() -> list[tuple[Workload, Data, str]]:
    """Throughput off vs on (random data), then the compressible and duplicate data (on)."""
    random = DATA_BY_NAME["random"]
    jobs = [(w, random, repl) for w in WORKLOADS for repl in (OFF, ON)]
    jobs += [(w, d, ON) for d in DATA if d is not random for w in WORKLOADS]
    return jobs


# -- the run -----------------------------------------------------------------------------------


LOG_KINDS = ("ERROR", "WARNING", "Traceback")


def log_lines(path: Path) -> list[str]:
    return path.read_text(errors="replace").splitlines() if path.exists() else []


def scan_log(name: str, path: Path, run_lines: int) -> LogReport:
    """The log's notable lines: counted in its first ``run_lines`` lines (the run), listed
    after them (written while the process was being stopped)."""
    report = LogReport(name, str(path))
    lines = log_lines(path)
    seen: set[str] = set()
    for n, line in enumerate(lines):
        kind = next((k for k in LOG_KINDS if k in line), None)
        if kind is None:
            continue
        text = line.strip()[:160]
        if n >= run_lines:
            report.at_stop.append(text)
            continue
        report.errors += kind == "ERROR"
        report.warnings += kind == "WARNING"
        report.tracebacks += kind == "Traceback"
        # One example of each message, without its time stamp.
        message = text.split(" ", 2)[-1]
        if len(report.examples) < 6 and message not in seen:
            seen.add(message)
            report.examples.append(text)
    return report


@dataclass
class Run:
    results: list[JobResult] = field(default_factory=list)
    integrity: Integrity = field(default_factory=Integrity)
    logs: list[LogReport] = field(default_factory=list)
    sync_s: float | None = None
    sync_wire_bytes: int | None = None


def bench(args: argparse.Namespace, run: Run) -> None:
    if not {SERVER_CPU, CLIENT_CPU} <= os.sched_getaffinity(0):
        raise BenchError(f"needs CPUs {SERVER_CPU} and {CLIENT_CPU} to pin to")
    need = 3 * args.size + args.journal_limit + 1024**3
    if shutil.disk_usage(WORK_PARENT).free < need:
        raise BenchError(f"{WORK_PARENT} needs {need / 2**30:.1f} GiB free")
    workdir = Path(tempfile.mkdtemp(prefix="hvds-repl-bench-", dir=WORK_PARENT))
    stacks: Stacks | None = None
    try:
        stacks = Stacks(workdir, args.size, args.journal_limit)
        log(f"starting the stacks in {workdir} (hvds processes on CPU {SERVER_CPU})")
        stacks.start()
        run.sync_s = stacks.wait_synced()
        run.sync_wire_bytes = stacks.link_counter("hvds_vdsa_wire_bytes_total")
        log(f"initial sync done in {run.sync_s:.1f} s ({run.sync_wire_bytes} bytes on the wire)")
        # The bench samples from fio's core: CPU 0 is the one being measured.
        os.sched_setaffinity(0, {CLIENT_CPU})
        for workload, data, replication in plan():
            job = Job(stacks, workload, data, replication, workdir)
            try:
                result = job.run(args.runtime)
            except (BenchError, OSError, KeyError, ValueError, AssertionError) as exc:
                job.result.error = str(exc) or type(exc).__name__
                result = job.result
            run.results.append(result)
            log(f"[{replication:>3}] {job.name}: {job_line(result)}")
            stacks.check_alive()
        log("tagged checkpoint and sha256 of the source disk and the target mirror")
        run.integrity = check_mirror(stacks)
    finally:
        # A second Ctrl-C must not cut the clean-up short.
        handlers = {
            sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            if stacks is not None:
                logs = {
                    name: (service.log_path, len(log_lines(service.log_path)))
                    for name, service in stacks.services().items()
                    if service is not None
                }
                stacks.stop()
                run.logs = [scan_log(name, path, lines) for name, (path, lines) in logs.items()]
            stop_children()
            if args.keep:
                log(f"kept {workdir}")
            else:
                log(f"removing {workdir} (deleting what is still in the page cache takes a while)")
                shutil.rmtree(workdir, ignore_errors=True)
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)


def child_pids() -> list[int]:
    """This process's children still running (not zombies)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
                if int(ppid) == os.getpid() and state != "Z":
                    pids.append(int(entry.name))
    return pids


def stop_children() -> None:
    """Stop any child still running, e.g. a service whose start was interrupted before the
    harness kept hold of it: SIGTERM to its process group, SIGKILL after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        pids = child_pids()
        for pid in pids:
            log(f"stopping leftover child process {pid}")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if os.getpgid(pid) == pid:
                    os.killpg(pid, sig)
                else:
                    os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while child_pids() and time.monotonic() < deadline:
            time.sleep(0.1)
    for pid in child_pids():
        log(f"child process {pid} did not stop")


def check_mirror(stacks: Stacks) -> Integrity:
    integrity = Integrity(tag=f"bench-end-{int(time.time())}")
    try:
        checkpoint = stacks.tagged_checkpoint(integrity.tag)
    except BenchError as exc:
        integrity.error = str(exc)
        return integrity
    integrity.checkpoint_id = int(checkpoint["id"])
    integrity.checkpoint_seq = int(checkpoint["seq"])
    integrity.source_sha256 = sha256_file(stacks.on.exports[EXPORT])
    integrity.mirror_sha256 = sha256_file(stacks.target.mirror(EXPORT))
    return integrity


# -- report ------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _mb(value: int | None) -> str:
    return _fmt(None if value is None else value / 1e6, ",.1f")


def job_line(r: JobResult) -> str:
    if r.error:
        return f"FAILED: {r.error.splitlines()[0]}"
    line = (
        f"{_fmt(r.iops, ',.0f')} IOPS, {_fmt(r.mb_per_s, '.1f')} MB/s, {r.copies_lost} copies lost"
    )
    if r.replication == ON:
        line += (
            f", RPO p50/p99/max {_fmt(r.rpo_p50_s, '.2f')}/{_fmt(r.rpo_p99_s, '.2f')}/"
            f"{_fmt(r.rpo_max_s, '.2f')} s, caught up {_fmt(r.catch_up_s, '.1f', ' s')} after, "
            f"wire/written {_fmt(r.wire_ratio, '.3f')}"
        )
    return line


def environment(args: argparse.Namespace) -> dict[str, str]:
    return {
        **machine_environment(),
        "disk": f"{args.size / 2**30:g} GiB sparse raw file per stack, under {WORK_PARENT}",
        "vpg": (
            f"checkpoint every {CHECKPOINT_INTERVAL:g} s, zstd on, target journal limit "
            f"{args.journal_limit / 2**30:g} GiB, mutual TLS over loopback TCP"
        ),
    }


def find(results: list[JobResult], workload: str, data: str, repl: str) -> JobResult | None:
    return next(
        (r for r in results if (r.workload, r.data, r.replication) == (workload, data, repl)),
        None,
    )


def ratio(on: JobResult | None, off: JobResult | None, attr: str) -> float | None:
    a = None if on is None else getattr(on, attr)
    b = None if off is None else getattr(off, attr)
    return a / b if a is not None and b else None


def verdict(result: JobResult) -> str:
    met = result.rpo_met
    return "-" if met is None else ("PASS" if met else "MISS")


def report_header(run: Run, env: dict[str, str], runtime: int) -> Iterator[str]:
    yield "hvds replication benchmark"
    yield (
        f"PINNED: fio on CPU {CLIENT_CPU} (the bench's sampling too); every hvds process on "
        f"CPU {SERVER_CPU}: both taps, the source VDSA AND the target VDSA (taskset affinity)."
    )
    yield (
        "  The target VDSA stands for another site but competes for CPU 0 here: replication-on "
        "figures are pessimistic by its CPU (the 'target %' column)."
    )
    yield (
        "  During 'on' jobs the source VDSA also answers the bench's RPO scrape and a status "
        "request every 100 ms (on CPU 0)."
    )
    yield (
        f"fio {runtime} s per job, ioengine=nbd over the tap's unix socket; off = hvds-tap with "
        "no VDSA (writes only mark the dirty bitmap); on = tap -> source VDSA -> TLS -> target."
    )
    yield "CPU % = utime+stime over fio's run time, in % of one core; MB = 10^6 bytes."
    for key, value in env.items():
        yield f"  {key + ':':11} {value}"
    if run.sync_s is not None:
        yield (
            f"  initial sync of the sparse disk: {run.sync_s:.1f} s, "
            f"{run.sync_wire_bytes} bytes on the wire"
        )


def report_throughput(results: list[JobResult]) -> Iterator[str]:
    yield "== 1. Throughput, replication off vs on (incompressible data) =="
    header = (
        f"{'workload':<13} {'repl':<4} {'IOPS':>9} {'MB/s':>8} {'p99 us':>8} {'tap %':>6} "
        f"{'source %':>8} {'target %':>8} {'core0 %':>7} {'fio %':>6} {'lost':>8}"
    )
    yield header
    yield "-" * len(header)
    for w in WORKLOADS:
        rows = [find(results, w.name, "random", repl) for repl in (OFF, ON)]
        for r in rows:
            if r is None:
                continue
            if r.error:
                yield f"{w.name:<13} {r.replication:<4} FAILED: {r.error.splitlines()[0]}"
                continue
            yield (
                f"{w.name:<13} {r.replication:<4} {_fmt(r.iops, ',.0f'):>9} "
                f"{_fmt(r.mb_per_s, '.1f'):>8} {_fmt(r.clat_p99_us, ',.0f'):>8} "
                f"{_fmt(r.tap_cpu_pct, '.0f'):>6} {_fmt(r.source_cpu_pct, '.0f'):>8} "
                f"{_fmt(r.target_cpu_pct, '.0f'):>8} {_fmt(r.core0_busy_pct, '.0f'):>7} "
                f"{_fmt(r.fio_cpu_pct, '.0f'):>6} {_fmt(r.copies_lost, ',d'):>8}"
            )
        on_off = ratio(rows[1], rows[0], "iops")
        mbs = ratio(rows[1], rows[0], "mb_per_s")
        yield f"{'':<13} on/off: IOPS {_fmt(on_off, '.2f', 'x')}, MB/s {_fmt(mbs, '.2f', 'x')}"
    yield "('lost' for off is every write: there is no VDSA, the bitmap keeps them all.)"


def report_rpo(on_rows: list[JobResult]) -> Iterator[str]:
    yield (
        f"== 2. Replication lag: hvds_vdsa_rpo_seconds every {SAMPLE_INTERVAL * 1000:.0f} ms, "
        f"during fio and until caught up (aim: p99 <= {RPO_AIM:g} s) =="
    )
    header = (
        f"{'job':<24} {'samples':>7} {'p50 s':>6} {'p99 s':>6} {'max s':>6} {'fio p99':>7} "
        f"{'at end':>6} {'resync s':>8} {'caught up':>10}  aim"
    )
    yield header
    yield "-" * len(header)
    for r in on_rows:
        if r.error:
            yield f"{r.label:<24} FAILED: {r.error.splitlines()[0]}"
            continue
        caught = (
            _fmt(r.catch_up_s, ".1f", " s")
            if r.backlog_bytes is None
            else f"NO ({r.backlog_bytes / 1e6:.0f} MB dirty)"
        )
        unread = f"  ({r.rpo_unread} unanswered)" if r.rpo_unread else ""
        yield (
            f"{r.label:<24} {_fmt(r.rpo_samples, 'd'):>7} {_fmt(r.rpo_p50_s, '.2f'):>6} "
            f"{_fmt(r.rpo_p99_s, '.2f'):>6} {_fmt(r.rpo_max_s, '.2f'):>6} "
            f"{_fmt(r.rpo_p99_fio_s, '.2f'):>7} {_fmt(r.rpo_at_fio_end_s, '.2f'):>6} "
            f"{_fmt(r.out_of_order_s, '.1f'):>8} {caught:>10}  {verdict(r)}{unread}"
        )
    yield (
        "p50/p99/max: every sample, during fio and until caught up (the aim is judged on this "
        "p99); 'fio p99': while fio ran; 'at end': when fio exited."
    )
    yield (
        "'resync s': sampled time the VPG was out of write order (the tap resending blocks it "
        "had to leave to its bitmap): no checkpoint can be cut then, so the RPO grows."
    )
    yield (
        f"'caught up' = from fio's end until the RPO is under {RPO_CAUGHT_UP:g} s and the tap "
        "has no dirty byte (every copy acknowledged by the target)."
    )


def report_wire(on_rows: list[JobResult]) -> Iterator[str]:
    yield "== 3. Bytes on the wire vs bytes written (source VDSA counters, per job) =="
    header = (
        f"{'job':<24} {'fio MB':>9} {'written MB':>10} {'dedup MB':>9} {'wire MB':>9} "
        f"{'wire/written':>12} {'lost':>7} {'resync MB':>9} {'repl MB/s':>9}"
    )
    yield header
    yield "-" * len(header)
    for r in on_rows:
        if r.error:
            yield f"{r.label:<24} FAILED: {r.error.splitlines()[0]}"
            continue
        yield (
            f"{r.label:<24} {_mb(r.fio_bytes):>9} {_mb(r.written_bytes):>10} "
            f"{_mb(r.deduplicated_bytes):>9} {_mb(r.wire_bytes):>9} "
            f"{_fmt(r.wire_ratio, '.3f'):>12} {_fmt(r.copies_lost, ',d'):>7} "
            f"{_mb(r.resync_bytes):>9} {_fmt(r.replicated_mb_per_s, '.1f'):>9}"
        )
    yield (
        "written = hvds_vdsa_written_bytes_total: what the tap sent, live copies and resync; "
        "dedup = after zero elision and references; wire = after zstd, with frame headers."
    )
    yield (
        "A lost copy is resent from the disk as whole bitmap blocks (64 KiB), once however often "
        "it was overwritten: written can exceed what fio wrote (small random writes) or fall "
        "short of it (overwrites); resent blocks may hold zeroes or old data that compress."
    )
    yield (
        "repl MB/s = written / (fio's run time + caught-up time): the rate the whole pipeline "
        "(tap, source, target, all on CPU 0) sustained to the target."
    )
    yield "data: " + "; ".join(f"{d.name} = {d.title}" for d in DATA)


def report_mirror(integrity: Integrity) -> Iterator[str]:
    yield "== Mirror check =="
    if integrity.error:
        yield f"FAILED: {integrity.error}"
    elif integrity.source_sha256:
        yield (
            f"checkpoint {integrity.tag!r} (id {integrity.checkpoint_id}, seq "
            f"{integrity.checkpoint_seq}) at the target: mirror "
            f"{'MATCHES' if integrity.match else 'DIFFERS FROM'} the source disk"
        )
        yield f"  source sha256 {integrity.source_sha256}"
        yield f"  mirror sha256 {integrity.mirror_sha256}"
    else:
        yield "not checked (the run did not get that far)"


def report_logs(logs: list[LogReport]) -> Iterator[str]:
    yield "== Process logs (ERROR / WARNING / Traceback lines) =="
    for entry in logs:
        yield (
            f"{entry.name:<12} {entry.errors} errors, {entry.warnings} warnings, "
            f"{entry.tracebacks} tracebacks"
        )
        for example in entry.examples:
            yield f"    {example}"
        for line in entry.at_stop[:3]:
            yield f"    at stop: {line}"


def report_summary(results: list[JobResult], integrity: Integrity) -> Iterator[str]:
    yield "== Summary =="
    on_rows = [r for r in results if r.replication == ON]
    header = (
        f"{'workload':<13} {'off IOPS':>9} {'on IOPS':>9} {'on/off':>7} {'RPO p99':>8} "
        f"{'aim':>5} {'caught up':>9} {'lost':>7}  wire/written random|compress50|dedupe50"
    )
    yield header
    yield "-" * len(header)
    for w in WORKLOADS:
        off, on = (find(results, w.name, "random", repl) for repl in (OFF, ON))
        on_jobs = [r for r in on_rows if r.workload == w.name and not r.error]
        p99 = max((r.rpo_p99_s for r in on_jobs if r.rpo_p99_s is not None), default=None)
        met = "-" if p99 is None else ("PASS" if p99 <= RPO_AIM else "MISS")
        catch = [r.catch_up_s for r in on_jobs]
        slowest = None if not catch or None in catch else max(c for c in catch if c is not None)
        lost = sum(r.copies_lost or 0 for r in on_jobs)
        wire = " | ".join(
            _fmt(r.wire_ratio if r else None, ".3f")
            for r in (find(results, w.name, d.name, ON) for d in DATA)
        )
        yield (
            f"{w.name:<13} {_fmt(off.iops if off else None, ',.0f'):>9} "
            f"{_fmt(on.iops if on else None, ',.0f'):>9} "
            f"{_fmt(ratio(on, off, 'iops'), '.2f', 'x'):>7} {_fmt(p99, '.2f', ' s'):>8} "
            f"{met:>5} {_fmt(slowest, '.1f', ' s'):>9} {lost:>7,d}  {wire}"
        )
    yield (
        "RPO p99 and 'caught up': the worst of the workload's on-jobs; 'lost': copies the "
        "tap left to its bitmap in them. Mirror check: " + ("PASS" if integrity.match else "FAIL")
    )
    yield "Virtual machines share their host's CPUs: compare off and on within one run."


def report_text(run: Run, env: dict[str, str], runtime: int) -> Iterator[str]:
    on_rows = [r for r in run.results if r.replication == ON]
    sections = (
        report_header(run, env, runtime),
        report_throughput(run.results),
        report_rpo(on_rows),
        report_wire(on_rows),
        report_mirror(run.integrity),
        report_logs(run.logs),
        report_summary(run.results, run.integrity),
    )
    for n, section in enumerate(sections):
        if n:
            yield ""
        yield from section


# -- main --------------------------------------------------------------------------------------


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--runtime", type=int, default=20, help="seconds per fio job (20)")
    parser.add_argument("--size", type=parse_size, default="1G", help="disk size (1G)")
    parser.add_argument(
        "--journal-limit",
        type=parse_size,
        default="4G",
        help="the target journal's size limit (4G): beyond it the oldest checkpoints go",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results here")
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (logs, fio output)"
    )
    args = parser.parse_args(argv)
    if args.runtime < 1:
        parser.error("--runtime must be at least 1 second")
    return args


def json_document(run: Run, env: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    return {
        "pinning": {"fio_cpu": CLIENT_CPU, "hvds_cpu": SERVER_CPU},
        "runtime_s": args.runtime,
        "size_bytes": args.size,
        "rpo_aim_p99_s": RPO_AIM,
        "environment": env,
        "initial_sync_s": run.sync_s,
        "results": [
            {
                **asdict(r),
                "wire_ratio": r.wire_ratio,
                "replicated_mb_per_s": r.replicated_mb_per_s,
                "rpo_met": r.rpo_met,
            }
            for r in run.results
        ],
        "mirror": {**asdict(run.integrity), "match": run.integrity.match},
        "logs": [asdict(entry) for entry in run.logs],
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    run = Run()
    failure = None
    try:
        env = environment(args)
        bench(args, run)
    except BenchError as exc:
        failure = str(exc)
        log(f"replication_bench: {exc}")
    except KeyboardInterrupt:
        log("replication_bench: interrupted, every process stopped")
        return 130
    if not run.results:
        return 1
    for line in report_text(run, env, args.runtime):
        print(line)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(json_document(run, env, args), indent=2) + "\n")
        log(f"results written to {args.json}")
    # An RPO over the aim is a finding, not a failure; a failed job, a backlog that never
    # drained or a mirror that differs is.
    failed = any(r.error or r.backlog_bytes is not None for r in run.results)
    return 1 if failure or failed or not run.integrity.match else 0


if __name__ == "__main__":
    sys.exit(main())
