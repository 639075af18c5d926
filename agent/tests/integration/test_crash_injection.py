"""kill -9 of a random component (tap, source VDSA, target VDSA) under a stamped write load, many
times: every checkpoint at the target is a prefix of the write order, none is lost.

The default run makes 10 injections (about 25 s). The full run, one command from agent/:

    HVDS_CRASH_INJECTIONS=100 ../.venv/bin/pytest tests/integration/test_crash_injection.py -s

HVDS_CRASH_SEED replays a run's choices and waits (printed at the start and on failure). The
two product bugs the harness found (fixed in a6fe31a) have a deterministic test each here. See
tests/crash.py and docs/reliability.md.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from crash import (
    CrashPlan,
    CrashReport,
    CrashRun,
    cut_of,
    place,
    run_crash_injection,
    stamp_block,
    verify_journal,
)
from harness import Lab

from hvds.journal import DiskSpec, Journal, JournalWrite

PLAN = CrashPlan.from_env(injections=10, managed=False)
MANAGED = CrashPlan.from_env(injections=8, managed=True)


# An injection takes about 1.7 s, the verification some 30 ms per checkpoint; the suite's 300 s
# timeout is for the default count only.
@pytest.mark.slow
@pytest.mark.timeout(120 + 10 * PLAN.injections)
def test_kill_9_at_random_loses_and_reorders_no_write(tmp_path: Path) -> None:
    report = run_crash_injection(tmp_path, PLAN)
    assert len(report.injections) == PLAN.injections
    assert report.acked > 0 and len(report.cuts) > PLAN.injections


# The managed run's injections cost more (a restarted manager takes 2-3 s to answer).
@pytest.mark.slow
@pytest.mark.timeout(180 + 15 * MANAGED.injections)
def test_kill_9_of_the_manager_driving_the_barrier_loses_no_checkpoint(tmp_path: Path) -> None:
    """The manager among the victims while its barrier cuts a VPG over two hosts: every
    checkpoint both hosts' journals hold is a prefix of the write order across them, and
    every checkpoint the manager answered as taken is kept after its restarts."""
    report = run_crash_injection(tmp_path, MANAGED)
    assert len(report.injections) == MANAGED.injections
    assert report.acked > 0 and len(report.cuts) > MANAGED.injections
    assert report.reported > 2  # start, end, and the client's


@pytest.mark.slow
def test_a_restarted_source_cuts_no_checkpoint_over_a_partial_resync(tmp_path: Path) -> None:
    """A sequence the random runs found, made deterministic: the source VDSA is killed while the
    target has received part of a resync, and its tap (paused here; its reconnection backoff of
    up to 2 s does the same) is not back when the restarted source's timer fires. The source
    used to start with its disks in write order and cut a checkpoint over the half resync."""
    run = CrashRun(tmp_path, CrashPlan(injections=0, seed=20261125))
    try:
        started = run.begin()
        time.sleep(1)
        assert run.source.service is not None
        run.source.service.kill()
        time.sleep(1.5)  # 150 writes go to the tap's bitmap: a resync of about 8 MiB
        run.restart("source")
        run.await_link()
        before = run.target.status()["targets"]["vpg1"]

        def resync_partly_at_target() -> bool:
            now = run.target.status()["targets"]["vpg1"]
            return (
                now["last_seq"] > before["last_seq"] + 2
                and now["latest_checkpoint"] == before["latest_checkpoint"]
            )

        run.wait_for(resync_partly_at_target, 10, "part of the resync at the target")
        assert run.host.tap is not None
        run.host.tap.pause()
        run.source.service.kill()
        run.restart("source")
        # A correct source cuts nothing until its tap is back: wait a little, not for ever.
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            if (
                run.target.status()["targets"]["vpg1"]["latest_checkpoint"]["id"]
                > (before["latest_checkpoint"]["id"])
            ):
                break
            time.sleep(0.05)
        run.host.tap.resume()
        time.sleep(1)
        run.finish(started)
    finally:
        run.stop()


def test_the_tap_reconnects_after_a_link_lost_at_once(lab: Lab) -> None:
    """What the random runs hit when the tap reconnects to a source VDSA as it is being
    killed, made deterministic: a VDSA that accepts the tap's connection and closes it. The
    connection was lost before the tap's connect loop resumed, which then waited for ever."""
    lab.add_disk("disk0", 4 * 1024 * 1024)
    lab.start_tap()
    with socket.socket(socket.AF_UNIX) as dying:
        dying.bind(str(lab.vdsa_socket))
        dying.listen()
        dying.settimeout(10)
        dying.accept()[0].close()
    lab.vdsa_socket.unlink()
    lab.start_sink(discard=True)  # the VDSA is back
    lab.wait_for(lambda: lab.metric("hvds_tap_vdsa_link_up") == 1, timeout=6,
                 what="the tap to reconnect (its backoff is at most 2 s)")  # fmt: skip


