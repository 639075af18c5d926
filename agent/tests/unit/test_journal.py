"""The target-site journal against a model: a bytearray per disk getting the same writes."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hvds.journal import (
    Checkpoint,
    CheckpointUnavailable,
    DiskSpec,
    Journal,
    JournalError,
    JournalFull,
    JournalWrite,
    JournalZero,
)
from hvds.journal import segments as segments_module
from hvds.journal.mirror import Mirrors

BS = 4096
KiB = 1024


def disk_specs(root: Path) -> list[DiskSpec]:
    # The second disk's size is not a multiple of the block size: its last block is short.
    return [
        DiskSpec(0, "system", 96 * KiB, root / "mirror-0.img"),
        DiskSpec(1, "data", 64 * KiB + 1000, root / "mirror-1.img"),
    ]


def sha(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha(path: Path) -> str:
    return sha(path.read_bytes())


class Model:
    """What the mirrors must hold: the same writes applied to a bytearray per disk."""

    def __init__(self, disks: list[DiskSpec]) -> None:
        self.specs = {d.id: d for d in disks}
        self.disks = {d.id: bytearray(d.size) for d in disks}
        self.seq = 0
        self.at: dict[int, dict[int, bytes]] = {}  # checkpoint id -> disk -> content
        self.seq_at: dict[int, int] = {}

    def write(self, disk: int, offset: int, data: bytes) -> JournalWrite:
        self.seq += 1
        self.disks[disk][offset : offset + len(data)] = data
        return JournalWrite(self.seq, disk, offset, data)

    def zero(self, disk: int, offset: int, length: int) -> JournalZero:
        self.seq += 1
        self.disks[disk][offset : offset + length] = bytes(length)
        return JournalZero(self.seq, disk, offset, length)

    def random_entries(self, rng: random.Random, count: int) -> list[JournalWrite | JournalZero]:
        entries: list[JournalWrite | JournalZero] = []
        for _ in range(count):
            disk = rng.choice(list(self.disks))
            size = len(self.disks[disk])
            if rng.random() < 0.5:  # block-aligned, like most guest I/O
                offset = rng.randrange(size // BS) * BS
                length = min(size - offset, BS * rng.randint(1, 3))
            else:
                offset = rng.randrange(size)
                length = rng.randint(1, min(3 * BS, size - offset))
            kind = rng.random()
            if kind < 0.15:
                entries.append(self.zero(disk, offset, length))
            elif kind < 0.25:
                entries.append(self.write(disk, offset, bytes(length)))  # zeroes written as data
            else:
                entries.append(self.write(disk, offset, rng.randbytes(length)))
        return entries

    def checkpoint(self, cp: Checkpoint) -> None:
        assert cp.seq == self.seq
        self.at[cp.id] = {k: bytes(v) for k, v in self.disks.items()}
        self.seq_at[cp.id] = cp.seq

    def rollback(self, checkpoint_id: int) -> None:
        self.disks = {k: bytearray(v) for k, v in self.at[checkpoint_id].items()}
        self.seq = self.seq_at[checkpoint_id]
        for later in [c for c in self.at if c > checkpoint_id]:
            del self.at[later]

    def assert_mirrors(self, checkpoint_id: int | None = None) -> None:
        for disk, spec in self.specs.items():
            want = self.disks[disk] if checkpoint_id is None else self.at[checkpoint_id][disk]
            assert file_sha(spec.mirror) == sha(want), f"mirror of disk {disk}"

    def mirror_digests(self) -> dict[int, str]:
        return {disk: file_sha(spec.mirror) for disk, spec in self.specs.items()}


class Crash(Exception):
    """Raised from the journal's test hook: the process 'dies' at that point."""


def crash_at_call(journal: Journal, n: int, only: str | None = None) -> None:
    """Make ``journal`` die at the n-th crash point it reaches (of step ``only`` if given)."""
    calls = 0

    def hook(step: str) -> None:
        nonlocal calls
        if only is None or step == only:
            calls += 1
            if calls == n:
                raise Crash(step)

    journal._test_hook = hook


@pytest.fixture
def disks(tmp_path: Path) -> list[DiskSpec]:
    return disk_specs(tmp_path)


