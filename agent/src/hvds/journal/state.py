"""The journal's metadata as a function of its log, with no I/O.

Every record the journal writes goes through ``JournalState.apply`` right after it is written,
and recovery replays the records it finds through the same method: what a running journal
believes and what it recovers after a crash are computed by one piece of code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum

from hvds.journal.model import Checkpoint
from hvds.journal.records import (
    Applied,
    CheckpointMark,
    Reclaim,
    Record,
    Rollback,
    RollbackDone,
    Snapshot,
    SnapshotCheckpoint,
    SnapshotSegment,
    SyncMark,
    Undo,
    UndoBegin,
    UndoDone,
    Write,
    Zero,
)
from hvds.journal.segments import Location
from hvds.journal.undo import UndoIndex, UndoRef


class Status(IntEnum):
    NEW = 0  # checkpoint recorded; the mirror has none of its interval
    UNDO_DONE = 1  # undo complete and durable; the mirror may hold part of the interval
    APPLIED = 2  # the mirror holds the checkpoint (or a later one)


@dataclass
class CheckpointState:
    checkpoint: Checkpoint
    status: Status
    attempt: int  # undo capture attempts begun (the last one is the one that counts)
    own_seq: bool = False  # the checkpoint's seq is its own, not that of a redo record

    @property
    def last_redo_seq(self) -> int:
        return self.checkpoint.seq - 1 if self.own_seq else self.checkpoint.seq

    @property
    def id(self) -> int:
        return self.checkpoint.id


@dataclass
class SegmentSummary:
    """What a segment holds that may keep it alive."""

    redo: dict[int, tuple[int, int]] = field(default_factory=dict)  # epoch -> (min, max) seq
    undo: set[tuple[int, int]] = field(default_factory=set)  # (interval, attempt)


class StateError(ValueError):
    """A record that contradicts the ones before it."""


class JournalState:
    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        # Bumped by every completed rollback: redo records carry it, so those of a history that
        # was rolled back are never mistaken for the new writes reusing their sequence numbers.
        self.epoch = 0
        self.next_checkpoint_id = 1  # ids are never reused, even after a rollback
        self.appended_seq = 0
        self.applied_seq = 0  # seq of the newest APPLIED checkpoint
        self.pending_bytes = 0  # redo written after the newest checkpoint
        self.rollback_to: int | None = None
        self.checkpoints: list[CheckpointState] = []
        self._by_id: dict[int, CheckpointState] = {}  # replay looks one up per UNDO record
        self.disks: dict[int, int] = {}
        self.segments: dict[int, SegmentSummary] = {}
        # The earlier segments the last snapshot replayed said were needed (see missing()), and
        # their final sizes.
        self.listed: dict[int, SegmentSummary] = {}
        self.listed_sizes: dict[int, int] = {}
        self.undo = UndoIndex(block_size)

    # --- queries --------------------------------------------------------------------------

    def find(self, checkpoint_id: int) -> CheckpointState | None:
        return self._by_id.get(checkpoint_id)

    def _set_checkpoints(self, checkpoints: list[CheckpointState]) -> None:
        self.checkpoints = checkpoints
        self._by_id = {c.id: c for c in checkpoints}

    def restorable(self) -> list[CheckpointState]:
        """Checkpoints the mirrors can be brought back to, oldest first."""
        return [
            c
            for c in self.checkpoints
            if c.status == Status.APPLIED and (self.rollback_to is None or c.id <= self.rollback_to)
        ]

    def predecessor(self, checkpoint_id: int) -> CheckpointState | None:
        previous = None
        for state in self.checkpoints:
            if state.id == checkpoint_id:
                return previous
            previous = state
        return None

    def needed_undo(self) -> dict[int, int]:
        """interval -> attempt of the undo still needed: every kept interval but the oldest
        (its undo leads to a checkpoint that is no longer kept)."""
        return {c.id: c.attempt for c in self.checkpoints[1:]}

    def redo_segments(self) -> set[int]:
        """Segments holding redo not yet applied to the mirrors."""
        live = set()
        for number, summary in self.segments.items():
            redo = summary.redo.get(self.epoch)
            if redo is not None and redo[1] > self.applied_seq:
                live.add(number)
        return live

    def live_segments(self) -> set[int]:
        """Segments holding a record still needed; any other can be deleted (every segment's
        metadata is repeated in the snapshot that starts the next one)."""
        needed = set(self.needed_undo().items())
        return {n for n, summary in self.segments.items() if self._needs(summary, needed)}

    def _needs(self, summary: SegmentSummary, needed: set[tuple[int, int]]) -> str:
        """What of a segment's records is still needed ("" if nothing); ``needed``: the
        (interval, attempt) pairs of the undo still needed."""
        redo = summary.redo.get(self.epoch)
        if redo is not None and redo[1] > self.applied_seq:
            return f"redo up to seq {redo[1]} not yet on the mirrors"
        intervals = sorted(i for i, a in summary.undo & needed)
        if intervals:
            return f"the undo of checkpoint {', '.join(map(str, intervals))}"
        return ""

    def missing(self, present: set[int]) -> dict[int, str]:
        """Segments the last snapshot listed as needed that are not ``present`` and are still
        needed now that every record was replayed (a segment the journal deleted had become
        unneeded by a durable record first): segment -> what it held."""
        needed = set(self.needed_undo().items())
        found = {}
        for number, summary in self.listed.items():
            if number not in present and (need := self._needs(summary, needed)):
                found[number] = need
        return found

    def snapshot(self, segment: int, sizes: Mapping[int, int] | None = None) -> Snapshot:
        """The metadata that starts segment ``segment``; ``sizes``: the segments' sizes (those
        before it are final), recorded with the ones still needed."""
        needed = set(self.needed_undo().items())
        return Snapshot(
            segment=segment,
            block_size=self.block_size,
            epoch=self.epoch,
            next_checkpoint_id=self.next_checkpoint_id,
            appended_seq=self.appended_seq,
            applied_seq=self.applied_seq,
            pending_bytes=self.pending_bytes,
            rollback_to=self.rollback_to,
            checkpoints=tuple(
                SnapshotCheckpoint(
                    c.id,
                    c.checkpoint.seq,
                    c.checkpoint.time_ns,
                    c.checkpoint.tag,
                    c.checkpoint.description,
                    int(c.status),
                    c.attempt,
                    c.own_seq,
                )
                for c in self.checkpoints
            ),
            disks=tuple(sorted(self.disks.items())),
            segments=tuple(
                SnapshotSegment(
                    number,
                    tuple((e, lo, hi) for e, (lo, hi) in sorted(summary.redo.items())),
                    tuple(sorted(summary.undo)),
                    (sizes or {}).get(number, 0),
                )
                for number, summary in sorted(self.segments.items())
                if number < segment and self._needs(summary, needed)
            ),
        )

    # --- changes not in the log -------------------------------------------------------------

    def forget_segments(self, numbers: list[int]) -> None:
        for number in numbers:
            self.segments.pop(number, None)

    def abort_undo(self, checkpoint_id: int) -> None:
        """An undo capture was cut out of the log (no space): back to NEW, mirror untouched."""
        state = self.find(checkpoint_id)
        if state is not None:
            state.status = Status.NEW
        self.undo.drop(checkpoint_id)

    # --- the log ------------------------------------------------------------------------------

    def apply(self, record: Record, location: Location, size: int) -> None:
        summary = self.segments.setdefault(location.segment, SegmentSummary())
        match record:
            case Write() | Zero():
                low, high = summary.redo.get(record.epoch, (record.seq, record.seq))
                summary.redo[record.epoch] = (min(low, record.seq), max(high, record.seq))
                if record.epoch == self.epoch:
                    self.appended_seq = record.seq
                    self.pending_bytes += size
            case Undo():
                summary.undo.add((record.interval, record.attempt))
                state = self.find(record.interval)
                if state is not None and state.attempt == record.attempt:
                    ref = UndoRef(
                        location, record.disk, record.offset, record.length, record.data is None
                    )
                    self.undo.add(record.interval, record.attempt, ref)
            case Snapshot():
                self._load(record)
            case SyncMark():
                pass
            case _:
                self._apply_control(record)

    def _apply_control(self, record: Record) -> None:
        """Records about checkpoints: their life from CHECKPOINT to RECLAIM or rollback."""
        match record:
            case CheckpointMark():
                checkpoint = Checkpoint(
                    record.id, record.seq, record.time_ns, record.tag, record.description
                )
                state = CheckpointState(checkpoint, Status.NEW, 0, record.own_seq)
                self._set_checkpoints([*self.checkpoints, state])
                self.next_checkpoint_id = record.id + 1
                self.appended_seq = record.seq
                self.pending_bytes = 0
            case UndoBegin():
                self._require(record.interval).attempt = record.attempt
                self.undo.begin(record.interval, record.attempt)
            case UndoDone():
                state = self._require(record.interval)
                if state.attempt != record.attempt:
                    raise StateError(f"UNDO_DONE of attempt {record.attempt}, not {state.attempt}")
                state.status = Status.UNDO_DONE
            case Applied():
                state = self._require(record.interval)
                state.status = Status.APPLIED
                self.applied_seq = state.checkpoint.seq
            case Rollback():
                self._require(record.target)
                self.rollback_to = record.target
            case RollbackDone():
                target = self._require(record.target)
                self._set_checkpoints([c for c in self.checkpoints if c.id <= record.target])
                self.undo.retain({c.id: c.attempt for c in self.checkpoints})
                self.epoch += 1
                self.appended_seq = self.applied_seq = target.checkpoint.seq
                self.pending_bytes = 0
                self.rollback_to = None
            case Reclaim():
                self._set_checkpoints([c for c in self.checkpoints if c.id >= record.oldest_kept])
                self.undo.retain(self.needed_undo())

    def _require(self, checkpoint_id: int) -> CheckpointState:
        state = self.find(checkpoint_id)
        if state is None:
            raise StateError(f"record for checkpoint {checkpoint_id}, which is not in the journal")
        return state

    def _load(self, snap: Snapshot) -> None:
        if snap.block_size != self.block_size:
            raise ValueError(
                f"the journal uses {snap.block_size}-byte blocks, not {self.block_size}"
            )
        self.epoch = snap.epoch
        self.next_checkpoint_id = snap.next_checkpoint_id
        self.appended_seq = snap.appended_seq
        self.applied_seq = snap.applied_seq
        self.pending_bytes = snap.pending_bytes
        self.rollback_to = snap.rollback_to
        self._set_checkpoints(
            [
                CheckpointState(
                    Checkpoint(c.id, c.seq, c.time_ns, c.tag, c.description),
                    Status(c.status),
                    c.attempt,
                    c.own_seq,
                )
                for c in snap.checkpoints
            ]
        )
        self.disks = dict(snap.disks)
        self.listed = {
            s.number: SegmentSummary({e: (lo, hi) for e, lo, hi in s.redo}, set(s.undo))
            for s in snap.segments
        }
        self.listed_sizes = {s.number: s.size for s in snap.segments if s.size}
        # Undo records before a reclaimed gap may belong to intervals given up since.
        self.undo.retain({c.id: c.attempt for c in self.checkpoints})
