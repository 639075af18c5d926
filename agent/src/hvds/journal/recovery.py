"""Opening a journal: scan every segment, check every record, rebuild the state.

Damage policy:

* The last segment may end in a torn write (power cut or kill -9 in the middle of an append):
  the damaged record and everything after it are cut off and reported in ``JournalRecovery``.
  Nothing cut off had been acknowledged, because acknowledgements follow an fsync and a torn
  record was, by the evidence in the records after it, never fsynced
  (``segments.classify_damage``).
* Damage anywhere else -- in a segment that was fsynced before the next one was started, or in
  a record of the last segment that had been fsynced -- raises ``JournalCorrupt`` with the file
  and offset. It is not truncated: cutting the log there would silently drop writes the source
  was told were safe, and the undo of intervals the mirrors already hold, leaving mirrors that
  no checkpoint describes. Such a journal needs an operator (and a resync of the group).
"""

from __future__ import annotations

import logging
from pathlib import Path

from hvds.journal.model import JournalCorrupt, JournalRecovery, TruncatedTail
from hvds.journal.records import RecordFormatError, Snapshot, decode_payload
from hvds.journal.segments import (
    Location,
    SegmentScan,
    SegmentStore,
    classify_damage,
    fsync_directory,
    list_segments,
    segment_path,
    truncate_file,
)
from hvds.journal.state import JournalState, StateError

log = logging.getLogger(__name__)


def recover(directory: Path, store: SegmentStore, state: JournalState) -> JournalRecovery:
    """Replay ``directory``'s segments into ``state``; hand the survivors to ``store``."""
    report = JournalRecovery()
    segments = list_segments(directory)
    sizes: dict[int, int] = {}
    bases: dict[int, int] = {}
    for index, (number, path) in enumerate(segments):
        last = index == len(segments) - 1
        scan = SegmentScan(path)
        base = _replay(number, scan, state, report)
        if scan.damage is not None:
            _cut_torn_tail(scan, last, base, report)
        if not base:
            # Not even its snapshot made it: the segment was being started when we stopped, and
            # nothing in it was ever acknowledged.
            if not last:
                raise JournalCorrupt(path, 0, "empty segment")
            path.unlink()
            fsync_directory(directory)
            report.removed_segments.append(path)
            _note(report, f"{path}: removed, it held no complete record")
            continue
        sizes[number] = scan.end
        bases[number] = base
        report.segments += 1
    for number, held in sorted(state.missing(set(sizes)).items()):
        # Reclaimed segments go only once a durable record made them unneeded: this one is lost.
        raise JournalCorrupt(segment_path(directory, number), 0, f"segment missing; it held {held}")
    for number, size in sorted(state.listed_sizes.items()):
        # Complete when the next one was started: shorter now means records were lost, even if
        # it ends on a record boundary (nothing else would show it).
        if number in sizes and sizes[number] != size:
            raise JournalCorrupt(
                segment_path(directory, number),
                sizes[number],
                f"segment ends at {sizes[number]}; it held {size} bytes when it was complete",
            )
    if sizes:
        store.adopt(sizes, bases)
    return report


def _replay(number: int, scan: SegmentScan, state: JournalState, report: JournalRecovery) -> int:
    """Apply a segment's valid records to ``state``; returns the size of its snapshot (0: none)."""
    path = scan.path
    base = 0
    for item in scan:
        try:
            record = decode_payload(item.header.type, item.header.flags, item.payload)
        except RecordFormatError as exc:
            raise JournalCorrupt(path, item.offset, str(exc)) from exc
        if item.offset == 0:
            if not isinstance(record, Snapshot) or record.segment != number:
                raise JournalCorrupt(path, 0, "segment does not start with its snapshot")
            base = item.size
        elif isinstance(record, Snapshot):
            raise JournalCorrupt(path, item.offset, "snapshot inside a segment")
        try:
            state.apply(record, Location(number, item.offset), item.size)
        except StateError as exc:
            raise JournalCorrupt(path, item.offset, str(exc)) from exc
        report.records += 1
    return base


def _cut_torn_tail(scan: SegmentScan, last: bool, base: int, report: JournalRecovery) -> None:
    """Cut a torn tail off the last segment, or raise JournalCorrupt (see the module doc)."""
    path, damage = scan.path, scan.damage
    assert damage is not None
    if not last:
        raise JournalCorrupt(
            path, damage.offset, f"{damage.reason} in a segment completed and fsynced"
        )
    verdict = classify_damage(path, damage)
    if not verdict.torn:
        raise JournalCorrupt(
            path,
            damage.offset,
            f"{damage.reason}; the record at {verdict.evidence_offset} was written after "
            f"{verdict.evidence_synced} bytes had been fsynced, so this one was durable",
        )
    dropped = path.stat().st_size - damage.offset
    report.truncated = TruncatedTail(
        path, damage.offset, dropped, verdict.records_after, damage.reason
    )
    _note(
        report,
        f"{path}: torn tail at offset {damage.offset} ({damage.reason}): "
        f"cut {dropped} bytes ({verdict.records_after} whole records after it)",
    )
    if base:
        truncate_file(path, damage.offset)


def _note(report: JournalRecovery, message: str) -> None:
    report.messages.append(message)
    log.warning("journal recovery: %s", message)