@pytest.fixture
def journal(tmp_path: Path, disks: list[DiskSpec]) -> Iterator[Journal]:
    j = Journal(tmp_path / "journal", disks, segment_bytes=16 * KiB, block_size=BS)
    try:
        yield j
    finally:
        j.close()


def build_history(
    journal: Journal, model: Model, rng: random.Random, checkpoints: int
) -> list[Checkpoint]:
    taken = []
    for n in range(checkpoints):
        for _ in range(rng.randint(1, 3)):
            journal.append(model.random_entries(rng, rng.randint(1, 4)))
            journal.commit()
        cp = journal.checkpoint(tag=f"cp{n}", time_ns=1_000_000_000 * (n + 1))
        model.checkpoint(cp)
        taken.append(cp)
    return taken


# --- append, commit, checkpoint -------------------------------------------------------------


def test_mirror_equals_model_at_every_checkpoint(journal: Journal, disks: list[DiskSpec]) -> None:
    model = Model(disks)
    rng = random.Random(1)
    assert journal.recovery.clean
    assert journal.latest() is None
    for n in range(8):
        before = model.mirror_digests()
        journal.append(model.random_entries(rng, 6))
        assert model.mirror_digests() == before, "appending must not touch the mirrors"
        journal.commit()
        assert journal.last_seq == model.seq
        cp = journal.checkpoint(tag=f"t{n}", description="hourly", time_ns=n)
        model.checkpoint(cp)
        model.assert_mirrors()
        assert journal.latest() == cp
        assert cp.seq == model.seq and cp.tag == f"t{n}" and cp.description == "hourly"
    assert [c.id for c in journal.checkpoints()] == list(range(1, 9))
    assert journal.usage().segments > 1  # small segments: the log rolled over


def test_checkpoint_without_new_writes_and_uncommitted_entries(
    journal: Journal, disks: list[DiskSpec]
) -> None:
    model = Model(disks)
    empty = journal.checkpoint()
    assert empty.seq == 0
    model.checkpoint(empty)
    journal.append([model.write(0, 100, b"not committed yet")])
    assert journal.last_seq == 0  # appended, not durable
    assert journal.appended_seq == 1
    cp = journal.checkpoint()  # covers everything appended, and commits it
    model.checkpoint(cp)
    assert journal.last_seq == 1
    model.assert_mirrors()
    again = journal.checkpoint()
    model.checkpoint(again)
    assert journal.read_at(cp.id, 0, 0, 200) == journal.read_at(again.id, 0, 0, 200)


def test_checkpoint_marker_with_its_own_sequence_number(
    tmp_path: Path, disks: list[DiskSpec]
) -> None:
    # The replication stream numbers its checkpoint markers along with the writes.
    model = Model(disks)
    rng = random.Random(21)
    directory = tmp_path / "j"
    journal = Journal(directory, disks, segment_bytes=8 * KiB, block_size=BS)
    taken = []
    for n in range(4):
        journal.append(model.random_entries(rng, 3))
        with pytest.raises(ValueError, match="expected"):
            journal.checkpoint(seq=model.seq + 2)
        with pytest.raises(ValueError, match="expected"):
            journal.checkpoint(seq=model.seq)
        model.seq += 1  # the marker's own number
        if n == 2:  # and a crash while its interval is on its way to the mirrors
            crash_at_call(journal, 2, only="mirror_partial")
            with pytest.raises(Crash):
                journal.checkpoint(seq=model.seq, time_ns=n)
            journal.close()
            journal = Journal(directory, disks, segment_bytes=8 * KiB, block_size=BS)
            assert journal.recovery.reapplied == [n + 1]
            cp = journal.checkpoints()[-1]
        else:
            cp = journal.checkpoint(seq=model.seq, time_ns=n)
        assert cp.seq == model.seq == journal.last_seq
        model.checkpoint(cp)
        taken.append(cp)
        model.assert_mirrors()
    journal.append(model.random_entries(rng, 2))
    plain = journal.checkpoint()  # one without a number of its own, in between
    model.checkpoint(plain)
    journal.close()
    with Journal(directory, disks, segment_bytes=8 * KiB, block_size=BS) as journal:
        assert journal.recovery.clean and journal.last_seq == model.seq
        for cp in [*taken, plain]:
            got = journal.read_at(cp.id, 0, 0, disks[0].size)
            assert sha(got) == sha(model.at[cp.id][0])
        journal.rollback(taken[1].id)
        model.rollback(taken[1].id)
        model.assert_mirrors(taken[1].id)
        assert journal.last_seq == taken[1].seq
        journal.append(model.random_entries(rng, 2))  # numbering resumes after the marker
        model.seq += 1
        model.checkpoint(journal.checkpoint(seq=model.seq))
        model.assert_mirrors()