def test_cut_of_judges_a_ring_of_stamps() -> None:
    """The judge itself: a prefix passes, a hole or a stamp out of order is named."""
    seed, slots = 7, 32  # two disks of 32 blocks: a ring of 64 slots

    def disks(stamps: dict[int, int], torn: int | None = None) -> list[bytes]:
        contents = [bytearray(slots * 4096) for _ in range(2)]
        for stamp in stamps.values():
            d, at = place(stamp % 64, 2, slots)
            block = stamp_block(seed, stamp)
            if stamp == torn:
                block = block[:100] + b"x" + block[101:]
            contents[d][at : at + 4096] = block
        return [bytes(c) for c in contents]

    def first(n: int) -> dict[int, int]:
        return {i % 64: i for i in range(n)}

    assert cut_of(disks({}), seed, slots) == 0
    assert cut_of(disks(first(3)), seed, slots) == 3
    assert cut_of(disks(first(150)), seed, slots) == 150  # wrapped round twice
    with pytest.raises(AssertionError, match="write 1 missing"):
        cut_of(disks({0: 0, 2: 2}), seed, slots)
    with pytest.raises(AssertionError, match="write 0 missing"):
        cut_of(disks({1: 1}), seed, slots)
    with pytest.raises(AssertionError, match="write 73 missing"):
        cut_of(disks({**first(80), 9: 9}), seed, slots)  # 73 overwrote 9 later: 9 came back
    with pytest.raises(AssertionError, match="write 1 missing"):
        cut_of(disks(first(5), torn=1), seed, slots)
    other_run = disks(first(5))
    with pytest.raises(AssertionError, match="slot holds unexpected data"):
        cut_of(other_run, seed + 1, slots)
    # Consecutive slots of a disk are a 64 KiB bitmap block apart.
    assert [place(s, 2, slots) for s in (0, 1, 2, 4)] == [(0, 0), (1, 0), (0, 65536), (0, 4096)]


def test_verify_journal_judges_every_checkpoint_of_a_journal(tmp_path: Path) -> None:
    """The verification on a journal written by hand: a hole in the middle checkpoint is found,
    the ones around it pass, and a write lost but overwritten before any checkpoint is counted."""
    seed, slots = 11, 32
    disks = [DiskSpec(d, f"disk{d}", slots * 4096, tmp_path / f"disk{d}.raw") for d in (1, 2)]
    seq = 0
    with Journal(tmp_path / "journal", disks, block_size=4096) as journal:

        def write(stamps: list[int]) -> None:
            nonlocal seq
            entries = []
            for stamp in stamps:
                seq += 1
                d, at = place(stamp % 64, 2, slots)
                entries.append(JournalWrite(seq, d + 1, at, stamp_block(seed, stamp)))
            journal.append(entries)
            journal.checkpoint()

        write(list(range(10)))
        write([10, 11, 12, 13, 14, 16])  # 15 comes late: this cut is not a prefix
        write([15, *range(17, 81)])
        write([*range(81, 100), *range(101, 170)])  # 100 is lost, 164 overwrites its slot
        cuts, bad = verify_journal(journal, [1, 2], seed, slots)
    assert [c.n for c in cuts] == [10, 81, 170]
    assert [b.id for b in bad] == [2]
    assert "write 15 missing" in bad[0].problem
    report = CrashReport(CrashPlan(ring=64), "", cuts=cuts, bad_cuts=bad)
    assert report.unchecked() == 170 - 81 - 64
