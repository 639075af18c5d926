"""The journal's public value types, its report of what recovery found, and its errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class DiskSpec:
    """One disk of the protection group and the raw image (file or device) that mirrors it."""

    id: int
    name: str
    size: int
    mirror: Path


@dataclass(frozen=True)
class JournalWrite:
    seq: int
    disk: int
    offset: int
    data: bytes | bytearray


@dataclass(frozen=True)
class JournalZero:
    seq: int
    disk: int
    offset: int
    length: int


JournalEntry = JournalWrite | JournalZero


@dataclass(frozen=True)
class Checkpoint:
    """A consistent cut: every entry up to and including ``seq``."""

    id: int
    seq: int
    time_ns: int
    tag: str = ""
    description: str = ""


@dataclass(frozen=True)
class JournalUsage:
    bytes_used: int  # every segment file, live or not yet reclaimed
    size_limit: int
    pending_redo_bytes: int  # entries appended after the latest checkpoint
    checkpoints: int  # restorable checkpoints kept
    oldest_checkpoint_time_ns: int | None
    segments: int


@dataclass(frozen=True)
class TruncatedTail:
    """The torn end of the last segment that recovery cut off."""

    path: Path
    offset: int
    dropped_bytes: int
    dropped_records: int  # whole records found after the tear (written, never made durable)
    reason: str


@dataclass
class JournalRecovery:
    """What opening the journal found and did. ``clean`` when there was nothing to repair."""

    segments: int = 0
    records: int = 0
    truncated: TruncatedTail | None = None
    removed_segments: list[Path] = field(default_factory=list)
    # Checkpoints whose undo capture had begun but not finished: the partial undo was discarded
    # (the mirror had not been touched) and the interval applied from scratch.
    discarded_undo: list[int] = field(default_factory=list)
    # Checkpoints whose undo was complete but whose APPLIED marker was missing: the redo was
    # applied to the mirror again (it is idempotent).
    reapplied: list[int] = field(default_factory=list)
    # Checkpoints recorded but never applied (no undo capture had begun).
    applied: list[int] = field(default_factory=list)
    rollback_completed: int | None = None
    # Checkpoints that could not be applied for lack of space; retried by the next operation.
    pending_apply: list[int] = field(default_factory=list)
    last_seq: int = 0
    messages: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (
            self.truncated
            or self.removed_segments
            or self.discarded_undo
            or self.reapplied
            or self.applied
            or self.rollback_completed is not None
            or self.pending_apply
        )


class JournalError(Exception):
    """Base of the journal's errors."""


# The three names below are the journal's API as specified (no Error suffix, like JournalFull).
class JournalFull(JournalError):  # noqa: N818
    """The entries cannot be stored: over the size limit after reclaiming, or the disk is full.

    Nothing of the refused operation was kept; what the journal held before is intact.
    """


class MirrorFull(JournalFull):
    """The mirrors' file system (their datastore) has no room: the journal holds the entries,
    but a checkpoint cannot be brought to the mirrors until there is room. Not the journal's
    own space: freeing journal space or raising its limit does not help."""


class JournalCorrupt(JournalError):  # noqa: N818
    """A record that was made durable fails its check: the journal cannot be trusted past it."""

    def __init__(self, path: Path, offset: int, reason: str) -> None:
        super().__init__(f"{path}: corrupt record at offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


class CheckpointUnavailable(JournalError, LookupError):  # noqa: N818
    """The checkpoint is not (or no longer) restorable from the journal."""