def test_state_survives_reopen(tmp_path: Path, disks: list[DiskSpec]) -> None:
    model = Model(disks)
    rng = random.Random(2)
    with Journal(tmp_path / "j", disks, segment_bytes=16 * KiB, block_size=BS) as journal:
        taken = build_history(journal, model, rng, 4)
        journal.append(model.random_entries(rng, 3))  # pending, committed by close()
    with Journal(tmp_path / "j", disks, segment_bytes=16 * KiB, block_size=BS) as journal:
        assert journal.recovery.clean, journal.recovery
        assert journal.last_seq == model.seq
        assert journal.checkpoints() == taken
        for cp in taken:
            for spec in disks:
                assert sha(journal.read_at(cp.id, spec.id, 0, spec.size)) == sha(
                    model.at[cp.id][spec.id]
                )
        cp = journal.checkpoint()  # the pending entries were kept
        model.checkpoint(cp)
        model.assert_mirrors()


def test_sequence_gap_repeat_and_bad_ranges_raise_and_change_nothing(
    journal: Journal, disks: list[DiskSpec]
) -> None:
    model = Model(disks)
    journal.append([model.write(0, 0, b"a"), model.write(0, 1, b"b")])
    journal.commit()
    used = journal.usage().bytes_used
    with pytest.raises(ValueError, match="gap"):
        journal.append([JournalWrite(4, 0, 0, b"x")])
    with pytest.raises(ValueError, match="repeats"):
        journal.append([JournalWrite(2, 0, 0, b"x")])
    with pytest.raises(ValueError, match="gap"):  # a gap inside a batch refuses the batch
        journal.append([JournalWrite(3, 0, 0, b"x"), JournalWrite(5, 0, 0, b"y")])
    with pytest.raises(ValueError, match="outside"):
        journal.append([JournalWrite(3, 1, disks[1].size - 1, b"xy")])
    with pytest.raises(ValueError, match="outside"):
        journal.append([JournalZero(3, 0, 0, 0)])
    with pytest.raises(ValueError, match="unknown disk"):
        journal.append([JournalWrite(3, 7, 0, b"x")])
    assert journal.appended_seq == 2 and journal.last_seq == 2
    assert journal.usage().bytes_used == used
    journal.append([model.write(1, disks[1].size - 2, b"ok")])
    model.checkpoint(journal.checkpoint())
    model.assert_mirrors()


def test_journal_directory_is_locked(tmp_path: Path, disks: list[DiskSpec]) -> None:
    with (
        Journal(tmp_path / "j", disks, block_size=BS),
        pytest.raises(JournalError, match="open elsewhere"),
    ):
        Journal(tmp_path / "j", disks, block_size=BS)


def test_refuses_another_block_size_or_disk_size(tmp_path: Path, disks: list[DiskSpec]) -> None:
    with Journal(tmp_path / "j", disks, block_size=BS) as journal:
        journal.checkpoint()
    with pytest.raises(ValueError, match="blocks"):
        Journal(tmp_path / "j", disks, block_size=2 * BS)
    other = [disks[0], DiskSpec(1, "data", disks[1].size, tmp_path / "other.img")]
    with Journal(tmp_path / "j", other, block_size=BS):
        pass  # another mirror path is fine
    grown = [DiskSpec(0, "system", disks[0].size * 2, tmp_path / "grown.img"), disks[1]]
    with pytest.raises(ValueError, match="bytes"):
        Journal(tmp_path / "j", grown, block_size=BS)


# --- rollback ---------------------------------------------------------------------------------


