"""How long a point-in-time view takes to open and to answer, over a 10 GiB disk whose journal
holds 1 GiB of history (issue 4's aim: ready in <= 5 s, without copying the disk).

It builds a real journal (hvds.journal.Journal, the target VDSA's) in a temporary directory:
a sparse 10 GiB mirror, then 1 GiB of 1 MiB writes at random places, a checkpoint every 64 MiB
(16 checkpoints). It then opens a CheckpointView (hvds.recovery.view, what `view_open` serves)
at the oldest checkpoint (the most undo layers to look through), the newest, and one in the
middle, and times: the open, the first 1 MiB read, and 256 random 4 KiB reads. The baseline,
side by side, is the same reads straight from the mirror file (no journal).

    .venv/bin/python bench/view_bench.py [--disk-gib 10] [--journal-gib 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

from hvds.journal import DiskSpec, Journal, JournalWrite
from hvds.nbd.server import ExportInfo
from hvds.recovery.view import CheckpointView

GiB, MiB = 1024**3, 1024**2
AIM_SECONDS = 5.0


def build(directory: Path, disk_size: int, journal_bytes: int) -> Journal:
    mirror = directory / "disk1.raw"
    with mirror.open("wb") as f:
        f.truncate(disk_size)
    journal = Journal(directory / "journal", [DiskSpec(1, "disk1", disk_size, mirror)],
                      retention_seconds=10**9, size_limit_bytes=8 * journal_bytes,
                      block_size=4096)  # fmt: skip
    rng = random.Random(7)
    seq = 0
    written = 0
    started = time.monotonic()
    while written < journal_bytes:
        batch = []
        for _ in range(16):
            seq += 1
            offset = rng.randrange(disk_size // MiB) * MiB
            batch.append(JournalWrite(seq, 1, offset, rng.randbytes(MiB)))
        journal.append(batch)
        journal.commit()
        written += 16 * MiB
        if written % (64 * MiB) == 0:
            journal.checkpoint(tag=f"c{written // (64 * MiB)}")
    print(f"built: {written / GiB:.2f} GiB of journal, {len(journal.checkpoints())} checkpoints,"
          f" in {time.monotonic() - started:.1f} s", flush=True)  # fmt: skip
    return journal


Read = Callable[[int, int], Awaitable[bytes]]


async def measure(
    label: str, read: Read, size: int, opened_in: float
) -> dict[str, float]:
    rng = random.Random(11)
    started = time.monotonic()
    await read(0, MiB)
    first = time.monotonic() - started
    latencies = []
    for _ in range(256):
        offset = rng.randrange(size // 4096) * 4096
        started = time.monotonic()
        await read(offset, 4096)
        latencies.append(time.monotonic() - started)
    p95 = statistics.quantiles(latencies, n=20)[18]
    print(f"  {label:<22} open {opened_in * 1000:8.1f} ms   first 1 MiB {first * 1000:7.1f} ms"
          f"   4 KiB read p50 {statistics.median(latencies) * 1e6:7.0f} us"
          f"  p95 {p95 * 1e6:7.0f} us")  # fmt: skip
    return {"open": opened_in, "first": first, "p95": p95}


async def pread(fd: int, offset: int, length: int) -> bytes:
    return await asyncio.to_thread(
        os.pread, fd, length, offset
    )  # as the view reads: a thread


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--disk-gib", type=float, default=10)
    parser.add_argument("--journal-gib", type=float, default=1)
    args = parser.parse_args()
    disk_size, journal_bytes = int(args.disk_gib * GiB), int(args.journal_gib * GiB)
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="hvds-view-bench-") as tmp:
        directory = Path(tmp)
        journal = build(directory, disk_size, journal_bytes)
        checkpoints = journal.checkpoints()
        mirror = os.open(directory / "disk1.raw", os.O_RDONLY)
        baseline = asyncio.run(measure("mirror file (baseline)", partial(pread, mirror),
                                       disk_size, 0.0))  # fmt: skip
        worst = 0.0
        lock = threading.Lock()
        for name, checkpoint in (("oldest", checkpoints[0]),
                                 ("middle", checkpoints[len(checkpoints) // 2]),
                                 ("newest", checkpoints[-1])):  # fmt: skip
            started = time.monotonic()
            view = CheckpointView(
                ExportInfo(f"view-{name}", disk_size),
                lambda o, n, c=checkpoint.id: journal.read_at(c, 1, o, n),
                lock, directory,
            )  # fmt: skip
            opened = time.monotonic() - started

            label = f"view at {name} ({checkpoint.tag})"
            result = asyncio.run(measure(label, view.read, disk_size, opened))
            worst = max(worst, result["open"] + result["first"])
            print(f"  {'':<22} 4 KiB p95 ratio to the mirror file: "
                  f"{result['p95'] / baseline['p95']:.1f}x")  # fmt: skip
            view.close()
        os.close(mirror)
        journal.close()
    verdict = "PASS" if worst <= AIM_SECONDS else "MISS"
    print(f"ready (open + first read), worst: {worst:.3f} s; aim <= {AIM_SECONDS:.0f} s: "
          f"{worst / AIM_SECONDS:.3f} of the aim -> {verdict}")  # fmt: skip
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
