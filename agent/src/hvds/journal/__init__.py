"""The target-site journal: redo log, checkpoints, mirrors with undo, point-in-time reads.

Modules, one job each: ``records`` (the record encoding, no I/O), ``segments`` (segment files),
``state`` (metadata as a function of the log, no I/O), ``undo`` (where undo data is and how a
past checkpoint is read from it), ``mirror`` (the mirror images), ``recovery`` (opening after a
crash) and ``journal`` (the ``Journal`` that ties them together).
"""

from hvds.journal.journal import Journal
from hvds.journal.model import (
    Checkpoint,
    CheckpointUnavailable,
    DiskSpec,
    JournalCorrupt,
    JournalEntry,
    JournalError,
    JournalFull,
    JournalRecovery,
    JournalUsage,
    JournalWrite,
    JournalZero,
    MirrorFull,
    TruncatedTail,
)

__all__ = [
    "Checkpoint",
    "CheckpointUnavailable",
    "DiskSpec",
    "Journal",
    "JournalCorrupt",
    "JournalEntry",
    "JournalError",
    "JournalFull",
    "JournalRecovery",
    "JournalUsage",
    "JournalWrite",
    "JournalZero",
    "MirrorFull",
    "TruncatedTail",
]