def test_rollback_to_every_earlier_checkpoint(journal: Journal, disks: list[DiskSpec]) -> None:
    model = Model(disks)
    rng = random.Random(3)
    taken = build_history(journal, model, rng, 6)
    journal.append(model.random_entries(rng, 3))  # pending: dropped by the rollback
    # Newest first: each rollback drops the later history, so this visits every checkpoint.
    for cp in reversed(taken):
        journal.rollback(cp.id)
        model.rollback(cp.id)
        model.assert_mirrors(cp.id)
        assert journal.latest() == cp
        assert journal.last_seq == cp.seq
        assert [c.id for c in journal.checkpoints()] == [c.id for c in taken if c.id <= cp.id]
        for earlier in taken[: taken.index(cp)]:
            for spec in disks:
                got = journal.read_at(earlier.id, spec.id, 0, spec.size)
                assert sha(got) == sha(model.at[earlier.id][spec.id])
    with pytest.raises(CheckpointUnavailable):
        journal.rollback(taken[-1].id)


def test_appending_continues_after_rollback(journal: Journal, disks: list[DiskSpec]) -> None:
    model = Model(disks)
    rng = random.Random(4)
    taken = build_history(journal, model, rng, 5)
    target = taken[1]
    journal.rollback(target.id)
    model.rollback(target.id)
    with pytest.raises(ValueError, match="expected"):
        journal.append([JournalWrite(taken[-1].seq + 1, 0, 0, b"old numbering")])
    journal.append(model.random_entries(rng, 5))  # seq follows on from the target
    cp = journal.checkpoint()
    model.checkpoint(cp)
    assert cp.id == taken[-1].id + 1, "checkpoint ids are never reused"
    model.assert_mirrors()
    journal.rollback(target.id)
    model.rollback(target.id)
    model.assert_mirrors(target.id)
    journal.close()
    reopened = Journal(journal.directory, disks, segment_bytes=16 * KiB, block_size=BS)
    try:
        assert reopened.recovery.clean
        assert reopened.last_seq == target.seq
        reopened.append(model.random_entries(rng, 2))
        model.checkpoint(reopened.checkpoint())
        model.assert_mirrors()
    finally:
        reopened.close()


