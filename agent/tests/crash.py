"""Crash injection: kill -9 a random component of the replication path under a verifiable write
load, restart it, repeat; then check that every checkpoint the target kept is a prefix of the
write order and that no acknowledged write was lost.

The path is one host's tap -> source VDSA -> mutual TLS (bandwidth-limited, so the target lags
as behind a WAN) -> target VDSA (journal and mirrors). A writer (``WRITER``, system python3
with libnbd) writes 4 KiB blocks stamped with a sequence number i = 0, 1, 2, ..., each waiting
for the previous one's reply, alternating over the disks. Stamps go round a ring of slots
(slot i mod ring), so a later stamp overwrites an earlier one: the disks stay small, which keeps
the verification of thousands of checkpoints cheap (reading a past checkpoint costs blocks x
later intervals; see docs/reliability.md). With overwrites the content of a cut after n writes
is still fully determined: each slot holds the newest stamp below n that maps to it. A
checkpoint is judged by that, whole. When consecutive checkpoints are less than a ring apart
(the usual case; the report counts the writes beyond), each write is also seen on its own, at
the first checkpoint after it.

Besides the checkpoints, the run fails on a hang: writes that do not resume after a restart,
a tap that does not reconnect to its VDSA, an end checkpoint that does not arrive. All bad
checkpoints are listed, not just the first.

Run it with ``pytest tests/integration/test_crash_injection.py -s`` (environment: see
``CrashPlan.from_env``) or ``python tests/crash.py --help``; docs/reliability.md has the rest.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import hashlib
import itertools
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import harness
from harness import Lab, Manager, Service, Vdsa, sha256_file
from sites import managed_vdsa

from hvds.journal import Journal
from hvds.pki import CertificateAuthority
from hvds.vdsa.config import TargetVpg
from hvds.vdsa.target import open_journal

if not (harness.BIN / "hvds-tap").exists():
    # Run as ../.venv/bin/pytest without the venv on PATH: the commands are beside this Python.
    harness.BIN = Path(sys.executable).parent

BLOCK = 4096
COMPONENTS = ("tap", "source", "target")
# The managed run (``ManagedCrashRun``): the site manager too; a tap or a source VDSA is one of
# the two hosts', chosen at random.
MANAGED_COMPONENTS = ("manager", "tap", "source", "target")
SYSTEM_PYTHON = "/usr/bin/python3"  # has the libnbd bindings; the venv does not

# The stamp of write i: this line, then bytes derived from it (incompressible, as most of a
# VM's data is, so that the bandwidth limit bites), so that a torn or misplaced block cannot
# pass for a whole one. The seed in it rules out data of another run.
_STAMP = b"hvds-crash %016x %010d\n"
_STAMP_RE = re.compile(rb"hvds-crash ([0-9a-f]{16}) (\d{10})\n")
_STAMP_LEN = len(_STAMP % (0, 0))
_ZERO_BLOCK = bytes(BLOCK)
SPREAD = 16  # blocks in the tap's 64 KiB bitmap block


@functools.lru_cache(maxsize=16384)  # consecutive checkpoints share most of their blocks
def stamp_block(seed: int, i: int) -> bytes:
    line = _STAMP % (seed % 2**64, i)
    return line + hashlib.shake_128(line).digest(BLOCK - len(line))


# The workload. Runs under the system python3 (libnbd); it must not import anything of ours.
# A write whose reply never came (the tap died) is sent again, same data at the same offset,
# once the tap is back: harmless whether or not the first attempt reached the disk, and no later
# stamp is written before it is acknowledged, so the disks always hold a prefix of the stamps.
WRITER = r"""
import hashlib, json, os, signal, sys, time
import nbd

cfg = json.load(open(sys.argv[1]))
uris, slots, seed, rate = cfg["uris"], cfg["slots"], cfg["seed"], cfg["rate"]
disks = len(uris)
ring = slots * disks
groups = slots // 16  # crash.place(): consecutive slots of a disk are 64 KiB apart
log = open(cfg["log"], "a", buffering=1)
stopping = False


def on_term(signum, frame):
    global stopping
    stopping = True  # finish the write in hand (and its retries), then stop


signal.signal(signal.SIGTERM, on_term)


def block(i):  # crash.stamp_block()
    line = b"hvds-crash %016x %010d\n" % (seed % 2**64, i)
    return line + hashlib.shake_128(line).digest(4096 - len(line))


def connect():
    # One connection per disk; all or nothing, retried until the tap is back.
    while True:
        handles = []
        try:
            for uri in uris:
                h = nbd.NBD()
                h.connect_uri(uri)
                handles.append(h)
            return handles
        except nbd.Error:
            del handles
            time.sleep(0.02)


