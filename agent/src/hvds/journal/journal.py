"""The target-site journal of a protection group: redo log, checkpoints, mirrors and undo.

Writes arrive in source order and are appended (redo) to segment files; ``commit`` fsyncs them,
after which the VDSA may acknowledge the source. ``checkpoint`` records a consistent cut and
brings the mirrors to it, one interval (the writes since the previous checkpoint) at a time:

1. CHECKPOINT record;
2. undo: UNDO_BEGIN, the pre-interval content of every block the interval touches (UNDO
   records), UNDO_DONE, fsync -- all before the first mirror write;
3. redo applied to the mirrors, mirrors fsynced, APPLIED record, fsync.

A crash in step 2 leaves the mirrors untouched and the partial undo is discarded on open; a
crash in step 3 finds complete undo and the redo is applied again (it is idempotent). Rollback
writes a durable ROLLBACK decision, applies undo newest interval first (idempotent as a whole),
fsyncs the mirrors, then ROLLBACK_DONE. Reclaiming records RECLAIM durably before it deletes
any segment.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from hvds.journal.mirror import Mirrors
from hvds.journal.model import (
    Checkpoint,
    CheckpointUnavailable,
    DiskSpec,
    JournalCorrupt,
    JournalError,
    JournalFull,
    JournalRecovery,
    JournalUsage,
    JournalWrite,
    JournalZero,
)
from hvds.journal.records import (
    HEADER,
    MAX_TEXT,
    MAX_WRITE,
    UNDO_RECORD_OVERHEAD,
    ZERO_RECORD_SIZE,
    Applied,
    CheckpointMark,
    Reclaim,
    Record,
    RecordType,
    Rollback,
    RollbackDone,
    Snapshot,
    Undo,
    UndoBegin,
    UndoDone,
    Write,
    Zero,
    decode_payload,
    redo_record_size,
)
from hvds.journal.recovery import recover
from hvds.journal.segments import Location, SegmentStore, segment_path
from hvds.journal.state import CheckpointState, JournalState, Status
from hvds.journal.undo import block_runs, blocks_of, plan_read

log = logging.getLogger(__name__)

MiB = 1 << 20
GiB = 1 << 30
# Undo is captured and recorded in pieces of at most this much: bounded memory, and a read of
# an old checkpoint never has to read (and check) a huge record for a few blocks.
_UNDO_PIECE = 1 * MiB


@dataclass(frozen=True, slots=True)
class _RedoRef:
    location: Location
    disk: int
    offset: int
    length: int
    zero: bool


class Journal:
    """One protection group's journal in ``directory``; see the module docstring.

    ``size_limit_bytes`` bounds the segment files. Appends and undo capture are checked against
    it (appends with room for the metadata they may bring); the few small records a checkpoint,
    rollback or reclaim adds are not, so those can pass the limit by a little until the next
    ``reclaim``. ``segment_bytes`` is a target: a record larger than a segment gets its own.

    Not thread-safe: the VDSA drives one journal from one task.
    """

    recovery: JournalRecovery

    def __init__(
        self,
        directory: Path,
        disks: Sequence[DiskSpec],
        *,
        segment_bytes: int = 64 * MiB,
        retention_seconds: float = 3600,
        size_limit_bytes: int = 10 * GiB,
        block_size: int = 64 * 1024,
    ) -> None:
        if block_size <= 0 or block_size & (block_size - 1):
            raise ValueError(f"block size {block_size} is not a power of two")
        if segment_bytes < 4096:
            raise ValueError(f"segment size {segment_bytes} is below 4096 bytes")
        if block_size > _UNDO_PIECE:
            raise ValueError(f"block size {block_size} is above {_UNDO_PIECE} bytes")
        if size_limit_bytes <= 0 or retention_seconds < 0:
            raise ValueError("size limit and retention must be positive")
        for spec in disks:
            if not 0 <= spec.id < 1 << 32 or spec.size <= 0:
                raise ValueError(f"disk {spec.name}: id {spec.id} or size {spec.size} invalid")
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self.retention_seconds = retention_seconds
        self.size_limit_bytes = size_limit_bytes
        self.block_size = block_size
        # Called with a step name at the points where a crash matters; tests raise from it to
        # stop an operation there.
        self._test_hook: Callable[[str], None] | None = None
        self._broken: BaseException | None = None
        self._closed = False
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _lock(self.directory)
        self._mirrors: Mirrors | None = None
        self._store = SegmentStore(self.directory, segment_bytes)
        try:
            self._mirrors = Mirrors(disks)
            self._state = JournalState(block_size)
            self.recovery = recover(self.directory, self._store, self._state)
            self._check_disks(disks)
            if not self._store.sizes:
                self._store.create(1, self._snapshot(1))
            self._committed_seq = self._state.appended_seq
            self._finish_interrupted(self.recovery)
            self.recovery.last_seq = self.last_seq
        except BaseException:
            self._release(clean=False)
            raise

    # --- properties and queries ---------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """The highest durable sequence: the source resumes after it."""
        return self._committed_seq

    @property
    def appended_seq(self) -> int:
        """The highest sequence appended (durable or not)."""
        return self._state.appended_seq

    def checkpoints(self) -> list[Checkpoint]:
        return [c.checkpoint for c in self._state.restorable()]

    def latest(self) -> Checkpoint | None:
        restorable = self._state.restorable()
        return restorable[-1].checkpoint if restorable else None

    def usage(self) -> JournalUsage:
        restorable = self._state.restorable()
        return JournalUsage(
            bytes_used=self._store.bytes_used,
            size_limit=self.size_limit_bytes,
            pending_redo_bytes=self._state.pending_bytes,
            checkpoints=len(restorable),
            oldest_checkpoint_time_ns=restorable[0].checkpoint.time_ns if restorable else None,
            segments=len(self._store.sizes),
        )

    # --- writing ------------------------------------------------------------------------------

    def append(self, entries: Sequence[JournalWrite | JournalZero]) -> None:
        """Append entries; sequence numbers must follow on from the last one without a gap.

        All or nothing: a ValueError or JournalFull leaves the journal as it was.
        """
        self._check_usable()
        self._settle()
        records = self._validate(entries)
        if not records:
            return
        need = sum(
            redo_record_size(r.length) if isinstance(r, Write) else ZERO_RECORD_SIZE
            for r in records
        )
        # Room for the metadata that comes with them: a segment roll's snapshot, sync marks.
        need += 2 * self._store.snapshot_bytes + 8 * HEADER.size
        # Segments holding redo not yet on the mirrors stay whatever is reclaimed: if even
        # those leave no room, refuse at once rather than give up history for nothing.
        floor = sum(self._store.sizes[n] for n in self._state.redo_segments())
        if floor + need > self.size_limit_bytes:
            raise JournalFull(
                f"{need} bytes of entries do not fit: {floor} bytes of the "
                f"{self.size_limit_bytes}-byte journal hold redo not yet checkpointed"
            )
        with self._guard():
            self._make_room(need)
            used = self._store.bytes_used
            if used + need > self.size_limit_bytes:
                raise JournalFull(
                    f"{need} bytes of entries do not fit: {used} of {self.size_limit_bytes} "
                    f"bytes used ({self._state.pending_bytes} of them not yet checkpointed) "
                    "with only the latest checkpoint kept"
                )
            self._log(records)

    def commit(self) -> None:
        """Make everything appended durable; the source may then be acknowledged.

        A failed fsync leaves the journal unusable until reopened (JournalFull on ENOSPC).
        """
        self._check_usable()
        self._commit()

    def checkpoint(
        self,
        tag: str = "",
        description: str = "",
        time_ns: int | None = None,
        *,
        seq: int | None = None,
    ) -> Checkpoint:
        """Record a checkpoint covering everything appended, and bring the mirrors to it.

        ``seq``: when the source's stream gives the checkpoint marker a sequence number of its
        own, that number; it must follow on from the last entry exactly as an entry's would,
        and becomes the checkpoint's ``seq`` and ``last_seq``. Without it the checkpoint's
        ``seq`` is the last entry's.

        Commits. If the mirrors cannot be brought to it (JournalFull), the checkpoint stays
        recorded and is applied by the next checkpoint() or the next open.
        """
        self._check_usable()
        self._settle()
        if len(tag.encode()) > MAX_TEXT or len(description.encode()) > MAX_TEXT:
            raise ValueError(f"tag and description are limited to {MAX_TEXT} bytes each")
        if time_ns is not None and not 0 <= time_ns < 1 << 64:
            raise ValueError(f"time {time_ns} is not a time in nanoseconds since the epoch")
        if seq is not None and seq != self._state.appended_seq + 1:
            raise ValueError(
                f"checkpoint seq {seq} does not follow seq {self._state.appended_seq}: "
                f"expected {self._state.appended_seq + 1}"
            )
        with self._guard():
            self._finish_interrupted(None)
            mark = CheckpointMark(
                self._state.next_checkpoint_id,
                self._state.appended_seq if seq is None else seq,
                time.time_ns() if time_ns is None else time_ns,
                tag,
                description,
                own_seq=seq is not None,
            )
            self._log([mark])
            self._hook("checkpoint_logged")
            state = self._state.checkpoints[-1]
            self._apply(state)
            return state.checkpoint

    def rollback(self, checkpoint_id: int) -> None:
        """Make the mirrors hold exactly checkpoint ``checkpoint_id``; drop what came after it
        (later checkpoints and entries not yet checkpointed). Appending then continues from the
        checkpoint's sequence + 1."""
        self._check_usable()
        self._restorable(checkpoint_id)
        with self._guard():
            if self._state.rollback_to is not None and self._state.rollback_to != checkpoint_id:
                self._finish_rollback()  # an earlier one that failed: it comes first
                self._restorable(checkpoint_id)
            if self._state.rollback_to is None:
                self._log([Rollback(checkpoint_id)])
                self._commit()
            self._finish_rollback()

    def reclaim(self, now_ns: int | None = None) -> int:
        """Give up the oldest checkpoints beyond the retention time, then more while the journal
        is over its size limit (always keeping the latest); delete the segment files nothing
        needs any more. Returns the bytes freed."""
        self._check_usable()
        now = time.time_ns() if now_ns is None else now_ns
        cutoff = now - int(self.retention_seconds * 1e9)
        with self._guard():
            freed = self._delete_dead()
            restorable = self._state.restorable()
            expired = 0
            while expired < len(restorable) - 1 and restorable[expired].checkpoint.time_ns < cutoff:
                expired += 1
            if expired:
                freed += self._drop_oldest(expired)
            while (
                self._store.bytes_used > self.size_limit_bytes and len(self._state.restorable()) > 1
            ):
                freed += self._drop_oldest(1)
            return freed

    # --- reading the past ---------------------------------------------------------------------

    def read_at(self, checkpoint_id: int, disk: int, offset: int, length: int) -> bytes:
        """Content of ``disk`` at a checkpoint, without changing the mirror."""
        self._check_usable()
        self._restorable(checkpoint_id)
        size = self._disk_size(disk)
        if offset < 0 or length < 0 or offset + length > size:
            raise ValueError(f"range {offset}+{length} is outside disk {disk} ({size} bytes)")
        layers = []
        for state in self._state.checkpoints:
            if state.id > checkpoint_id and state.status != Status.NEW:
                undo = self._state.undo.get(state.id, state.attempt)
                if undo is not None:
                    layers.append(undo)
        out = bytearray()
        records: dict[Location, bytes] = {}
        for piece in plan_read(layers, disk, offset, length, self.block_size):
            ref = piece.source
            if ref is None:
                out += self._mirror.read(disk, piece.offset, piece.length)
            elif ref.zero:
                out += bytes(piece.length)
            else:
                data = records.get(ref.location)
                if data is None:
                    data = records[ref.location] = self._undo_data(ref.location)
                start = piece.offset - ref.offset
                out += data[start : start + piece.length]
        return bytes(out)

    # --- closing ------------------------------------------------------------------------------

    def close(self) -> None:
        """Commit and close. A journal broken by an error mid-operation is closed without
        writing anything, exactly as a crash would leave it; reopening recovers it."""
        if self._closed:
            return
        self._release(clean=self._broken is None)

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- internals: guards --------------------------------------------------------------------

    def _snapshot(self, segment: int) -> Snapshot:
        return self._state.snapshot(segment, self._store.sizes)

    def _check_usable(self) -> None:
        if self._closed:
            raise JournalError("the journal is closed")
        if self._broken is not None:
            raise JournalError(
                f"the journal stopped on {self._broken!r} mid-operation; reopen it to recover"
            )

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Any failure but JournalFull mid-operation may leave memory and files disagreeing:
        the journal refuses further work until reopened (recovery makes them agree)."""
        try:
            yield
        except JournalFull:
            raise
        except BaseException as exc:
            self._broken = exc
            raise

    def _settle(self) -> None:
        """Finish a rollback that a full mirror file system interrupted: until it is done, the
        sequence numbers to append after are not known (entries appended now would be lost)."""
        if self._state.rollback_to is not None:
            with self._guard():
                self._finish_rollback()

    def _hook(self, step: str) -> None:
        if self._test_hook is not None:
            self._test_hook(step)

    @property
    def _mirror(self) -> Mirrors:
        assert self._mirrors is not None
        return self._mirrors

    def _disk_size(self, disk: int) -> int:
        spec = self._mirror.specs.get(disk)
        if spec is None:
            raise ValueError(f"unknown disk {disk}")
        return spec.size

    def _restorable(self, checkpoint_id: int) -> CheckpointState:
        for state in self._state.restorable():
            if state.id == checkpoint_id:
                return state
        kept = self._state.restorable()
        what = f"{kept[0].id}..{kept[-1].id}" if kept else "none"
        raise CheckpointUnavailable(
            f"checkpoint {checkpoint_id} is not in the journal (reclaimed, rolled back or never "
            f"taken); restorable checkpoints: {what}"
        )

    def _check_disks(self, disks: Sequence[DiskSpec]) -> None:
        given = {d.id: d.size for d in disks}
        for disk, size in self._state.disks.items():
            if disk not in given:
                raise ValueError(f"the journal holds disk {disk}, which was not given")
            if given[disk] != size:
                raise ValueError(f"disk {disk} is {given[disk]} bytes; the journal has {size}")
        self._state.disks.update(given)

    def _validate(self, entries: Sequence[JournalWrite | JournalZero]) -> list[Record]:
        records: list[Record] = []
        expected = self._state.appended_seq + 1
        for entry in entries:
            if entry.seq != expected:
                problem = "repeats" if entry.seq < expected else "leaves a gap after"
                raise ValueError(
                    f"entry seq {entry.seq} {problem} seq {expected - 1}: expected {expected}"
                )
            size = self._disk_size(entry.disk)
            if isinstance(entry, JournalWrite):
                data = bytes(entry.data)
                length = len(data)
                if length > MAX_WRITE:
                    raise ValueError(f"entry seq {entry.seq}: write above {MAX_WRITE} bytes")
            else:
                length = entry.length
            if length <= 0 or entry.offset < 0 or entry.offset + length > size:
                raise ValueError(
                    f"entry seq {entry.seq}: range {entry.offset}+{length} is outside disk "
                    f"{entry.disk} ({size} bytes) or empty"
                )
            epoch = self._state.epoch
            if isinstance(entry, JournalWrite):
                records.append(Write(epoch, entry.disk, entry.seq, entry.offset, data))
            else:
                records.append(Zero(epoch, entry.disk, entry.seq, entry.offset, length))
            expected += 1
        return records

    # --- internals: the log -------------------------------------------------------------------

    def _log(self, records: Sequence[Record]) -> None:
        placed = self._store.append(records, self._snapshot)
        for record, (location, size) in zip(records, placed, strict=True):
            self._state.apply(record, location, size)

    def _commit(self) -> None:
        try:
            self._store.sync()
        except OSError as exc:
            # After a failed fsync the kernel may have dropped the dirty pages: what is on disk
            # is unknown until recovery reads it back.
            self._broken = exc
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise JournalFull(f"fsync of the journal failed: {exc.strerror}") from exc
            raise
        self._committed_seq = self._state.appended_seq

    def _read(self, location: Location) -> Record:
        header, payload = self._store.read(location)
        return decode_payload(header.type, header.flags, payload)

    def _undo_data(self, location: Location) -> bytes:
        record = self._read(location)
        if not isinstance(record, Undo) or record.data is None:
            raise self._corrupt(location, "expected an UNDO record with data")
        return record.data

    def _corrupt(self, location: Location, reason: str) -> JournalCorrupt:
        path = segment_path(self.directory, location.segment)
        return JournalCorrupt(path, location.offset, reason)

    # --- internals: bringing the mirrors to a checkpoint ----------------------------------------

    def _finish_interrupted(self, report: JournalRecovery | None) -> None:
        """Complete what a crash or a full disk interrupted: a rollback, unapplied intervals.

        At open (``report`` given) what is done is reported, and a JournalFull leaves the
        checkpoints pending rather than failing the open: the latest applied one stays readable.
        """
        if self._state.rollback_to is not None:
            target = self._state.rollback_to
            self._finish_rollback()
            if report is not None:
                report.rollback_completed = target
                _note(report, f"rollback to checkpoint {target} was interrupted: completed")
        for state in list(self._state.checkpoints):
            if state.status == Status.APPLIED:
                continue
            if report is not None:
                if state.status == Status.UNDO_DONE:
                    report.reapplied.append(state.id)
                    _note(report, f"checkpoint {state.id}: undo complete, redo applied again")
                elif state.attempt:
                    report.discarded_undo.append(state.id)
                    _note(report, f"checkpoint {state.id}: partial undo discarded, applied anew")
                else:
                    report.applied.append(state.id)
                    _note(report, f"checkpoint {state.id}: recorded but not applied: applied")
            try:
                self._apply(state)
            except JournalFull as exc:
                if report is None or self._broken is not None:
                    raise
                pending = [c.id for c in self._state.checkpoints if c.status != Status.APPLIED]
                report.pending_apply = pending
                _note(report, f"checkpoints {pending} cannot be applied yet: {exc}")
                return

    def _apply(self, state: CheckpointState) -> None:
        refs: list[_RedoRef] | None = None
        if state.status == Status.NEW:
            refs = self._interval_redo(state)
            self._capture_undo(state, refs)
        if state.status == Status.UNDO_DONE:
            if refs is None:
                refs = self._interval_redo(state)
            self._hook("undo_done")
            for ref in refs:
                if ref.zero:
                    self._mirror.zero(ref.disk, ref.offset, ref.length)
                else:
                    record = self._read(ref.location)
                    if not isinstance(record, Write):
                        raise self._corrupt(ref.location, "expected a WRITE record")
                    self._mirror.write(ref.disk, ref.offset, record.data)
                self._hook("mirror_partial")
            self._mirror.flush(ref.disk for ref in refs)
            self._log([Applied(state.id)])
            self._commit()

    def _interval_redo(self, state: CheckpointState) -> list[_RedoRef]:
        """The redo of the interval ending at checkpoint ``state``, in order, each checked."""
        low, high = self._state.applied_seq, state.last_redo_seq
        checkpoint = state.checkpoint
        epoch = self._state.epoch
        refs: list[_RedoRef] = []
        expected = low + 1
        for number in sorted(self._state.segments):
            span = self._state.segments[number].redo.get(epoch)
            if span is None or span[1] <= low or span[0] > high or number not in self._store.sizes:
                continue
            for location, header in self._store.headers(number):
                if header.type not in (RecordType.WRITE, RecordType.ZERO):
                    continue
                record = self._read(location)
                assert isinstance(record, Write | Zero)
                if record.epoch != epoch or not low < record.seq <= high:
                    continue
                if record.seq != expected:
                    raise self._corrupt(location, f"redo seq {expected} missing before it")
                refs.append(
                    _RedoRef(
                        location,
                        record.disk,
                        record.offset,
                        record.length,
                        isinstance(record, Zero),
                    )
                )
                expected += 1
        if expected != high + 1:
            raise JournalCorrupt(
                self.directory,
                0,
                f"redo seq {expected}..{high} of checkpoint {checkpoint.id} missing",
            )
        return refs

    def _capture_undo(self, state: CheckpointState, refs: list[_RedoRef]) -> None:
        blocks: dict[int, set[int]] = {}
        for ref in refs:
            blocks.setdefault(ref.disk, set()).update(
                blocks_of(ref.offset, ref.length, self.block_size)
            )
        if self._state.predecessor(state.id) is not None and blocks:
            self._make_room(self._undo_estimate(blocks))
            try:
                self._write_undo(state, blocks)
                return
            except JournalFull as exc:
                if self._broken is not None:
                    raise  # an fsync failed: nothing more may be written before a reopen
                # The source's writes are acknowledged and must reach the mirrors; with no room
                # for their undo, the history before this checkpoint is what has to go.
                log.warning(
                    "undo of checkpoint %d does not fit (%s): giving up older checkpoints",
                    state.id,
                    exc,
                )
            self._log([Reclaim(state.id)])
            self._commit()
            self._delete_dead()
        # No earlier checkpoint to return to: the interval needs no undo.
        self._write_undo(state, {})

    def _undo_estimate(self, blocks: dict[int, set[int]]) -> int:
        """An upper bound of the undo's size: holes of the mirror cost only a header."""
        total = 0
        for disk, numbers in blocks.items():
            for first, count in block_runs(numbers, max(1, _UNDO_PIECE // self.block_size)):
                start = first * self.block_size
                total += UNDO_RECORD_OVERHEAD * count + self._mirror.data_bytes(
                    disk, start, count * self.block_size
                )
        return total

    def _write_undo(self, state: CheckpointState, blocks: dict[int, set[int]]) -> None:
        attempt = state.attempt + 1
        mark = self._store.mark()
        try:
            self._log([UndoBegin(state.id, attempt)])
            for disk in sorted(blocks):
                for first, count in block_runs(
                    blocks[disk], max(1, _UNDO_PIECE // self.block_size)
                ):
                    for offset, length, data in self._mirror.capture(
                        disk, first, count, self.block_size
                    ):
                        need = UNDO_RECORD_OVERHEAD + (len(data) if data is not None else 0)
                        if self._store.bytes_used + need > self.size_limit_bytes:
                            raise JournalFull(f"undo of checkpoint {state.id} is over the limit")
                        self._log([Undo(state.id, attempt, disk, offset, length, data)])
                        self._hook("undo_partial")
            self._log([UndoDone(state.id, attempt)])
            self._commit()
        except JournalFull:
            if self._broken is None:
                self._state.forget_segments(self._store.truncate_to(mark))
                self._state.abort_undo(state.id)
            raise

    # --- internals: rollback and reclaim ------------------------------------------------------

    def _finish_rollback(self) -> None:
        target = self._state.rollback_to
        assert target is not None
        touched: set[int] = set()
        # Newest interval first, so that a block ends with the undo of the oldest interval after
        # the target that touched it: its content at the target. Rerunning it all is harmless.
        for state in reversed(self._state.checkpoints):
            if state.id <= target:
                break
            undo = self._state.undo.get(state.id, state.attempt)
            if state.status == Status.NEW or undo is None:
                continue  # the mirror has nothing of this interval
            for ref in undo.records:
                if ref.zero:
                    self._mirror.zero(ref.disk, ref.offset, ref.length)
                else:
                    self._mirror.write(ref.disk, ref.offset, self._undo_data(ref.location))
                touched.add(ref.disk)
                self._hook("rollback_partial")
        self._mirror.flush(touched)
        self._log([RollbackDone(target)])
        self._commit()

    def _make_room(self, need: int) -> None:
        """Free space for ``need`` more bytes under the limit if the rules allow."""
        if self._store.bytes_used + need <= self.size_limit_bytes:
            return
        self._delete_dead()
        while (
            self._store.bytes_used + need > self.size_limit_bytes
            and len(self._state.restorable()) > 1
        ):
            self._drop_oldest(1)

    def _drop_oldest(self, count: int) -> int:
        keep = self._state.restorable()[count]
        dropped = [c.id for c in self._state.restorable()[:count]]
        log.info("journal: giving up checkpoints %s", dropped)
        # Durable before any segment goes: after a crash, no kept checkpoint may lack its undo.
        self._log([Reclaim(keep.id)])
        self._commit()
        return self._delete_dead()

    def _delete_dead(self) -> int:
        live = self._state.live_segments()
        current = self._store.current
        if current not in live and not self._store.holds_only_snapshot(current):
            # Start a new segment so that the current one, needed by nothing, can go too.
            self._store.roll(self._snapshot)
        freed = 0
        for number in sorted(self._store.sizes):
            if number != self._store.current and number not in live:
                freed += self._store.sizes[number]
                self._store.delete(number)
                self._state.forget_segments([number])
        if freed:
            self._store.sync_directory()
        return freed

    def _release(self, clean: bool) -> None:
        self._closed = True
        try:
            self._store.close(clean)
        finally:
            if self._mirrors is not None:
                self._mirrors.close()
            os.close(self._lock_fd)


def _lock(directory: Path) -> int:
    fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise JournalError(f"journal {directory} is open elsewhere") from None
    return fd


def _note(report: JournalRecovery, message: str) -> None:
    report.messages.append(message)
    log.warning("journal recovery: %s", message)
