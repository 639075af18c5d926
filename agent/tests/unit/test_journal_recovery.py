"""Opening a journal after a crash: torn tails, corruption, interrupted applies and rollbacks."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hvds.journal import (
    Checkpoint,
    DiskSpec,
    Journal,
    JournalCorrupt,
    JournalWrite,
    JournalZero,
)
from hvds.journal.records import HEADER, RecordType, Write, Zero, decode_payload
from hvds.journal.segments import SegmentScan, list_segments

BS = 4096
KiB = 1024


class Crash(Exception):
    """Raised from the journal's test hook: the process 'dies' at that step."""


def disk_specs(root: Path) -> list[DiskSpec]:
    return [
        DiskSpec(0, "system", 64 * KiB, root / "mirror-0.img"),
        DiskSpec(1, "data", 32 * KiB + 512, root / "mirror-1.img"),
    ]


def sha(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


def workload(seed: int) -> Iterator[tuple[str, list[JournalWrite | JournalZero]]]:
    """An endless, deterministic stream of steps: ("append", entries), ("commit", []),
    ("checkpoint", []). The same seed gives the same stream in any process."""
    rng = random.Random(seed)
    sizes = {0: 64 * KiB, 1: 32 * KiB + 512}
    seq = 0
    while True:
        for _ in range(rng.randint(1, 4)):
            entries: list[JournalWrite | JournalZero] = []
            for _ in range(rng.randint(1, 3)):
                seq += 1
                disk = rng.choice([0, 1])
                offset = rng.randrange(sizes[disk] - 1)
                length = rng.randint(1, min(2 * BS, sizes[disk] - offset))
                if rng.random() < 0.15:
                    entries.append(JournalZero(seq, disk, offset, length))
                else:
                    entries.append(JournalWrite(seq, disk, offset, rng.randbytes(length)))
            yield "append", entries
            yield "commit", []
        yield "checkpoint", []


def model_at(seed: int, last_seq: int) -> dict[int, bytearray]:
    """The disks after every entry of ``workload(seed)`` up to ``last_seq``."""
    disks = {0: bytearray(64 * KiB), 1: bytearray(32 * KiB + 512)}
    for _, entries in workload(seed):
        for entry in entries:
            if entry.seq > last_seq:
                return disks
            if isinstance(entry, JournalWrite):
                disks[entry.disk][entry.offset : entry.offset + len(entry.data)] = entry.data
            else:
                disks[entry.disk][entry.offset : entry.offset + entry.length] = bytes(entry.length)
    raise AssertionError("unreachable")


def run(
    journal: Journal, seed: int, checkpoints: int, *, tail_commits: int = 0
) -> list[Checkpoint]:
    """Play the workload into ``journal`` until ``checkpoints`` were taken, then
    ``tail_commits`` more commits without a checkpoint."""
    taken: list[Checkpoint] = []
    commits_after = 0
    for kind, entries in workload(seed):
        if kind == "append":
            journal.append(entries)
        elif kind == "commit":
            journal.commit()
            if len(taken) == checkpoints:
                commits_after += 1
                if commits_after >= tail_commits:
                    return taken
        elif len(taken) < checkpoints:
            taken.append(journal.checkpoint(time_ns=len(taken) + 1))
    raise AssertionError("unreachable")


def assert_mirrors(disks: list[DiskSpec], content: dict[int, bytearray]) -> None:
    for spec in disks:
        assert sha(spec.mirror.read_bytes()) == sha(content[spec.id]), f"disk {spec.id}"


def assert_views(journal: Journal, disks: list[DiskSpec], seed: int) -> None:
    for cp in journal.checkpoints():
        want = model_at(seed, cp.seq)
        for spec in disks:
            got = journal.read_at(cp.id, spec.id, 0, spec.size)
            assert sha(got) == sha(want[spec.id]), f"checkpoint {cp.id} disk {spec.id}"


def open_journal(root: Path, directory: str = "j", **options: int) -> Journal:
    options.setdefault("segment_bytes", 8 * KiB)
    return Journal(root / directory, disk_specs(root), block_size=BS, **options)


def redo_records(directory: Path) -> list[tuple[int, int, int, int]]:
    """(segment, offset, end, seq) of every redo record in the journal's files."""
    found = []
    for number, path in list_segments(directory):
        for item in SegmentScan(path):
            if item.header.type in (RecordType.WRITE, RecordType.ZERO):
                record = decode_payload(item.header.type, item.header.flags, item.payload)
                assert isinstance(record, Write | Zero)
                found.append((number, item.offset, item.offset + item.size, record.seq))
    return found


def record_starts(path: Path) -> list[int]:
    return [item.offset for item in SegmentScan(path)]


def crash_at(journal: Journal, step: str, after: int = 1) -> None:
    """Make ``journal`` die at the ``after``-th time it reaches ``step``."""
    calls = 0

    def hook(name: str) -> None:
        nonlocal calls
        if name == step:
            calls += 1
            if calls == after:
                raise Crash(step)

    journal._test_hook = hook


# --- torn tails ------------------------------------------------------------------------------


def test_torn_tail_is_cut_at_any_point(tmp_path: Path) -> None:
    seed = 11
    original = tmp_path / "original"
    journal = open_journal(original, segment_bytes=4096)
    taken = run(journal, seed, 3, tail_commits=12)  # the tail spans several small segments
    journal.close()
    directory = original / "j"
    last_number, last_path = list_segments(directory)[-1]
    redo = redo_records(directory)
    starts = record_starts(last_path)
    size = last_path.stat().st_size
    rng = random.Random(seed)
    cuts = sorted({0, 1, HEADER.size - 1, size, *(rng.randrange(size) for _ in range(12))})
    for n, cut in enumerate(cuts):
        root = tmp_path / f"cut{n}"  # journal and mirrors, as the crash left them
        shutil.copytree(original, root)
        torn = root / "j" / last_path.name
        os.truncate(torn, cut)
        expected = max(seq for segment, _, end, seq in redo if segment < last_number or end <= cut)
        disks = disk_specs(root)
        with open_journal(root, segment_bytes=4096) as recovered:
            report = recovered.recovery
            assert recovered.last_seq == report.last_seq == expected, cut
            if cut in starts or cut == size:
                assert report.truncated is None
            else:
                assert report.truncated is not None
                assert report.truncated.offset == max(s for s in starts if s < cut)
                assert report.truncated.dropped_bytes == cut - report.truncated.offset
                assert report.messages
            if cut < starts[1]:  # not even the snapshot survived: the segment goes
                assert report.removed_segments == [torn]
            assert recovered.checkpoints() == taken
            assert_mirrors(disks, model_at(seed, taken[-1].seq))
            # The source resumes after last_seq; the surviving tail is checkpointed with it.
            cp = recovered.checkpoint()
            assert cp.seq == expected
            assert_mirrors(disks, model_at(seed, expected))
            assert_views(recovered, disks, seed)


def test_garbage_after_the_last_record_is_a_torn_write(tmp_path: Path) -> None:
    # A file system may keep the new size of a file and zeroes (or stale blocks) for its data.
    journal = open_journal(tmp_path, segment_bytes=1 << 20)
    run(journal, 12, 2, tail_commits=2)
    last_seq = journal.last_seq
    journal.close()
    path = list_segments(tmp_path / "j")[-1][1]
    size = path.stat().st_size
    with path.open("ab") as f:
        f.write(bytes(5000))
    with open_journal(tmp_path, segment_bytes=1 << 20) as recovered:
        assert recovered.recovery.truncated is not None
        assert recovered.recovery.truncated.offset == size
        assert recovered.recovery.truncated.dropped_bytes == 5000
        assert recovered.last_seq == last_seq
    assert path.stat().st_size == size  # cut back to where it was


# --- corruption ---------------------------------------------------------------------------------


def flip(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))