handles = connect()
log.write("connected\n")
i = 0
period = 1.0 / rate
next_at = time.monotonic()
while not stopping:
    slot = i % ring
    j = slot // disks
    try:
        handles[slot % disks].pwrite(block(i), ((j % groups) * 16 + j // groups) * 4096)
    except nbd.Error as exc:
        log.write("no-reply %d %s\n" % (i, str(exc).replace("\n", " ")))
        handles = None
        handles = connect()
        log.write("connected\n")
        continue  # the same stamp again
    log.write("ack %d\n" % i)
    i += 1
    next_at += period
    delay = next_at - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    elif delay < -0.1:
        next_at = time.monotonic()  # fell behind (the tap was down): no catch-up burst
log.write("stopped %d\n" % i)
"""


@dataclass(frozen=True)
class CrashPlan:
    injections: int = 10
    seed: int = 0
    disks: int = 2  # 1 or 2; writes alternate between them
    # Slots of the ring, over all disks: 16 MiB, 41 s of writes at 100/s. Consecutive
    # checkpoints are seldom further apart than that (repeated kills have made it 28 s).
    ring: int = 4096
    rate: float = 100.0  # writes per second (each still waits for the previous reply)
    checkpoint_interval: float = 0.2
    # Seconds of writing between a restart and the next kill; seconds a component stays dead.
    run_between: tuple[float, float] = (0.05, 1.2)
    down: tuple[float, float] = (0.0, 1.0)
    components: tuple[str, ...] = COMPONENTS
    # The source's link to the target, bytes/s (0: none). A WAN-like limit: the target lags a
    # little behind, and a resync takes a second or two to reach it, so kills land inside them.
    bandwidth_limit: int = 8 * 1024 * 1024
    compression: bool = True
    # The managed set-up: a VPG over two hosts whose checkpoints the site manager's barrier
    # takes, the manager among the victims (ManagedCrashRun).
    managed: bool = False

    @property
    def slots_per_disk(self) -> int:
        return self.ring // self.disks

    @classmethod
    def from_env(cls, injections: int = 10, managed: bool | None = None) -> CrashPlan:
        """HVDS_CRASH_INJECTIONS, HVDS_CRASH_SEED (replay a run), HVDS_CRASH_DISKS,
        HVDS_CRASH_RATE (writes/s), HVDS_CRASH_BANDWIDTH (bytes/s, 0: no limit; per host in
        the managed run), HVDS_CRASH_COMPONENTS (comma-separated subset of tap,source,target,
        and manager in the managed run), HVDS_CRASH_MANAGED=1 (the managed run)."""
        env = os.environ
        if managed is None:
            managed = env.get("HVDS_CRASH_MANAGED", "") not in ("", "0")
        every = MANAGED_COMPONENTS if managed else COMPONENTS
        seed = env.get("HVDS_CRASH_SEED")
        components = tuple(env.get("HVDS_CRASH_COMPONENTS", ",".join(every)).split(","))
        if not set(components) <= set(every):
            raise ValueError(f"HVDS_CRASH_COMPONENTS: choose among {every}")
        bandwidth = (4 if managed else 8) * 1024 * 1024
        return cls(
            injections=int(env.get("HVDS_CRASH_INJECTIONS", injections)),
            seed=int(seed) if seed else random.SystemRandom().randrange(2**32),
            disks=int(env.get("HVDS_CRASH_DISKS", 2)),
            rate=float(env.get("HVDS_CRASH_RATE", 100)),
            bandwidth_limit=int(env.get("HVDS_CRASH_BANDWIDTH", bandwidth)),
            components=components,
            managed=managed,
        )


@dataclass
class Injection:
    number: int
    component: str
    at: float  # seconds since the workload started
    acked_before: int  # writes acknowledged when the kill was sent
    # Bytes the tap held dirty just before (not yet acknowledged by the target: in flight or
    # to be resynced), -1 if unknown; > 0 means the kill cut into a stream of copies.
    dirty_bytes: int
    down: float  # seconds the component stayed dead
    restart: float  # seconds the restart took (until it said "ready")
    while_down: int  # writes acknowledged from the kill to the restart (none while the tap is)
    resumed: float  # seconds from the restart until 10 more writes were acknowledged


@dataclass
class Cut:
    """What one checkpoint holds: the first n stamps."""

    id: int
    seq: int
    tag: str
    n: int
    time_ns: int = 0  # when it was cut (the managed run matches journals by it)


@dataclass
class BadCut:
    """A checkpoint that is not a prefix of the writes, or holds fewer than the one before."""

    id: int
    seq: int
    tag: str
    time_ns: int  # when the source cut it
    n: int  # the newest write it holds, plus one
    problem: str


@dataclass
class CrashReport:
    plan: CrashPlan
    root: str
    injections: list[Injection] = field(default_factory=list)
    acked: int = 0  # writes acknowledged to the writer
    no_reply: int = 0  # writes whose reply never came (the tap died), each written again
    cuts: list[Cut] = field(default_factory=list)
    bad_cuts: list[BadCut] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # others: the mirror, start, end
    workload_seconds: float = 0.0
    settle_seconds: float = 0.0  # from the writer's stop until the end checkpoint reached B
    verify_seconds: float = 0.0
    tracebacks: dict[str, int] = field(default_factory=dict)
    # The managed run: barriers one host missed, checkpoints the manager reported taken (all
    # checked to be kept), and what else the client's requests got.
    partial_barriers: int = 0
    holds_timed_out: int = 0
    reported: int = 0
    client_errors: dict[str, int] = field(default_factory=dict)

    def in_flight(self) -> int:
        return sum(1 for i in self.injections if i.dirty_bytes > 0)

    def by_component(self) -> dict[str, int]:
        counts = Counter(i.component for i in self.injections)
        if self.plan.managed:  # tap-a1, source-a2, ...
            return dict(sorted(counts.items()))
        return {c: counts[c] for c in self.plan.components}

    def unchecked(self) -> int:
        """Writes overwritten before any checkpoint held them: when two checkpoints are a ring
        or more apart. Every checkpoint is still checked whole; such a write just cannot be
        seen on its own (lost or not, no checkpoint can show it)."""
        every = sorted([*self.cuts, *self.bad_cuts], key=lambda c: c.id)
        ring = self.plan.ring
        return sum(max(0, b.n - a.n - ring) for a, b in itertools.pairwise(every))

    def summary(self) -> str:
        distinct = len({c.n for c in self.cuts})
        gaps = [b.n - a.n for a, b in itertools.pairwise(self.cuts)]
        return (
            f"crash injection: seed {self.plan.seed}, {len(self.injections)} injections "
            f"{self.by_component()} ({self.in_flight()} with copies in flight), "
            f"{self.acked} writes "
            f"acknowledged ({self.no_reply} "
            f"without reply, written again), {len(self.cuts)} checkpoints verified "
            f"({distinct} distinct cuts, largest step {max(gaps, default=0)} writes, "
            f"{self.unchecked()} writes overwritten before any checkpoint), "
            f"{len(self.bad_cuts)} checkpoints NOT a prefix of the writes, "
            f"workload {self.workload_seconds:.0f} s, settle {self.settle_seconds:.1f} s, "
            f"verification {self.verify_seconds:.1f} s; tracebacks in logs: {self.tracebacks}; "
            + (
                f"{self.reported} checkpoints the manager reported taken (each checked kept); "
                f"{self.partial_barriers} barriers not on every host, {self.holds_timed_out} "
                f"holds the taps let go on their own; client errors {self.client_errors}; "
                if self.plan.managed
                else ""
            )
            + f"run directory {self.root}"
        )

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1))


class CrashFailure(AssertionError):
    """A lost or reordered write, a hang or a component that would not come back."""


class NotAPrefix(CrashFailure):
    def __init__(self, message: str, newest: int) -> None:
        super().__init__(message)
        self.newest = newest  # the newest write the checkpoint holds


# Seconds a restarted tap or source VDSA may take to have the tap connected to the VDSA again.
LINK_GRACE = 8.0


class WriterLog:
    """Follows the writer's log: how many writes are acknowledged so far."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        self.acked = 0
        self.no_reply = 0
        self.stopped: int | None = None

    def poll(self) -> int:
        if not self.path.exists():
            return self.acked
        with self.path.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            word, _, rest = line.partition(b" ")
            if word == b"ack":
                stamp = int(rest)
                if stamp != self.acked:  # the writer acknowledges strictly in order
                    raise CrashFailure(f"writer log: ack {stamp} after {self.acked - 1}")
                self.acked += 1
            elif word == b"no-reply":
                self.no_reply += 1
            elif word == b"stopped":
                self.stopped = int(rest)
        return self.acked


def place(slot: int, disks: int, slots: int) -> tuple[int, int]:
    """(disk index, byte offset) of a ring slot. Slots alternate between the disks; on a disk,
    consecutive slots are a 64 KiB bitmap block apart (``SPREAD`` blocks), as a VM's scattered
    writes would be: N writes made while the VDSA is down dirty N bitmap blocks, so the resync
    that follows is big enough to span several batches and a kill can land inside it."""
    groups = slots // SPREAD
    j = slot // disks
    return slot % disks, ((j % groups) * SPREAD + j // groups) * BLOCK


def cut_of(contents: Sequence[bytes], seed: int, slots: int) -> int:
    """The n such that ``contents`` (one bytes per disk, ``slots`` blocks each) are exactly what
    the first n stamps leave on the ring; CrashFailure describing the difference if there is
    none."""
    disks = len(contents)
    ring = slots * disks
    places = [place(slot, disks, slots) for slot in range(ring)]
    found: list[int | None] = []  # per slot: its stamp, None for a zero block
    for d, at in places:
        match = _STAMP_RE.match(contents[d], at, at + _STAMP_LEN)
        if match is None or int(match[1], 16) != seed % 2**64:
            found.append(None)
        else:
            found.append(int(match[2]))
    n = max((s for s in found if s is not None), default=-1) + 1

    def wanted(slot: int) -> int | None:
        """The newest of the first n stamps that lands on this slot."""
        return slot + (n - 1 - slot) // ring * ring if slot < n else None

    blocks = [[_ZERO_BLOCK] * slots for _ in range(disks)]
    for slot, (d, at) in enumerate(places):
        stamp = wanted(slot)
        if stamp is not None:
            blocks[d][at // BLOCK] = stamp_block(seed, stamp)
    expected = [b"".join(disk) for disk in blocks]
    if list(contents) == expected:
        return n
    # Say which writes are missing (or which blocks hold something else) below the newest.
    wrong = [
        (wanted(slot), found[slot])
        for slot, (d, at) in enumerate(places)
        if contents[d][at : at + BLOCK] != expected[d][at : at + BLOCK]
    ]
    wrong.sort(key=lambda w: -1 if w[0] is None else w[0])
    described = ", ".join(
        f"write {w} missing (block holds {'zeroes or other data' if f is None else f'write {f}'})"
        if w is not None
        else f"slot holds {'unexpected data' if f is None else f'write {f}'} instead of zeroes"
        for w, f in wrong[:12]
    )
    raise NotAPrefix(
        f"not a prefix of the write order: the newest write present is {n - 1}, but "
        f"{len(wrong)} blocks differ from the first {n} writes: {described}",
        n - 1,
    )


def judge_cut(contents: Sequence[bytes], seed: int, slots: int, previous: int) -> tuple[int, str]:
    """How many writes a checkpoint's disk contents hold, and what is wrong with it ("" if
    nothing): not a prefix of the write order, or fewer writes than the checkpoint before."""
    try:
        n = cut_of(contents, seed, slots)
    except NotAPrefix as exc:
        return exc.newest + 1, f"{exc}; the checkpoint before it held the first {previous} writes"
    if n < previous:
        return n, f"holds the first {n} writes, the one before {previous}"
    return n, ""


def verify_journal(
    journal: Journal, disk_ids: Sequence[int], seed: int, slots: int
) -> tuple[list[Cut], list[BadCut]]:
    """Every checkpoint the journal kept, read with read_at: a prefix of the writes, never
    smaller than the one before. Goes on past a bad one, so that a run reports all of them."""
    cuts: list[Cut] = []
    bad: list[BadCut] = []
    previous = 0
    for checkpoint in journal.checkpoints():
        contents = [journal.read_at(checkpoint.id, d, 0, slots * BLOCK) for d in disk_ids]
        n, problem = judge_cut(contents, seed, slots, previous)
        if problem:
            bad.append(BadCut(checkpoint.id, checkpoint.seq, checkpoint.tag, checkpoint.time_ns,
                              n, problem))  # fmt: skip
        else:
            cuts.append(Cut(checkpoint.id, checkpoint.seq, checkpoint.tag, n))
        # The next one is judged against this one even if it is bad: the same fault is not
        # reported again by every checkpoint after it.
        previous = n
    return cuts, bad


def verify_journals(
    journals: Sequence[Journal], disk_ids: Sequence[int], seed: int, slots: int
) -> tuple[list[Cut], list[BadCut], int]:
    """As verify_journal, for a VPG whose disks are in one journal per host (disk i in
    journal i): its checkpoints are the cuts every journal holds (matched by the cut's time),
    each judged on all the disks together. Also returns how many cuts only some journals hold
    (a barrier that did not reach every host: no checkpoint of the VPG)."""
    listed = [{c.time_ns: c for c in journal.checkpoints()} for journal in journals]
    common = sorted(set.intersection(*(set(times) for times in listed)))
    partial = len(set.union(*(set(times) for times in listed))) - len(common)
    cuts: list[Cut] = []
    bad: list[BadCut] = []
    previous = 0
    for time_ns in common:
        contents = [
            journal.read_at(got[time_ns].id, disk, 0, slots * BLOCK)
            for journal, got, disk in zip(journals, listed, disk_ids, strict=True)
        ]
        first = listed[0][time_ns]
        n, problem = judge_cut(contents, seed, slots, previous)
        if problem:
            bad.append(BadCut(first.id, first.seq, first.tag, time_ns, n, problem))
        else:
            cuts.append(Cut(first.id, first.seq, first.tag, n, time_ns))
        previous = n
    return cuts, bad, partial


class CrashRun:
    """Site A: tap and source VDSA; site B: target VDSA; a writer; the injections."""

    def __init__(self, root: Path, plan: CrashPlan, say: Callable[[str], None] = print) -> None:
        if plan.disks not in (1, 2) or plan.ring % (plan.disks * SPREAD):
            raise ValueError(f"one or two disks, of a multiple of {SPREAD} slots each")
        self.root = root
        self.plan = plan
        self.say = say
        self.rng = random.Random(plan.seed)
        ca = CertificateAuthority(root / "pki")
        self.host = Lab(root / "a")
        self.host.root.mkdir(parents=True)
        self.source = Vdsa(root / "a" / "vdsa", "vdsa-a1", ca.issue("vdsa-a1"))
        self.target = Vdsa(root / "b" / "vdsa", "vdsa-b1", ca.issue("vdsa-b1"))
        self.names = [f"crash-disk{d}" for d in range(plan.disks)]
        self.disk_ids = list(range(1, plan.disks + 1))
        size = plan.slots_per_disk * BLOCK
        for name in self.names:
            self.host.add_disk(name, size)
        self.target.replicate_here(
            "vpg1", {i: (name, size) for i, name in zip(self.disk_ids, self.names, strict=True)}
        )
        self.source.protect(
            "vpg1",
            dict(zip(self.names, self.disk_ids, strict=True)),
            [(self.target.address, self.target.name)],
            checkpoint_interval=plan.checkpoint_interval,
            bandwidth_limit=plan.bandwidth_limit,
            compression=plan.compression,
        )
        self.writer_log = WriterLog(root / "writer.log")
        # Since when (time.time()) the tap is due to connect to the source VDSA: see check_link.
        self._link_pending: float | None = None
        self.writer: subprocess.Popen[bytes] | None = None
        self.report = CrashReport(plan, str(root))

    # --- the components ------------------------------------------------------------------

    def start_tap(self) -> Service:
        # The same configuration every time (Lab.start_tap writes it again).
        return self.host.start_tap(vdsa_socket=str(self.source.tap_socket))

    def service(self, component: str) -> Service:
        service = {
            "tap": self.host.tap,
            "source": self.source.service,
            "target": self.target.service,
        }[component]
        assert service is not None
        return service

    def restart(self, component: str) -> None:
        if component == "tap" or (component == "source" and self._link_pending is None):
            self._link_pending = time.time()  # the tap must connect to the VDSA again
        {"tap": self.start_tap, "source": self.source.start, "target": self.target.start}[
            component
        ]()

    def start(self) -> None:
        self.target.start()
        self.source.start()
        self.start_tap()

    def stop(self) -> None:
        if self.writer is not None and self.writer.poll() is None:
            self.writer.kill()
            self.writer.wait(10)
        self.host.stop()
        self.source.stop()
        self.target.stop()

    # --- waiting --------------------------------------------------------------------------

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, KeyError):  # a service still starting
                if predicate():
                    return
            time.sleep(0.05)
        raise CrashFailure(f"hang: {what} did not happen within {timeout:.0f} s\n{self.diagnose()}")

    def clean_and_consistent(self) -> bool:
        status = self.source.status()["sources"]["vpg1"]
        return bool(status["consistent"]) and all(
            self.host.metric("hvds_tap_dirty_bytes", name) == 0 for name in self.names
        )

    def checkpoint_at_target(self, tag: str) -> bool:
        listing = self.target.control(op="checkpoints", vpg="vpg1")["checkpoints"]
        return any(c["tag"] == tag for c in listing)

    def tagged_checkpoint(self, tag: str, timeout: float) -> None:
        self.wait_for(self.clean_and_consistent, timeout, f"the tap clean and the VPG consistent "
                      f"before checkpoint {tag!r}")  # fmt: skip
        answer = self.source.control(op="checkpoint", vpg="vpg1", tag=tag, description=tag)
        if not answer.get("taken"):
            raise CrashFailure(f"checkpoint {tag!r} refused: {answer}\n{self.diagnose()}")
        self.wait_for(lambda: self.checkpoint_at_target(tag), timeout, f"checkpoint {tag!r} at B")

    def diagnose(self) -> str:
        """The state of everything, for a failure message."""
        lines = [f"seed {self.plan.seed}, run directory {self.root}"]
        for name, vdsa in (("source", self.source), ("target", self.target)):
            try:
                lines.append(f"{name} status: {json.dumps(vdsa.status())}")
            except (OSError, AssertionError) as exc:
                lines.append(f"{name} status: unavailable ({exc})")
        for name in self.names:
            try:
                lines.append(f"{name} dirty: {self.host.metric('hvds_tap_dirty_bytes', name)}")
            except (OSError, KeyError) as exc:
                lines.append(f"{name} dirty: unavailable ({exc})")
        lines.append(f"writer: {self.writer_log.poll()} acknowledged")
        for path in self.logs().values():
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-15:]
                lines.append(f"--- {path} (last lines)\n" + "\n".join(tail))
        return "\n".join(lines)

    def logs(self) -> dict[str, Path]:
        return {
            "tap": self.host.root / "tap.log",
            "source": self.source.root / "vdsa.log",
            "target": self.target.root / "vdsa.log",
            "writer": self.root / "writer.out",
        }

    # --- the run --------------------------------------------------------------------------

    def uris(self) -> list[str]:
        """The disks the writer writes, in the order its writes alternate over them."""
        return [self.host.uri(name) for name in self.names]

    def choose_victim(self) -> str:
        return self.rng.choice(self.plan.components)

    def start_writer(self) -> None:
        script = self.root / "writer.py"
        script.write_text(WRITER)
        config = self.root / "writer.json"
        config.write_text(json.dumps({
            "uris": self.uris(),
            "slots": self.plan.slots_per_disk,
            "seed": self.plan.seed,
            "rate": self.plan.rate,
            "log": str(self.writer_log.path),
        }))  # fmt: skip
        out = (self.root / "writer.out").open("ab")
        self.writer = subprocess.Popen(
            [SYSTEM_PYTHON, str(script), str(config)], stdout=out, stderr=out
        )

    def writes_flowing(self, since: int, count: int = 10) -> bool:
        if self.writer is not None and self.writer.poll() is not None:
            raise CrashFailure(f"the writer exited ({self.writer.returncode})\n{self.diagnose()}")
        return self.writer_log.poll() >= since + count

    def dirty_bytes(self) -> int:
        try:
            return int(sum(self.host.metric("hvds_tap_dirty_bytes", name) for name in self.names))
        except (OSError, KeyError):
            return -1  # the tap is still starting

    def watch(self, seconds: float) -> None:
        """Let the writes run for ``seconds``, checking meanwhile that the tap's link is not
        stuck down."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.check_link()
            time.sleep(min(left, 0.1))

    def check_link(self, grace: float = LINK_GRACE) -> None:
        """The tap must connect to the source VDSA within ``grace`` seconds of a restart of
        either (its reconnection backoff is at most 2 s): seen in the tap's log, as a connection
        that comes and goes between two polls must count too."""
        if self._link_pending is None:
            return
        connected = last_log_time(self.host.root / "tap.log", "connected to VDSA at")
        if connected is not None and connected >= self._link_pending:
            self._link_pending = None
        elif time.time() - self._link_pending > grace:
            since = time.time() - self._link_pending
            raise CrashFailure(
                f"hang: the tap has not connected to the source VDSA for {since:.1f} s since "
                f"a restart\n{self.diagnose()}"
            )

    def await_link(self) -> None:
        while self._link_pending is not None:
            self.watch(0.1)

    def inject(self, number: int, started: float) -> Injection:
        plan, rng = self.plan, self.rng
        self.watch(rng.uniform(*plan.run_between))
        self.check_link()
        component = self.choose_victim()
        down = rng.uniform(*plan.down)
        dirty = self.dirty_bytes()
        acked = self.writer_log.poll()  # after the scrape: the count the kill interrupts
        killed = time.monotonic()
        self.service(component).kill()
        time.sleep(down)
        begun = time.monotonic()
        try:
            self.restart(component)
        except RuntimeError as exc:  # it would not start again
            raise CrashFailure(f"{component} after kill -9 #{number}: {exc}") from None
        restarted = time.monotonic()
        at_restart = self.writer_log.poll()
        self.wait_for(
            lambda: self.writes_flowing(at_restart),
            30,
            f"writes after kill -9 #{number} of {component}",
        )
        injection = Injection(
            number, component, round(killed - started, 3), acked, dirty, round(down, 3),
            round(restarted - begun, 3), at_restart - acked, round(time.monotonic() - restarted, 3),
        )  # fmt: skip
        self.say(
            f"#{number}: kill -9 {component} at {injection.at:.1f} s (after write {acked - 1}"
            f", {dirty // 1024} KiB dirty), "
            f"down {down:.2f} s, restart {injection.restart:.2f} s, {injection.while_down} "
            f"writes meanwhile, 10 more {injection.resumed:.2f} s after the restart"
        )
        return injection

    def run(self) -> CrashReport:
        plan, report = self.plan, self.report
        self.say(
            f"crash injection: seed {plan.seed} (HVDS_CRASH_SEED={plan.seed} replays the "
            f"choices and waits), {plan.injections} injections, {plan.disks} disk(s), "
            f"{plan.rate:g} writes/s, in {self.root}"
        )
        started = self.begin()
        for number in range(1, plan.injections + 1):
            report.injections.append(self.inject(number, started))
        self.watch(self.rng.uniform(*plan.run_between))
        return self.finish(started)

    def begin(self) -> float:
        """Start everything, with the writer; returns when writes flow (monotonic time)."""
        self.start()
        # A first cut of the empty disks: the verification starts from n = 0 and sees that no
        # checkpoint was reclaimed.
        self.tagged_checkpoint("start", timeout=60)
        self.start_writer()
        started = time.monotonic()
        self.wait_for(lambda: self.writes_flowing(0), 30, "the first writes")
        return started

    def finish(self, started: float) -> CrashReport:
        """Stop the writer, take the end checkpoint, stop everything and verify."""
        report = self.report
        self.await_link()  # a hang here would only show as a timeout
        assert self.writer is not None
        self.writer.send_signal(signal.SIGTERM)
        try:
            self.writer.wait(30)
        except subprocess.TimeoutExpired:
            raise CrashFailure(f"hang: the writer did not stop\n{self.diagnose()}") from None
        stopped = time.monotonic()
        report.workload_seconds = stopped - started
        report.acked = self.writer_log.poll()
        report.no_reply = self.writer_log.no_reply
        if self.writer_log.stopped != report.acked:
            raise CrashFailure(f"writer stopped at {self.writer_log.stopped}, acked {report.acked}")
        self.tagged_checkpoint("end", timeout=120)
        report.settle_seconds = time.monotonic() - stopped
        self.stop()
        report.tracebacks = {
            name: path.read_text(errors="replace").count("Traceback")
            for name, path in self.logs().items()
            if path.exists()
        }
        self.verify()
        report.save(self.root / "crash-report.json")
        self.say(report.summary())
        self.raise_failures()
        return report

    def raise_failures(self) -> None:
        """CrashFailure listing what the verification found, if anything."""
        report = self.report
        found = [
            *report.failures,
            *(f"checkpoint {b.id} (seq {b.seq}, tag {b.tag!r}): {b.problem}"
              for b in report.bad_cuts[:5]),
        ]  # fmt: skip
        if found:
            raise CrashFailure(
                f"{len(report.failures)} failures, {len(report.bad_cuts)} checkpoints not a "
                f"prefix of the writes; seed {self.plan.seed}, run directory {self.root}\n"
                + "\n".join(found)
            )

    def verify(self) -> None:
        """Fills the report: cuts, bad cuts and other failures."""
        plan, report = self.plan, self.report
        began = time.monotonic()
        for name in self.names:
            source, mirror = self.host.exports[name], self.target.mirror(name)
            if sha256_file(mirror) != sha256_file(source):
                report.failures.append(f"the mirror of {name} differs from the source disk")
        config = TargetVpg.model_validate(self.target.target_vpgs[0])
        with open_journal(config, self.target.root / "journal") as journal:
            report.cuts, report.bad_cuts = verify_journal(
                journal, self.disk_ids, plan.seed, plan.slots_per_disk
            )
        # Nothing reclaimed: the journal still holds its first checkpoint, and the tagged
        # "start" (the timer may have cut some before it) holds no write yet.
        every = sorted([*report.cuts, *report.bad_cuts], key=lambda c: c.id)
        start = next((c for c in every if c.tag == "start"), None)
        if not every or every[0].id != 1 or start is None or start.n != 0:
            report.failures.append(f"first checkpoint kept {every[:1]}, 'start' {start}: "
                                   "want checkpoint 1, and 'start' with no write")  # fmt: skip
        # Every acknowledged write is in "end", and in the ones the timer may cut after it
        # until the tap stops (a bad one is reported as such already).
        end = next((c for c in every if c.tag == "end"), None)
        if end is None:
            report.failures.append("no checkpoint 'end' at the target")
        else:
            short = [c for c in every[every.index(end) :] if c.n != report.acked]
            if short:
                report.failures.append(
                    f"checkpoint 'end' and the ones after it should hold all {report.acked} "
                    f"acknowledged writes: {short[:3]}"
                )
        report.verify_seconds = time.monotonic() - began


class ManagedCrashRun(CrashRun):
    """Site A: its manager (SQLite, kept across its kills) and hosts a1 and a2, each a tap that
    serves one disk and a source VDSA; site B: its manager and host b1, the target VDSA. One
    VPG over both disks, made through manager A's API, so that its checkpoints are the
    manager's barrier (decision 0009) every ``checkpoint_interval``; meanwhile a client asks
    manager A for tagged checkpoints (POST /vpgs/erp/checkpoints) and notes those it reports
    taken. The writer alternates over the two hosts' disks: the write order spans hosts, and
    only a barrier that held both can cut it consistently.

    Victims: the manager (SIGKILL, restarted on the same database), a tap or a source VDSA of
    either host, the target VDSA. Verified as in CrashRun, for every checkpoint both hosts'
    journals hold (a barrier one host missed is not a checkpoint: not listed, not judged,
    counted), and every checkpoint manager A reported taken must be among them."""

    HOSTS = ("a1", "a2")
    VPG = "erp"

    def __init__(self, root: Path, plan: CrashPlan, say: Callable[[str], None] = print) -> None:
        if plan.disks != 2 or plan.ring % (plan.disks * SPREAD):
            raise ValueError(f"the managed run has two disks of a multiple of {SPREAD} slots")
        self.root = root
        self.plan = plan
        self.say = say
        self.rng = random.Random(plan.seed)
        ca = CertificateAuthority(root / "pki")
        self.ca = ca
        self.manager_a = Manager(root / "manager-a", "site-a", ca.issue("manager-a", ["127.0.0.1"]))
        self.manager_b = Manager(root / "manager-b", "site-b", ca.issue("manager-b", ["127.0.0.1"]))
        for manager in (self.manager_a, self.manager_b):
            # The watch drives the barrier: it must look as often as checkpoints are due.
            manager.write_config(watch_interval=plan.checkpoint_interval)
        self.admin_a = self.manager_a.token("admin", "admin")
        self.admin_b = self.manager_b.token("admin", "admin")
        self.names = [f"crash-disk{d}" for d in range(2)]
        size = plan.slots_per_disk * BLOCK
        self.taps: dict[str, Lab] = {}
        self.sources: dict[str, Vdsa] = {}
        for host, name in zip(self.HOSTS, self.names, strict=True):
            lab = Lab(root / host)
            lab.root.mkdir(parents=True)
            lab.add_disk(name, size)
            lab.write_config()
            self.taps[host] = lab
            vdsa = self._vdsa(root / host / "vdsa", host, self.manager_a)
            vdsa.settings["tap_config"] = str(lab.config_path)
            self.sources[host] = vdsa
        self.target = self._vdsa(root / "b1" / "vdsa", "b1", self.manager_b)
        self.target.target_role = True
        datastore = root / "b1" / "ds1"
        datastore.mkdir(parents=True)
        self.target.sections["datastore"] = [{"name": "ds1", "path": str(datastore)}]
        self.writer_log = WriterLog(root / "writer.log")
        self._pending: dict[str, float] = {}  # host: since when its tap is due to connect
        self.writer: subprocess.Popen[bytes] | None = None
        self.report = CrashReport(plan, str(root))
        # The checkpoints manager A answered as taken (its API's answers), and what else the
        # client got.
        self.reported: list[dict[str, object]] = []
        self.client_errors: Counter[str] = Counter()
        self._client: threading.Thread | None = None
        self._client_stop = threading.Event()

    def _vdsa(self, root: Path, name: str, manager: Manager) -> Vdsa:
        return managed_vdsa(root, name, self.ca, manager)

    # --- the components ------------------------------------------------------------------

    def uris(self) -> list[str]:
        return [self.taps[h].uri(n) for h, n in zip(self.HOSTS, self.names, strict=True)]

    def choose_victim(self) -> str:
        component = self.rng.choice(self.plan.components)
        if component in ("tap", "source"):
            return f"{component}-{self.rng.choice(self.HOSTS)}"
        return component

    def service(self, component: str) -> Service:
        kind, _, host = component.partition("-")
        service = {
            "manager": lambda: self.manager_a.service,
            "tap": lambda: self.taps[host].tap,
            "source": lambda: self.sources[host].service,
            "target": lambda: self.target.service,
        }[kind]()
        assert service is not None
        return service

    def start_tap(self, host: str) -> Service:  # type: ignore[override]
        return self.taps[host].start_tap(vdsa_socket=str(self.sources[host].tap_socket))

    def restart(self, component: str) -> None:
        kind, _, host = component.partition("-")
        if kind in ("tap", "source"):
            self._pending.setdefault(host, time.time())  # its tap must connect again
        if kind == "manager":
            self.manager_a.start()
        elif kind == "tap":
            self.start_tap(host)
        elif kind == "source":
            self.sources[host].start()
        else:
            self.target.start()

    def start(self) -> None:
        self.manager_a.start()
        self.manager_b.start()
        self.target.start()
        for host in self.HOSTS:
            self.sources[host].start()
            self.start_tap(host)
        pairing = self.manager_b.ok("POST", "/pairing-tokens", self.admin_b)
        self.manager_a.ok("POST", "/peers", self.admin_a, {
            "url": self.manager_b.url, "pairing_token": pairing["token"],
            "ca_pem": self.ca.path.read_text(),
        })  # fmt: skip
        self.wait_for(lambda: {h["name"] for h in self.hosts()} >= set(self.HOSTS), 30,
                      "hosts a1 and a2 registered")  # fmt: skip
        plan = self.plan
        self.manager_a.ok("POST", "/vpgs", self.admin_a, {
            "name": self.VPG,
            "vms": [{"name": f"vm{n}", "host": h, "disks": [{"export": d}]}
                    for n, (h, d) in enumerate(zip(self.HOSTS, self.names, strict=True))],
            "targets": [{"site": "site-b", "host": "b1", "datastore": "ds1"}],
            "checkpoint_interval_seconds": plan.checkpoint_interval,
            "bandwidth_limit_bytes": plan.bandwidth_limit,
            "compression": plan.compression,
            "journal_history_hours": 24,
        })  # fmt: skip
        self.wait_for(lambda: self.vpg_state() == "protected", 120, f"VPG {self.VPG} protected")

    def hosts(self) -> list[dict[str, object]]:
        found: list[dict[str, object]] = self.manager_a.ok("GET", "/hosts", self.admin_a)
        return found

    def vpg_state(self) -> str:
        return str(self.manager_a.ok("GET", f"/vpgs/{self.VPG}", self.admin_a)["state"])

    def stop(self) -> None:
        self._client_stop.set()
        if self._client is not None:
            self._client.join(90)
        if self.writer is not None and self.writer.poll() is None:
            self.writer.kill()
            self.writer.wait(10)
        for host in self.HOSTS:
            self.taps[host].stop()
            self.sources[host].stop()
        self.target.stop()
        self.manager_a.stop()
        self.manager_b.stop()

    # --- waiting --------------------------------------------------------------------------

    def clean_and_consistent(self) -> bool:
        return all(
            self.sources[h].status()["sources"][self.VPG]["consistent"]
            and self.taps[h].metric("hvds_tap_dirty_bytes", n) == 0
            for h, n in zip(self.HOSTS, self.names, strict=True)
        )

    def checkpoint_at_target(self, tag: str) -> bool:
        listing = self.target.control(op="checkpoints", vpg=self.VPG)["checkpoints"]
        return any(c["tag"] == tag for c in listing)

    def tagged_checkpoint(self, tag: str, timeout: float) -> None:
        """Through manager A's API, as an operator would; tried again while the manager is
        restarting or refuses (a host out of write order after a kill)."""
        self.wait_for(self.clean_and_consistent, timeout, f"the taps clean and the VPG "
                      f"consistent before checkpoint {tag!r}")  # fmt: skip
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                answer = self.manager_a.api(
                    "POST",
                    f"/vpgs/{self.VPG}/checkpoints",
                    self.admin_a,
                    {"tag": tag, "description": tag},
                )
            except OSError as exc:
                last = str(exc)
            else:
                if answer.status_code < 300:
                    self.reported.append(answer.json())
                    break
                last = f"{answer.status_code} {answer.text[:300]}"
            time.sleep(0.2)
        else:
            raise CrashFailure(f"checkpoint {tag!r} refused: {last}\n{self.diagnose()}")
        self.wait_for(lambda: self.checkpoint_at_target(tag), timeout, f"checkpoint {tag!r} at B")

    def ask_checkpoints(self) -> None:
        """The client: a tagged checkpoint through manager A every 0.5-1.5 s, whatever the
        manager's state; what it answers taken is noted."""
        rng = random.Random(self.plan.seed + 1)
        number = 0
        while not self._client_stop.wait(rng.uniform(0.5, 1.5)):
            tag = f"client-{number}"
            number += 1
            try:
                answer = self.manager_a.api("POST", f"/vpgs/{self.VPG}/checkpoints",
                                            self.admin_a, {"tag": tag})  # fmt: skip
            except OSError:
                self.client_errors["manager unreachable"] += 1
                continue
            if answer.status_code < 300:
                self.reported.append(answer.json())
            else:
                self.client_errors[str(answer.status_code)] += 1

    def diagnose(self) -> str:
        lines = [f"seed {self.plan.seed}, run directory {self.root}"]
        for name, vdsa in [*self.sources.items(), ("b1", self.target)]:
            try:
                lines.append(f"{name} status: {json.dumps(vdsa.status())}")
            except (OSError, AssertionError) as exc:
                lines.append(f"{name} status: unavailable ({exc})")
        for host, name in zip(self.HOSTS, self.names, strict=True):
            try:
                lines.append(
                    f"{host} dirty: {self.taps[host].metric('hvds_tap_dirty_bytes', name)}"
                )
            except (OSError, KeyError) as exc:
                lines.append(f"{host} dirty: unavailable ({exc})")
        lines.append(f"writer: {self.writer_log.poll()} acknowledged")
        for path in self.logs().values():
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-15:]
                lines.append(f"--- {path} (last lines)\n" + "\n".join(tail))
        return "\n".join(lines)

    def logs(self) -> dict[str, Path]:
        found = {"manager-a": self.manager_a.root / "manager.log",
                 "manager-b": self.manager_b.root / "manager.log"}  # fmt: skip
        for host in self.HOSTS:
            found[f"tap-{host}"] = self.taps[host].root / "tap.log"
            found[f"source-{host}"] = self.sources[host].root / "vdsa.log"
        found["target"] = self.target.root / "vdsa.log"
        found["writer"] = self.root / "writer.out"
        return found

    # --- the run --------------------------------------------------------------------------

    def dirty_bytes(self) -> int:
        try:
            return int(sum(self.taps[h].metric("hvds_tap_dirty_bytes", n)
                           for h, n in zip(self.HOSTS, self.names, strict=True)))  # fmt: skip
        except (OSError, KeyError):
            return -1

    def check_link(self, grace: float = LINK_GRACE) -> None:
        for host, since in list(self._pending.items()):
            connected = last_log_time(self.taps[host].root / "tap.log", "connected to VDSA at")
            if connected is not None and connected >= since:
                del self._pending[host]
            elif time.time() - since > grace:
                raise CrashFailure(
                    f"hang: the tap of {host} has not connected to its VDSA for "
                    f"{time.time() - since:.1f} s since a restart\n{self.diagnose()}"
                )

    def await_link(self) -> None:
        while self._pending:
            self.watch(0.1)

    def begin(self) -> float:
        started = super().begin()
        self._client = threading.Thread(target=self.ask_checkpoints, daemon=True)
        self._client.start()
        return started

    def finish(self, started: float) -> CrashReport:
        self._client_stop.set()
        if self._client is not None:
            self._client.join(90)  # an answer may take 30 s (the checkpoint's arrival)
        return super().finish(started)

    def verify(self) -> None:
        plan, report = self.plan, self.report
        began = time.monotonic()
        managed = json.loads((self.target.root / "managed.json").read_text())
        config = TargetVpg.model_validate(managed["target_vpg"][0])
        disks = {d.source: d for d in config.disks}
        for host, name in zip(self.HOSTS, self.names, strict=True):
            if sha256_file(disks[host].mirror) != sha256_file(self.taps[host].exports[name]):
                report.failures.append(f"the mirror of {name} differs from the source disk")
        journals = [open_journal(config, self.target.root / "journal", h) for h in self.HOSTS]
        try:
            report.cuts, report.bad_cuts, partial = verify_journals(
                journals, [disks[h].disk for h in self.HOSTS], plan.seed, plan.slots_per_disk
            )
        finally:
            for journal in journals:
                journal.close()
        report.partial_barriers = partial
        every = sorted([*report.cuts, *report.bad_cuts], key=lambda c: c.time_ns)
        start = next((c for c in every if c.tag == "start"), None)
        if start is None or start.n != 0:
            report.failures.append(f"'start' {start}: want it, with no write")
        end = next((c for c in every if c.tag == "end"), None)
        if end is None:
            report.failures.append("no checkpoint 'end' at the target")
        else:
            short = [c for c in every[every.index(end) :] if c.n != report.acked]
            if short:
                report.failures.append(
                    f"checkpoint 'end' and the ones after it should hold all {report.acked} "
                    f"acknowledged writes: {short[:3]}"
                )
        # Every checkpoint the manager said was taken is there, and whole (a bad one is
        # reported as such already).
        kept = {c.time_ns: c for c in every}
        for taken in self.reported:
            if int(str(taken["id"])) not in kept:
                report.failures.append(f"checkpoint {taken} was reported taken by manager A "
                                       "and is not at the target")  # fmt: skip
        report.reported = len(self.reported)
        report.client_errors = dict(self.client_errors)
        # Barriers a kill interrupted between hold and release: the taps let go on their own.
        report.holds_timed_out = sum(
            (self.taps[h].root / "tap.log").read_text(errors="replace").count("not released in")
            for h in self.HOSTS
        )
        report.verify_seconds = time.monotonic() - began


def last_log_time(path: Path, text: str) -> float | None:
    """When the last line of an hvds log that contains ``text`` was written, or None."""
    data = path.read_text(errors="replace") if path.exists() else ""
    at = data.rfind(text)
    if at < 0:
        return None
    line = data[data.rfind("\n", 0, at) + 1 :]
    return datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def run_crash_injection(
    root: Path, plan: CrashPlan, say: Callable[[str], None] = print
) -> CrashReport:
    run = (ManagedCrashRun if plan.managed else CrashRun)(root, plan, say)
    try:
        return run.run()
    except CrashFailure:
        run.report.save(root / "crash-report.json")
        raise
    finally:
        run.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status 0: all verified; 1: a failure."""
    managed = "--managed" in (sys.argv[1:] if argv is None else argv)
    env = CrashPlan.from_env(managed=managed or None)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--managed", action="store_true",
                        help="the site manager drives the checkpoints of a VPG over two hosts, "
                        "and is a victim too")  # fmt: skip
    parser.add_argument("--injections", type=int, default=env.injections)
    parser.add_argument("--seed", type=int, default=env.seed)
    parser.add_argument("--disks", type=int, choices=(1, 2), default=env.disks)
    parser.add_argument("--rate", type=float, default=env.rate, help="writes per second")
    parser.add_argument("--bandwidth", type=int, default=env.bandwidth_limit, help="bytes/s")
    parser.add_argument("--dir", type=Path, help="run directory (default: a new temporary one)")
    args = parser.parse_args(argv)
    plan = dataclasses.replace(
        env, injections=args.injections, seed=args.seed, disks=args.disks, rate=args.rate,
        bandwidth_limit=args.bandwidth,
    )  # fmt: skip
    root = args.dir or Path(tempfile.mkdtemp(prefix="hvds-crash-"))
    try:
        run_crash_injection(root, plan)
    except CrashFailure as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
