"""Benchmark hvds-tap against other NBD servers, side by side, with fio's nbd engine.

    .venv/bin/python bench/tap_bench.py [--runtime 20] [--size 1G] [--workloads ...]
                                        [--servers ...] [--json FILE]

Every server serves the same raw image (created fresh under /var/tmp, filled with random data,
kept in the page cache) on a unix socket. The servers are started once and stay up; the fio
jobs run one at a time, workload by workload, each workload on every server in turn:

  hvds-tap     the tap, copying every write to a running VDSA sink (hvds-vdsa sink)
  nbdkit-file  nbdkit's file plugin, default threads: the baseline the ratios are taken against
  qemu-nbd     qemu-nbd, writeback cache, thread pool AIO
  nbdkit-null  nbdkit's null plugin of the same size: what the client can do, the ceiling

fio runs pinned to CPU 1 and every server process (and the sink) to CPU 0, so that the client
and the server do not fight for a core; unpinned runs on a 2-core machine swing by +-30%.
A server's CPU use is its utime+stime (all threads, and any children) over the fio job, as a
percentage of one core. For hvds-tap the write copies lost (queued neither to the sink nor kept:
left to the dirty-bitmap resync) are read from its metrics after every job, and after a write
job the bench waits until the sink has acknowledged everything before the next job starts.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

SERVER_CPU = 0
CLIENT_CPU = 1
EXPORT = "disk0"
BASELINE = "nbdkit-file"
TAP = "hvds-tap"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
DRAIN_TIMEOUT = 60.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Not /tmp: that may be a tmpfs, and the images are meant to be files on a real file system.
WORK_PARENT = Path("/var/tmp")  # noqa: S108 -- a private mkdtemp directory is made inside


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    rw: str
    block_size: str
    iodepth: int

    @property
    def direction(self) -> str:
        return "write" if "write" in self.rw else "read"


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("randwrite-4k", "4 KiB random write, iodepth 32", "randwrite", "4k", 32),
        Workload("randread-4k", "4 KiB random read, iodepth 32", "randread", "4k", 32),
        Workload("seqwrite-1m", "1 MiB sequential write, iodepth 8", "write", "1m", 8),
        Workload("seqread-1m", "1 MiB sequential read, iodepth 8", "read", "1m", 8),
    )
}
SERVERS = (TAP, "nbdkit-file", "qemu-nbd", "nbdkit-null")


class BenchError(Exception):
    """Something the bench needs is missing or failed; the message says what."""


@dataclass
class JobResult:
    server: str
    workload: str
    iops: float | None = None
    mb_per_s: float | None = None
    server_cpu_pct: float | None = None
    sink_cpu_pct: float | None = None
    core0_busy_pct: float | None = None
    core1_busy_pct: float | None = None
    steal_pct: float | None = None
    fio_cpu_pct: float | None = None
    lat_mean_us: float | None = None
    clat_p99_us: float | None = None
    ratio_vs_baseline: float | None = None
    copies_lost: int | None = None
    resync_bytes: int | None = None
    sink_drain_s: float | None = None
    sink_backlog_bytes: int | None = None
    link_queued_bytes: int | None = None
    error: str | None = None


# -- processes ---------------------------------------------------------------------------------


def tool(name: str) -> str:
    """The full path of a command: the venv's own bin directory first, then PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise BenchError(f"{name} not found (PATH={os.environ.get('PATH', '')})")
    return found