def test_rollback_stopped_by_a_full_mirror_is_finished_before_anything_else(
    journal: Journal, disks: list[DiskSpec], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = Model(disks)
    rng = random.Random(22)
    taken = build_history(journal, model, rng, 4)
    target = taken[1]

    def mirror_full(self: Mirrors, disk: int, offset: int, data: bytes) -> None:
        raise JournalFull("mirror file system full")

    with monkeypatch.context() as patch:
        patch.setattr(Mirrors, "write", mirror_full)
        with pytest.raises(JournalFull, match="mirror"):
            journal.rollback(target.id)
    # Decided and durable, not done: only the target and older can be read now, correctly.
    assert journal.checkpoints() == taken[:2]
    model.rollback(target.id)
    for spec in disks:
        got = journal.read_at(target.id, spec.id, 0, spec.size)
        assert sha(got) == sha(model.at[target.id][spec.id])
    # The source resumes after the target: the rollback is finished first.
    journal.append(model.random_entries(rng, 3))
    assert journal.last_seq == target.seq  # not committed yet
    model.checkpoint(journal.checkpoint())
    model.assert_mirrors()


# --- point-in-time reads -----------------------------------------------------------------------


def test_read_at_every_checkpoint_leaves_mirrors_alone(
    journal: Journal, disks: list[DiskSpec]
) -> None:
    model = Model(disks)
    rng = random.Random(5)
    taken = build_history(journal, model, rng, 7)
    journal.append(model.random_entries(rng, 4))  # pending entries are not part of any view
    journal.commit()
    mirrors = model.mirror_digests()
    for cp in taken:
        for spec in disks:
            whole = journal.read_at(cp.id, spec.id, 0, spec.size)
            assert sha(whole) == sha(model.at[cp.id][spec.id])
            for _ in range(5):  # unaligned pieces, across block boundaries
                offset = rng.randrange(spec.size)
                length = rng.randint(0, spec.size - offset)
                want = model.at[cp.id][spec.id][offset : offset + length]
                assert journal.read_at(cp.id, spec.id, offset, length) == want
    assert model.mirror_digests() == mirrors
    with pytest.raises(CheckpointUnavailable):
        journal.read_at(99, 0, 0, 1)
    with pytest.raises(ValueError):
        journal.read_at(taken[0].id, 1, disks[1].size, 1)


# --- random operations against the model --------------------------------------------------------

_op = st.one_of(
    st.tuples(st.just("write"), st.integers(1, 4)),
    st.tuples(st.just("checkpoint"), st.just(0)),
    st.tuples(st.just("rollback"), st.integers(0, 20)),
    st.tuples(st.just("read"), st.integers(0, 20)),
    st.tuples(st.just("reopen"), st.just(0)),
    st.tuples(st.just("reclaim"), st.integers(0, 8)),
    st.tuples(st.just("crash_checkpoint"), st.integers(1, 6)),
    st.tuples(st.just("crash_rollback"), st.integers(1, 6)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(_op, min_size=5, max_size=30), seed=st.integers(0, 2**32 - 1))
def test_random_operations_match_the_model(ops: list[tuple[str, int]], seed: int) -> None:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        disks = disk_specs(root)
        model = Model(disks)
        clock = 0  # one second passes per checkpoint; retention is 5 s
        taken_at: dict[int, int] = {}

        def open_journal() -> Journal:
            return Journal(
                root / "j", disks, segment_bytes=8 * KiB, block_size=BS, retention_seconds=5
            )

        journal = open_journal()
        try:
            for op, arg in ops:
                if op == "write":
                    journal.append(model.random_entries(rng, arg))
                    if rng.random() < 0.7:
                        journal.commit()
                elif op == "checkpoint":
                    clock += 1
                    cp = journal.checkpoint(time_ns=clock * 10**9)
                    model.checkpoint(cp)
                    taken_at[cp.id] = cp.time_ns
                    model.assert_mirrors()
                elif op == "rollback" and model.at:
                    target = sorted(model.at)[arg % len(model.at)]
                    journal.rollback(target)
                    model.rollback(target)
                    model.assert_mirrors(target)
                elif op == "read" and model.at:
                    target = sorted(model.at)[arg % len(model.at)]
                    disk = disks[arg % 2]
                    got = journal.read_at(target, disk.id, 0, disk.size)
                    assert sha(got) == sha(model.at[target][disk.id])
                elif op == "reopen":
                    journal.close()
                    journal = open_journal()
                    assert journal.recovery.clean
                elif op == "crash_checkpoint":
                    crash_at_call(journal, arg)
                    clock += 1
                    try:
                        journal.checkpoint(time_ns=clock * 10**9)
                    except Crash:
                        journal.close()  # as killed: nothing more is written
                        journal = open_journal()
                        assert not journal.recovery.clean
                    journal._test_hook = None
                    recovered = journal.latest()  # recorded before any crash point: never lost
                    assert recovered is not None and recovered.time_ns == clock * 10**9
                    model.checkpoint(recovered)
                    taken_at[recovered.id] = recovered.time_ns
                    model.assert_mirrors()
                elif op == "crash_rollback" and model.at:
                    target = sorted(model.at)[arg % len(model.at)]
                    crash_at_call(journal, arg)
                    try:
                        journal.rollback(target)
                    except Crash:
                        journal.close()
                        journal = open_journal()
                        assert journal.recovery.rollback_completed == target
                    journal._test_hook = None
                    model.rollback(target)
                    model.assert_mirrors(target)
                elif op == "reclaim":
                    now = (clock + arg) * 10**9
                    journal.reclaim(now_ns=now)
                    # Retention: older than 5 s goes, the latest always stays.
                    for cid in list(model.at):
                        if cid != max(model.at) and taken_at[cid] < now - 5 * 10**9:
                            del model.at[cid]
                assert sorted(model.at) == [c.id for c in journal.checkpoints()]
                assert journal.appended_seq == model.seq
        finally:
            journal.close()


# --- retention and size limit ------------------------------------------------------------------


def test_reclaim_by_retention_frees_segments(tmp_path: Path, disks: list[DiskSpec]) -> None:
    model = Model(disks)
    rng = random.Random(6)
    journal = Journal(
        tmp_path / "j", disks, segment_bytes=8 * KiB, block_size=BS, retention_seconds=2.5
    )
    try:
        taken = build_history(journal, model, rng, 8)  # taken at 1 s .. 8 s
        # Nothing is old enough yet: only segments holding nothing but applied redo go.
        assert journal.reclaim(now_ns=taken[0].time_ns) > 0
        assert journal.checkpoints() == taken
        before = journal.usage()
        assert journal.reclaim(now_ns=taken[0].time_ns) == 0
        freed = journal.reclaim(now_ns=8_000_000_000)
        after = journal.usage()
        kept = [c.id for c in taken if c.time_ns >= 5_500_000_000]
        assert [c.id for c in journal.checkpoints()] == kept
        assert freed > 0
        assert after.segments < before.segments
        assert after.bytes_used < before.bytes_used
        assert after.oldest_checkpoint_time_ns == 6_000_000_000
        gone = taken[0]
        with pytest.raises(CheckpointUnavailable, match=r"restorable checkpoints: 6\.\.8"):
            journal.rollback(gone.id)
        with pytest.raises(CheckpointUnavailable):
            journal.read_at(gone.id, 0, 0, 10)
        for cid in kept:
            for spec in disks:
                got = journal.read_at(cid, spec.id, 0, spec.size)
                assert sha(got) == sha(model.at[cid][spec.id])
        # Far in the future only the latest checkpoint stays.
        journal.reclaim(now_ns=10**12)
        assert journal.checkpoints() == [taken[-1]]
        journal.rollback(taken[-1].id)
        model.assert_mirrors(taken[-1].id)
    finally:
        journal.close()
    with Journal(tmp_path / "j", disks, segment_bytes=8 * KiB, block_size=BS) as journal:
        assert journal.recovery.clean
        assert journal.checkpoints() == [taken[-1]]


def test_reclaim_by_size_limit_keeps_the_latest(tmp_path: Path, disks: list[DiskSpec]) -> None:
    model = Model(disks)
    rng = random.Random(7)
    limit = 64 * KiB
    journal = Journal(
        tmp_path / "j",
        disks,
        segment_bytes=8 * KiB,
        block_size=BS,
        size_limit_bytes=10 * limit,
        retention_seconds=10**6,
    )
    try:
        taken = build_history(journal, model, rng, 10)
        assert journal.usage().bytes_used > limit
        journal.size_limit_bytes = limit  # the operator shrinks the journal
        assert journal.reclaim(now_ns=taken[-1].time_ns) > 0
        usage = journal.usage()
        kept = journal.checkpoints()
        assert usage.bytes_used <= limit or len(kept) == 1
        assert kept[-1] == taken[-1] and len(kept) < len(taken)
        assert kept == taken[-len(kept) :]  # the oldest went first
        for cp in kept:
            got = journal.read_at(cp.id, 0, 0, disks[0].size)
            assert sha(got) == sha(model.at[cp.id][0])
    finally:
        journal.close()


def test_journal_full_when_pending_redo_cannot_fit(tmp_path: Path, disks: list[DiskSpec]) -> None:
    model = Model(disks)
    rng = random.Random(8)
    journal = Journal(
        tmp_path / "j", disks, segment_bytes=8 * KiB, block_size=BS, size_limit_bytes=96 * KiB
    )
    try:
        taken = build_history(journal, model, rng, 4)
        mirrors = model.mirror_digests()
        too_much = [JournalWrite(model.seq + 1 + n, 0, n * BS, b"x" * BS) for n in range(24)]
        with pytest.raises(JournalFull, match="do not fit"):
            journal.append(too_much)
        # More than the whole journal could hold: refused without giving up any history.
        assert journal.checkpoints() == taken
        assert journal.appended_seq == model.seq
        # Now the source keeps writing and no checkpoint comes: the oldest checkpoints are
        # given up to make room, then the journal is full.
        accepted = 0
        with pytest.raises(JournalFull, match="do not fit"):
            while True:
                batch = [model.write(0, rng.randrange(24) * BS, rng.randbytes(BS))]
                try:
                    journal.append(batch)
                except JournalFull:
                    model.seq -= 1  # refused: not part of the model (data restored below)
                    raise
                journal.commit()
                accepted += 1
                saved = {k: bytes(v) for k, v in model.disks.items()}
        model.disks = {k: bytearray(v) for k, v in saved.items()}
        assert accepted > 5
        assert journal.last_seq == model.seq
        usage = journal.usage()
        assert usage.bytes_used <= usage.size_limit
        assert usage.pending_redo_bytes > usage.size_limit // 2
        # The last checkpoint stays readable and the mirrors are untouched.
        latest = journal.latest()
        assert latest == taken[-1]
        assert journal.checkpoints()[0] != taken[0]  # older history went first
        for spec in disks:
            got = journal.read_at(latest.id, spec.id, 0, spec.size)
            assert sha(got) == sha(model.at[latest.id][spec.id])
        assert model.mirror_digests() == mirrors
        # A checkpoint takes every accepted write to the mirrors.
        model.checkpoint(journal.checkpoint())
        model.assert_mirrors()
        journal.reclaim(now_ns=0)
        journal.append(model.random_entries(rng, 3))
        model.checkpoint(journal.checkpoint())
        model.assert_mirrors()
    finally:
        journal.close()
    with Journal(tmp_path / "j", disks, block_size=BS) as reopened:
        assert reopened.recovery.clean, reopened.recovery
        assert reopened.last_seq == model.seq


def test_disk_full_refuses_the_batch_and_keeps_the_journal(
    tmp_path: Path, disks: list[DiskSpec], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = Model(disks)
    rng = random.Random(9)
    directory = tmp_path / "j"
    journal = Journal(directory, disks, segment_bytes=64 * KiB, block_size=BS)
    taken = build_history(journal, model, rng, 2)
    sizes = {p.name: p.stat().st_size for p in directory.glob("*.hvj")}
    real = segments_module.pwrite_all

    def out_of_space(fd: int, data: bytes, offset: int) -> None:
        real(fd, data[: len(data) // 2], offset)  # a partial write, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(segments_module, "pwrite_all", out_of_space)
    refused = Model(disks)  # not the model: these entries are never taken
    refused.seq = model.seq
    with pytest.raises(JournalFull, match="full"):
        journal.append(refused.random_entries(random.Random(10), 3))
    with pytest.raises(JournalFull):
        journal.checkpoint()
    monkeypatch.setattr(segments_module, "pwrite_all", real)
    assert {p.name: p.stat().st_size for p in directory.glob("*.hvj")} == sizes
    assert journal.latest() == taken[-1]
    journal.append(model.random_entries(rng, 3))
    model.checkpoint(journal.checkpoint())
    model.assert_mirrors()
    journal.close()
    with Journal(directory, disks, segment_bytes=64 * KiB, block_size=BS) as reopened:
        assert reopened.recovery.clean, reopened.recovery


def test_checkpoint_gives_up_older_history_when_its_undo_cannot_fit(
    tmp_path: Path, disks: list[DiskSpec]
) -> None:
    model = Model(disks)
    journal = Journal(
        tmp_path / "j", disks, segment_bytes=8 * KiB, block_size=BS, size_limit_bytes=80 * KiB
    )
    try:
        # Fill both mirrors with data so that undo costs real bytes.
        for spec in disks:
            for offset in range(0, spec.size, 8 * KiB):
                data = os.urandom(min(8 * KiB, spec.size - offset))
                journal.append([model.write(spec.id, offset, data)])
                model.checkpoint(journal.checkpoint())
                journal.reclaim(now_ns=0)
        assert len(journal.checkpoints()) > 1
        # Overwrite most of disk 0 in one interval: its undo alone is ~64 KiB.
        journal.reclaim(now_ns=0)
        for offset in range(0, 64 * KiB, 8 * KiB):
            journal.append([model.write(0, offset, os.urandom(8 * KiB))])
            journal.reclaim(now_ns=0)
        cp = journal.checkpoint()
        model.checkpoint(cp)
        model.assert_mirrors()
        # Its undo could not fit even with only the previous checkpoint left: that one went too.
        assert journal.checkpoints() == [cp]
        assert journal.usage().bytes_used <= 80 * KiB + 8 * KiB
    finally:
        journal.close()