def test_flipped_byte_in_a_completed_segment_raises(tmp_path: Path) -> None:
    journal = open_journal(tmp_path, segment_bytes=4096)
    run(journal, 13, 4)
    journal.close()
    segments = list_segments(tmp_path / "j")
    assert len(segments) > 2
    path = segments[1][1]
    middle = record_starts(path)[len(record_starts(path)) // 2]
    flip(path, middle + HEADER.size + 3)  # in the payload
    with pytest.raises(JournalCorrupt) as info:
        open_journal(tmp_path, segment_bytes=4096)
    assert info.value.path == path
    assert info.value.offset == middle
    assert "CRC" in str(info.value) and str(path) in str(info.value)


def test_flipped_byte_in_a_synced_record_of_the_last_segment_raises(tmp_path: Path) -> None:
    journal = open_journal(tmp_path, segment_bytes=1 << 20)
    run(journal, 14, 3, tail_commits=3)
    journal.close()
    path = list_segments(tmp_path / "j")[-1][1]
    starts = record_starts(path)
    victim = starts[len(starts) // 2]  # later records show it had been fsynced
    flip(path, victim + 7)  # in the header this time (the length field)
    with pytest.raises(JournalCorrupt, match="fsynced") as info:
        open_journal(tmp_path, segment_bytes=1 << 20)
    assert info.value.path == path and info.value.offset == victim


def test_damage_in_records_never_fsynced_is_a_torn_write(tmp_path: Path) -> None:
    # Unsynced pages reach the disk in any order: a damaged record followed by whole ones is
    # what a power cut can leave. Nothing there was acknowledged, so it is cut, not refused.
    journal = open_journal(tmp_path, segment_bytes=1 << 20)
    run(journal, 15, 2, tail_commits=1)
    acknowledged = journal.last_seq
    path = list_segments(tmp_path / "j")[-1][1]
    synced_size = path.stat().st_size
    for n in range(3):
        journal.append([JournalWrite(acknowledged + 1 + n, 0, n * BS, b"unsynced" * 100)])
    snapshot = tmp_path / "at-crash"
    shutil.copytree(tmp_path / "j", snapshot)  # the page cache at the moment of the cut
    journal.close()
    copy = snapshot / path.name
    victim = next(s for s in record_starts(copy) if s >= synced_size)  # first unsynced WRITE
    flip(copy, victim + HEADER.size + 40)
    with Journal(snapshot, disk_specs(tmp_path), segment_bytes=1 << 20, block_size=BS) as j:
        report = j.recovery
        assert report.truncated is not None and report.truncated.offset == victim
        assert report.truncated.dropped_records == 2
        assert j.last_seq == acknowledged


def test_truncated_record_in_a_completed_segment_raises(tmp_path: Path) -> None:
    journal = open_journal(tmp_path, segment_bytes=4096)
    run(journal, 16, 3)
    journal.close()
    path = list_segments(tmp_path / "j")[0][1]
    os.truncate(path, path.stat().st_size - 10)
    with pytest.raises(JournalCorrupt, match="completed and fsynced"):
        open_journal(tmp_path, segment_bytes=4096)


# --- interrupted applies and rollbacks ------------------------------------------------------------


@pytest.mark.parametrize("step", ["undo_done", "mirror_partial"])
def test_crash_between_undo_done_and_applied_reapplies(tmp_path: Path, step: str) -> None:
    seed = 17
    disks = disk_specs(tmp_path)
    journal = open_journal(tmp_path)
    taken = run(journal, seed, 3, tail_commits=2)
    crash_at(journal, step)
    with pytest.raises(Crash):
        journal.checkpoint(time_ns=99)
    journal.close()  # a broken journal closes without writing, like a killed process
    with open_journal(tmp_path) as recovered:
        report = recovered.recovery
        new = taken[-1].id + 1
        assert report.reapplied == [new] and not report.discarded_undo
        assert recovered.latest() == Checkpoint(new, recovered.last_seq, 99)
        assert_mirrors(disks, model_at(seed, recovered.last_seq))
        assert_views(recovered, disks, seed)
        recovered.rollback(taken[0].id)
        assert_mirrors(disks, model_at(seed, taken[0].seq))


def test_crash_during_undo_capture_discards_partial_undo(tmp_path: Path) -> None:
    seed = 18
    disks = disk_specs(tmp_path)
    journal = open_journal(tmp_path)
    taken = run(journal, seed, 3, tail_commits=3)
    mirrors = {spec.id: bytearray(spec.mirror.read_bytes()) for spec in disks}
    crash_at(journal, "undo_partial", after=2)
    with pytest.raises(Crash):
        journal.checkpoint(time_ns=99)
    journal.close()
    assert_mirrors(disks, mirrors)  # undo first: the mirrors were not touched
    # Also tear the last undo record in half, as a power cut could.
    path = list_segments(tmp_path / "j")[-1][1]
    os.truncate(path, path.stat().st_size - 100)
    with open_journal(tmp_path) as recovered:
        report = recovered.recovery
        new = taken[-1].id + 1
        assert report.discarded_undo == [new]
        assert report.truncated is not None
        assert [c.id for c in recovered.checkpoints()] == [*(c.id for c in taken), new]
        assert_mirrors(disks, model_at(seed, recovered.last_seq))
        assert_views(recovered, disks, seed)  # the undo captured again is right
        recovered.rollback(taken[-1].id)
        assert_mirrors(disks, model_at(seed, taken[-1].seq))


def test_crash_after_checkpoint_record_applies_it_on_open(tmp_path: Path) -> None:
    seed = 19
    disks = disk_specs(tmp_path)
    journal = open_journal(tmp_path)
    taken = run(journal, seed, 2, tail_commits=2)
    crash_at(journal, "checkpoint_logged")
    with pytest.raises(Crash):
        journal.checkpoint(time_ns=99)
    journal.close()
    with open_journal(tmp_path) as recovered:
        assert recovered.recovery.applied == [taken[-1].id + 1]
        assert_mirrors(disks, model_at(seed, recovered.last_seq))
        assert_views(recovered, disks, seed)


def test_crash_during_rollback_completes_it_on_open(tmp_path: Path) -> None:
    seed = 20
    disks = disk_specs(tmp_path)
    journal = open_journal(tmp_path)
    taken = run(journal, seed, 5, tail_commits=1)
    target = taken[1]
    crash_at(journal, "rollback_partial", after=2)
    with pytest.raises(Crash):
        journal.rollback(target.id)
    journal.close()
    with open_journal(tmp_path) as recovered:
        assert recovered.recovery.rollback_completed == target.id
        assert recovered.checkpoints() == taken[:2]
        assert recovered.last_seq == target.seq
        assert_mirrors(disks, model_at(seed, target.seq))
        assert_views(recovered, disks, seed)


def test_broken_journal_refuses_work_until_reopened(tmp_path: Path) -> None:
    journal = open_journal(tmp_path)
    run(journal, 21, 1, tail_commits=1)
    crash_at(journal, "undo_done")
    with pytest.raises(Crash):
        journal.checkpoint()
    with pytest.raises(Exception, match="reopen"):
        journal.append([])
    journal.close()


# --- a real kill -9 ------------------------------------------------------------------------------

_CHILD = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_journal_recovery import disk_specs, workload
from hvds.journal import Journal

root = Path({root!r})
journal = Journal(root / "j", disk_specs(root), segment_bytes=8192, block_size=4096,
                  retention_seconds=6)
print("ready", flush=True)
taken = 0
for kind, entries in workload({seed}):
    if kind == "append":
        journal.append(entries)
    elif kind == "commit":
        journal.commit()
        print("ack", journal.last_seq, flush=True)
    else:
        taken += 1
        journal.checkpoint(time_ns=taken * 10**9)
        if taken % 3 == 0:
            journal.reclaim(now_ns=taken * 10**9)
"""


@pytest.mark.parametrize("seed", [31, 32, 33])
def test_kill_9_at_a_random_moment(tmp_path: Path, seed: int) -> None:
    script = _CHILD.format(tests=str(Path(__file__).parent), root=str(tmp_path), seed=seed)
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    time.sleep(random.Random(seed).uniform(0.05, 0.3))
    child.send_signal(signal.SIGKILL)
    output = child.stdout.read().split("\n")
    child.wait()
    acks = [int(line.split()[1]) for line in output if line.startswith("ack ")]
    assert acks, "the child did no work before it was killed"
    disks = disk_specs(tmp_path)
    with open_journal(tmp_path, retention_seconds=6) as recovered:
        assert recovered.last_seq >= acks[-1]  # nothing acknowledged was lost
        latest = recovered.latest()
        assert latest is not None
        assert_mirrors(disks, model_at(seed, latest.seq))
        assert_views(recovered, disks, seed)
        recovered.checkpoint()
        assert_mirrors(disks, model_at(seed, recovered.last_seq))