def run(argv: Sequence[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    # The bench only runs the tools it names, with arguments it builds itself.
    return subprocess.run(  # noqa: S603
        list(argv), capture_output=True, text=True, timeout=timeout, check=False
    )


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Processes:
    """Every server process started, so that all of them are stopped whatever happens."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._procs: list[Proc] = []

    def start(self, name: str, argv: Sequence[str]) -> Proc:
        """Start ``argv`` pinned to the server CPU, in its own process group, logging to a file."""
        log = self.workdir / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(  # noqa: S603 -- argv is built by the bench
                [tool("taskset"), "-c", str(SERVER_CPU), *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
            )
        proc = Proc(name, popen, log)
        self._procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> int | None:
        """SIGTERM the process group, SIGKILL it if it lingers; the exit status if it exited."""
        if proc in self._procs:
            self._procs.remove(proc)
        for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                return proc.popen.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        return None

    def stop_all(self, keep: int = 0) -> None:
        """Stop every process but the first ``keep`` started (and still running)."""
        for proc in reversed(self._procs[keep:]):
            self.stop(proc)

    def __len__(self) -> int:
        return len(self._procs)


def wait_until(proc: Proc, what: str, ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if proc.popen.poll() is not None:
            raise BenchError(
                f"{proc.name} exited ({proc.popen.returncode}) before {what}:\n{proc.log_tail()}"
            )
        with contextlib.suppress(OSError):
            if ready():
                return
        if time.monotonic() > deadline:
            raise BenchError(f"{proc.name}: no {what} after {READY_TIMEOUT:.0f} s")
        time.sleep(0.05)


def check_pinned(proc: Proc) -> None:
    affinity = os.sched_getaffinity(proc.pid)
    if affinity != {SERVER_CPU}:
        raise BenchError(f"{proc.name} runs on CPUs {sorted(affinity)}, not {SERVER_CPU}")


def nbd_uri(sock: Path) -> str:
    return f"nbd+unix:///{EXPORT}?socket={sock}"


def nbd_answers(uri: str, size: int) -> bool:
    result = run([tool("nbdinfo"), "--size", uri], timeout=10)
    return result.returncode == 0 and result.stdout.strip() == str(size)


# -- CPU accounting ----------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # fields from 3 (state) on; comm may hold spaces


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                ppid = int(_stat_fields(int(entry.name))[1])
                children.setdefault(ppid, []).append(int(entry.name))
    return children


def cpu_seconds(pid: int) -> float:
    """utime+stime of the process (all its threads) and of its descendants, living or reaped."""
    children = _children()
    total = 0
    todo = [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError):
            fields = _stat_fields(current)
            total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
        todo.extend(children.get(current, []))
    return total / CLK_TCK


Jiffies = dict[int, tuple[int, int, int]]


def core_times() -> Jiffies:
    """(busy, total, steal) jiffies per CPU from /proc/stat."""
    times: Jiffies = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            user, nice, system, idle, iowait, irq, softirq, steal = map(int, values[:8])
            busy = user + nice + system + irq + softirq + steal
            times[int(name[3:])] = (busy, busy + idle + iowait, steal)
    return times


def core_pct(before: Jiffies, after: Jiffies, cpu: int, which: int, seconds: float) -> float:
    """Busy (which=0) or stolen (which=2) time of ``cpu`` between two samples, in % of
    ``seconds`` (the fio job's run time, like the servers' CPU: fio's start and end are idle)."""
    part = after[cpu][which] - before[cpu][which]
    return 100.0 * part / CLK_TCK / seconds


# -- servers -----------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    uri: str
    main: Proc
    procs: list[Proc]
    sink: Proc | None = None
    metrics_port: int | None = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        body = conn.getresponse().read().decode()
    finally:
        conn.close()
    samples: dict[str, float] = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def tap_metric(samples: dict[str, float], name: str) -> float:
    return samples.get(f'{name}{{export="{EXPORT}"}}', samples.get(name, 0.0))


def start_tap(procs: Processes, image: Path, size: int, sink_mode: str) -> Server:
    base = procs.workdir / TAP
    base.mkdir()
    vdsa_sock, tap_sock = base / "vdsa.sock", base / "tap.sock"
    port = free_port()
    config = base / "tap.toml"
    config.write_text(
        "[tap]\n"
        f'unix_socket = "{tap_sock}"\n'
        f'vdsa_socket = "{vdsa_sock}"\n'
        f'state_dir = "{base / "state"}"\n'
        f'metrics = "127.0.0.1:{port}"\n'
        "\n[[export]]\n"
        f'name = "{EXPORT}"\n'
        f'path = "{image}"\n'
    )
    # "discard": the sink takes, checks and acknowledges every copy, as a VDSA's intake does;
    # "apply": it also writes each copy to a replica image on the same core (a heavier sink).
    sink_args = ["--discard"] if sink_mode == "discard" else ["--dir", str(base / "replica")]
    sink = procs.start(
        "hvds-vdsa-sink",
        [tool("hvds-vdsa"), "sink", "--listen", str(vdsa_sock), *sink_args],
    )
    wait_until(sink, "'hvds-vdsa ready'", lambda: "hvds-vdsa ready" in sink.log.read_text())
    tap = procs.start(TAP, [tool("hvds-tap"), "--config", str(config)])
    wait_until(tap, "'hvds-tap ready'", lambda: "hvds-tap ready" in tap.log.read_text())
    wait_until(tap, "VDSA link up", lambda: scrape(port).get("hvds_tap_vdsa_link_up") == 1.0)
    uri = nbd_uri(tap_sock)
    wait_until(tap, "NBD answer", lambda: nbd_answers(uri, size))
    return Server(TAP, uri, tap, [tap, sink], sink=sink, metrics_port=port)


def start_plain(procs: Processes, name: str, image: Path, size: int) -> Server:
    sock = procs.workdir / f"{name}.sock"
    argv = {
        "nbdkit-file": [tool("nbdkit"), "-f", "-U", str(sock), "file", f"file={image}"],
        "qemu-nbd": [
            tool("qemu-nbd"),
            "-f",
            "raw",
            "-k",
            str(sock),
            "-x",
            EXPORT,
            "-t",
            "--cache=writeback",
            "--aio=threads",
            str(image),
        ],
        "nbdkit-null": [tool("nbdkit"), "-f", "-U", str(sock), "null", f"size={size}"],
    }[name]
    proc = procs.start(name, argv)
    uri = nbd_uri(sock)
    wait_until(proc, "NBD answer", lambda: sock.exists() and nbd_answers(uri, size))
    return Server(name, uri, proc, [proc])


def start_server(
    procs: Processes, name: str, image: Path, size: int, sink_mode: str = "discard"
) -> Server:
    if name == TAP:
        server = start_tap(procs, image, size, sink_mode)
    else:
        server = start_plain(procs, name, image, size)
    for proc in server.procs:
        check_pinned(proc)
    return server


def stop_server(procs: Processes, server: Server) -> None:
    for proc in server.procs:  # the tap before its sink
        status = procs.stop(proc)
        if status not in (0, -signal.SIGTERM):
            print(f"warning: {proc.name} stopped with status {status}", file=sys.stderr)


# -- fio ---------------------------------------------------------------------------------------


def fio_argv(workload: Workload, uri: str, runtime: int) -> list[str]:
    return [
        tool("taskset"),
        "-c",
        str(CLIENT_CPU),
        tool("fio"),
        f"--name={workload.name}",
        "--ioengine=nbd",
        f"--uri={uri}",
        f"--rw={workload.rw}",
        f"--bs={workload.block_size}",
        f"--iodepth={workload.iodepth}",
        "--time_based",
        f"--runtime={runtime}",
        "--norandommap",
        "--randrepeat=0",
        "--output-format=json",
    ]


def parse_fio(stdout: str) -> dict[str, Any]:
    # The nbd engine prints "fio: connected to NBD server" before the JSON document.
    start = stdout.find("{")
    if start < 0:
        raise BenchError("fio printed no JSON")
    report: dict[str, Any] = json.loads(stdout[start:])
    job: dict[str, Any] = report["jobs"][0]
    return job


def wait_drained(port: int, result: JobResult) -> None:
    """Wait until the tap has no dirty block left: every copy of the job is in the sink."""
    start = time.monotonic()
    while True:
        samples = scrape(port)
        dirty = tap_metric(samples, "hvds_tap_dirty_bytes")
        waited = time.monotonic() - start
        if dirty == 0:
            result.sink_drain_s = waited
            return
        if waited > DRAIN_TIMEOUT:
            result.sink_backlog_bytes = int(dirty)
            result.link_queued_bytes = int(samples.get("hvds_tap_vdsa_link_buffered_bytes", 0))
            return
        time.sleep(0.05)


def explain_backlog(server: Server, port: int) -> None:
    """The sink did not catch up: say what state the tap and the sink are in."""
    samples = scrape(port)
    log(f"[{server.name}] the sink did not catch up; tap metrics now:")
    for key, value in sorted(samples.items()):
        if key.startswith(("hvds_tap_dirty", "hvds_tap_vdsa", "hvds_tap_copies_lost_total")):
            log(f"    {key} {value:.0f}")
    for proc in server.procs:
        state = "running" if proc.popen.poll() is None else f"exited {proc.popen.returncode}"
        log(f"  {proc.name} ({state}), last lines of its log:")
        log("    " + proc.log_tail(8).replace("\n", "\n    "))


def run_job(server: Server, workload: Workload, runtime: int) -> JobResult:
    result = JobResult(server.name, workload.name)
    os.sync()  # start every job without someone else's dirty pages waiting for writeback
    port = server.metrics_port
    metrics_before = scrape(port) if port is not None else {}
    cores_before = core_times()
    cpu_before = cpu_seconds(server.main.pid)
    sink_before = cpu_seconds(server.sink.pid) if server.sink else 0.0
    done = run(fio_argv(workload, server.uri, runtime), timeout=runtime + 120)
    cpu_after = cpu_seconds(server.main.pid)
    sink_after = cpu_seconds(server.sink.pid) if server.sink else 0.0
    cores_after = core_times()
    if done.returncode != 0:
        raise BenchError(f"fio failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    job = parse_fio(done.stdout)
    if job.get("error"):
        raise BenchError(f"fio job error {job['error']}")
    io = job[workload.direction]
    seconds = job["job_runtime"] / 1000.0
    if seconds <= 0:
        raise BenchError("fio reports a run time of 0")
    result.iops = float(io["iops"])
    result.mb_per_s = io["bw_bytes"] / 1e6
    result.server_cpu_pct = 100.0 * (cpu_after - cpu_before) / seconds
    result.core0_busy_pct = core_pct(cores_before, cores_after, SERVER_CPU, 0, seconds)
    result.core1_busy_pct = core_pct(cores_before, cores_after, CLIENT_CPU, 0, seconds)
    result.steal_pct = max(
        core_pct(cores_before, cores_after, cpu, 2, seconds) for cpu in (SERVER_CPU, CLIENT_CPU)
    )
    result.fio_cpu_pct = float(job["usr_cpu"]) + float(job["sys_cpu"])
    result.lat_mean_us = io["lat_ns"]["mean"] / 1000.0
    p99 = io["clat_ns"].get("percentile", {}).get("99.000000")
    result.clat_p99_us = p99 / 1000.0 if p99 is not None else None
    if server.sink is not None:
        result.sink_cpu_pct = 100.0 * (sink_after - sink_before) / seconds
    if port is not None:
        if workload.direction == "write":
            wait_drained(port, result)
            if result.sink_backlog_bytes is not None:
                explain_backlog(server, port)
        metrics_after = scrape(port)
        for attr, name in (
            ("copies_lost", "hvds_tap_copies_lost_total"),
            ("resync_bytes", "hvds_tap_resync_bytes_total"),
        ):
            delta = tap_metric(metrics_after, name) - tap_metric(metrics_before, name)
            setattr(result, attr, int(delta))
    return result


# -- setup -------------------------------------------------------------------------------------


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)(i?b)?\s*", text, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1G, 512M)")
    number, unit = int(match[1]), match[2].lower()
    size = number << (10 * " kmgt".index(unit or " "))
    if size < 64 * 1024 * 1024 or size % (1024 * 1024):
        raise argparse.ArgumentTypeError("size must be a whole number of MiB, at least 64M")
    return size


def make_image(path: Path, size: int) -> None:
    """A raw image of random data, synced so that the page cache holds it clean."""
    chunk = 16 * 1024 * 1024
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        offset = 0
        while offset < size:
            offset += os.write(fd, os.urandom(min(chunk, size - offset)))
        os.fsync(fd)
    finally:
        os.close(fd)


def first_line(argv: Sequence[str]) -> str:
    try:
        result = run(argv, timeout=10)
    except (BenchError, OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    lines = (result.stdout or result.stderr).strip().splitlines()
    if not lines:
        return "unknown"
    program, _, rest = lines[0].partition(" ")
    return f"{Path(program).name} {rest}".strip()  # qemu-nbd prints its full path


def machine_environment() -> dict[str, str]:
    """What every hvds benchmark reports about the machine and the tools it ran."""
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    try:
        hvds = importlib.metadata.version("hvds-agent")
    except importlib.metadata.PackageNotFoundError:
        hvds = "unknown"
    return {
        "cpu": f"{cpu} ({os.cpu_count()} CPUs)",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "hvds-agent": hvds,
        "fio": first_line([tool("fio"), "--version"]),
    }


def environment() -> dict[str, str]:
    return {
        **machine_environment(),
        "nbdkit": first_line([tool("nbdkit"), "--version"]),
        "qemu-nbd": first_line([tool("qemu-nbd"), "--version"]),
        "libnbd": first_line([tool("nbdinfo"), "--version"]),
    }


def choose(
    parser: argparse.ArgumentParser, values: Sequence[str] | None, allowed: Sequence[str]
) -> list[str]:
    """The values asked for (space or comma separated), in the order of ``allowed``."""
    if not values:
        return list(allowed)
    chosen = [v for value in values for v in value.split(",") if v]
    unknown = [v for v in chosen if v not in allowed]
    if unknown:
        parser.error(f"unknown {', '.join(unknown)} (choose from {', '.join(allowed)})")
    return [v for v in allowed if v in chosen]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="workloads: " + ", ".join(WORKLOADS) + "\nservers:   " + ", ".join(SERVERS),
    )
    parser.add_argument("--runtime", type=int, default=20, help="seconds per fio job (20)")
    parser.add_argument("--size", type=parse_size, default="1G", help="image size (1G)")
    parser.add_argument("--workloads", nargs="+", metavar="W", help="a subset of the workloads")
    parser.add_argument("--servers", nargs="+", metavar="S", help="a subset of the servers")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results here")
    parser.add_argument(
        "--sink",
        choices=["discard", "apply"],
        default="discard",
        help="the tap's VDSA sink acknowledges copies (discard, default) or also writes them "
        "to a replica image (apply)",
    )
    args = parser.parse_args(argv)
    if args.runtime < 1:
        parser.error("--runtime must be at least 1 second")
    args.workloads = choose(parser, args.workloads, list(WORKLOADS))
    args.servers = choose(parser, args.servers, SERVERS)
    return args


# -- report ------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def notes(result: JobResult) -> str:
    if result.error:
        return f"FAILED: {result.error.splitlines()[0]}"
    parts = []
    if result.sink_cpu_pct is not None:
        parts.append(f"sink {result.sink_cpu_pct:.0f}% CPU")
    if result.copies_lost is not None:
        if result.copies_lost:
            parts.append(
                f"{result.copies_lost} copies LOST (sink fell behind; "
                f"resync sent {result.resync_bytes or 0} B)"
            )
        else:
            parts.append("0 copies lost")
    if result.sink_drain_s is not None:
        parts.append(f"sink caught up {result.sink_drain_s:.1f} s after")
    if result.sink_backlog_bytes is not None:
        parts.append(
            f"sink NOT caught up {DRAIN_TIMEOUT:.0f} s after: "
            f"{result.sink_backlog_bytes / 1e6:.1f} MB still dirty, "
            f"link queue gauge {(result.link_queued_bytes or 0) / 1e6:.1f} MB"
        )
    return "; ".join(parts)


def summary_line(result: JobResult) -> str:
    line = (
        f"{_fmt(result.iops, ',.0f')} IOPS, {_fmt(result.mb_per_s, '.1f')} MB/s, "
        f"CPU {_fmt(result.server_cpu_pct, '.0f')}%"
    )
    extra = notes(result)
    return f"{line} ({extra})" if extra else line


def report_text(
    results: list[JobResult], workloads: list[str], env: dict[str, str], runtime: int, size: int
) -> Iterator[str]:
    yield "hvds-tap NBD benchmark"
    yield (
        f"PINNED: fio on CPU {CLIENT_CPU}; every server process (and the hvds-vdsa sink) on "
        f"CPU {SERVER_CPU} (taskset -c)."
    )
    yield (
        f"fio {runtime} s per job, ioengine=nbd over a unix socket, {size / 2**30:g} GiB raw "
        "image of random data in the page cache."
    )
    yield (
        "CPU % = the server's utime+stime (all threads) over fio's run time, in % of one core; "
        "MB = 10^6 bytes."
    )
    yield "core0 % = all of CPU 0 busy (server, sink, kernel) over fio's run time."
    yield "fio % = the client's CPU (on CPU 1): near 100, the client is the limit, not the server."
    for key, value in env.items():
        yield f"  {key + ':':11} {value}"
    header = (
        f"{'server':<12} {'IOPS':>10} {'MB/s':>9} {'CPU %':>7} {'core0 %':>8} {'fio %':>6} "
        f"{'vs ' + BASELINE:>15}  notes"
    )
    summary = []
    for name in workloads:
        rows = [r for r in results if r.workload == name]
        if not rows:
            continue
        yield ""
        yield f"== {WORKLOADS[name].title} ({name}) =="
        yield header
        yield "-" * len(header)
        for r in rows:
            ratio = _fmt(r.ratio_vs_baseline, ".2f", "x")
            yield (
                f"{r.server:<12} {_fmt(r.iops, ',.0f'):>10} {_fmt(r.mb_per_s, '.1f'):>9} "
                f"{_fmt(r.server_cpu_pct, '.0f'):>7} {_fmt(r.core0_busy_pct, '.0f'):>8} "
                f"{_fmt(r.fio_cpu_pct, '.0f'):>6} {ratio:>15}  {notes(r)}".rstrip()
            )
        tap = next((r for r in rows if r.server == TAP), None)
        if tap is not None:
            ratio = "n/a" if tap.ratio_vs_baseline is None else f"{tap.ratio_vs_baseline:.2f}x"
            summary.append(f"{name:<13} {TAP}/{BASELINE} = {ratio}")
    if summary:
        yield ""
        yield "Summary (IOPS ratio):"
        yield from summary
    stuck = [r.workload for r in results if r.sink_backlog_bytes is not None]
    if stuck:
        yield ""
        yield (
            f"NOTE: after {', '.join(stuck)} hvds-tap still had dirty blocks {DRAIN_TIMEOUT:.0f} s "
            "after fio ended: the copies (or their resync) did not reach the sink."
        )
    lost = sum(r.copies_lost or 0 for r in results)
    if lost:
        yield ""
        yield (
            f"NOTE: hvds-tap lost {lost} write copies: the sink fell behind and the link queue "
            "was full, so those blocks were left to the dirty-bitmap resync (still correct, but "
            "the copy was not live)."
        )


def set_ratios(results: list[JobResult]) -> None:
    baseline = {r.workload: r.iops for r in results if r.server == BASELINE and r.iops}
    for r in results:
        base = baseline.get(r.workload)
        if r.iops is not None and base:
            r.ratio_vs_baseline = r.iops / base


# -- main --------------------------------------------------------------------------------------


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def start_servers(
    procs: Processes, args: argparse.Namespace, image: Path, failed: dict[str, str]
) -> list[Server]:
    """Start every server asked for; those that fail are stopped and told in ``failed``."""
    servers = []
    for name in args.servers:
        log(f"[{name}] starting")
        running = len(procs)
        try:
            servers.append(start_server(procs, name, image, args.size, args.sink))
        except BenchError as exc:
            log(f"[{name}] FAILED to start: {exc}")
            failed[name] = str(exc).splitlines()[0]
            procs.stop_all(keep=running)
    return servers


def bench(args: argparse.Namespace, results: list[JobResult]) -> None:
    if not {SERVER_CPU, CLIENT_CPU} <= os.sched_getaffinity(0):
        raise BenchError(f"needs CPUs {SERVER_CPU} and {CLIENT_CPU} to pin to")
    if shutil.disk_usage(WORK_PARENT).free < 3 * args.size:
        raise BenchError(f"{WORK_PARENT} needs {3 * args.size / 2**30:.1f} GiB free")
    workdir = Path(tempfile.mkdtemp(prefix="hvds-bench-", dir=WORK_PARENT))
    procs = Processes(workdir)
    try:
        image = workdir / "disk.raw"
        log(f"creating {image} ({args.size / 2**30:g} GiB of random data)")
        make_image(image, args.size)
        # Every server is started once and stays up, idle while the others run: the servers of a
        # workload are then measured minutes apart at most, not a whole run apart.
        failed: dict[str, str] = {}
        servers = {s.name: s for s in start_servers(procs, args, image, failed)}
        for wname in args.workloads:
            for name in args.servers:
                server = servers.get(name)
                if server is None:
                    results.append(JobResult(name, wname, error=f"start: {failed[name]}"))
                    continue
                try:
                    result = run_job(server, WORKLOADS[wname], args.runtime)
                except (BenchError, subprocess.TimeoutExpired, OSError, KeyError) as exc:
                    result = JobResult(name, wname, error=str(exc) or type(exc).__name__)
                results.append(result)
                log(f"[{name}] {wname}: {summary_line(result)}")
        for server in servers.values():
            stop_server(procs, server)
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    results: list[JobResult] = []
    try:
        env = environment()
        bench(args, results)
    except BenchError as exc:
        log(f"tap_bench: {exc}")
        return 1
    except KeyboardInterrupt:
        log("tap_bench: interrupted, servers stopped")
        return 130
    set_ratios(results)
    for line in report_text(results, args.workloads, env, args.runtime, args.size):
        print(line)
    if args.json is not None:
        document = {
            "pinning": {"fio_cpu": CLIENT_CPU, "server_cpu": SERVER_CPU},
            "runtime_s": args.runtime,
            "size_bytes": args.size,
            "environment": env,
            "results": [asdict(r) for r in results],
            "summary": {
                r.workload: r.ratio_vs_baseline
                for r in results
                if r.server == TAP and r.ratio_vs_baseline is not None
            },
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=2) + "\n")
        log(f"results written to {args.json}")
    # A sink that never caught up means copies went missing: as much a failure as a failed job.
    return 1 if any(r.error or r.sink_backlog_bytes is not None for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
