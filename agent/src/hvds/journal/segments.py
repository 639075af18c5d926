"""Segment files: the journal's log, cut into numbered files so that old parts can be deleted.

A segment is ``<number>.hvj`` (numbers increase, gaps are allowed once segments in the middle
were reclaimed) holding records back to back; the first is a SNAPSHOT of the journal's metadata,
so a segment never needs the ones before it to be understood. Only the last segment is written.
Before a new one is started the current one is fsynced, so every segment but the last is
complete and durable: damage there is corruption, never a torn write.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from hvds.journal.model import JournalCorrupt, JournalFull
from hvds.journal.records import (
    HEADER,
    MAGIC_BYTES,
    Header,
    Record,
    Snapshot,
    SyncMark,
    crc_ok,
    encode,
    encode_header,
    encode_payload,
    parse_header,
)

SUFFIX = ".hvj"
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


@dataclass(frozen=True, slots=True, order=True)
class Location:
    segment: int
    offset: int


@dataclass(frozen=True, slots=True)
class Mark:
    """A point in the log to cut back to if an operation cannot complete."""

    segment: int
    offset: int


def segment_path(directory: Path, number: int) -> Path:
    return directory / f"{number:012d}{SUFFIX}"


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    found = []
    for path in directory.iterdir():
        if path.suffix == SUFFIX and path.stem.isdigit():
            found.append((int(path.stem), path))
    return sorted(found)


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """Write all of ``data`` at ``offset``. Module-level so tests can inject ENOSPC."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def fsync_directory(directory: Path) -> None:
    # A created, renamed or deleted file is only durable once its directory entry is.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- scanning (recovery) ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScannedRecord:
    offset: int
    size: int
    header: Header
    payload: bytes


@dataclass(frozen=True, slots=True)
class Damage:
    offset: int
    reason: str


class SegmentScan:
    """The valid records of a segment file from its start, up to the first damaged one.

    After iterating, ``end`` is the offset after the last valid record and ``damage`` says what
    stopped the scan, if it was not the end of the file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.end = 0
        self.damage: Damage | None = None

    def __iter__(self) -> Iterator[ScannedRecord]:
        with self.path.open("rb", buffering=1 << 20) as f:
            pos = 0
            while True:
                raw = f.read(HEADER.size)
                if not raw:
                    return
                if len(raw) < HEADER.size:
                    self.damage = Damage(pos, f"truncated header ({len(raw)} bytes)")
                    return
                header = parse_header(raw)
                if header is None:
                    self.damage = Damage(pos, "not a record header")
                    return
                payload = f.read(header.length)
                if len(payload) < header.length:
                    self.damage = Damage(
                        pos, f"truncated payload ({len(payload)} of {header.length} bytes)"
                    )
                    return
                if not crc_ok(raw, header, payload):
                    self.damage = Damage(pos, "CRC mismatch")
                    return
                size = HEADER.size + header.length
                yield ScannedRecord(pos, size, header, payload)
                pos += size
                self.end = pos


@dataclass(frozen=True, slots=True)
class DamageVerdict:
    torn: bool
    records_after: int  # valid records found after the damage
    evidence_offset: int | None  # a record after the damage proving it had been fsynced
    evidence_synced: int


def classify_damage(path: Path, damage: Damage) -> DamageVerdict:
    """Torn write or corruption? Decided from the records that follow the damage.

    Writes that were never fsynced may reach the disk in any order and in part, so a crash can
    leave garbage followed by valid records: that alone proves nothing. What does is a later
    record's ``synced`` field: when it was written, the segment was durable up to ``synced``.
    If that is past the damage, the damaged record had been fsynced (the source may have been
    told it was safe) and what we see is corruption. Otherwise it is a torn tail.
    """
    with path.open("rb") as f:
        f.seek(damage.offset)
        tail = f.read()
    records = 0
    best_synced = 0
    evidence: int | None = None
    pos = tail.find(MAGIC_BYTES, 1)
    while 0 < pos <= len(tail) - HEADER.size:
        raw = tail[pos : pos + HEADER.size]
        header = parse_header(raw)
        end = pos + HEADER.size + (header.length if header else 0)
        if (
            header is not None
            and end <= len(tail)
            and crc_ok(raw, header, tail[pos + HEADER.size : end])
        ):
            records += 1
            if header.synced > best_synced:
                best_synced = header.synced
                evidence = damage.offset + pos
            pos = tail.find(MAGIC_BYTES, end)
            continue
        pos = tail.find(MAGIC_BYTES, pos + 1)
    torn = best_synced <= damage.offset
    return DamageVerdict(torn, records, None if torn else evidence, best_synced)


def truncate_file(path: Path, length: int) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        os.ftruncate(fd, length)
        os.fdatasync(fd)
    finally:
        os.close(fd)


# --- the live store ----------------------------------------------------------------------------


class SegmentStore:
    """Appends records to the last segment, reads records anywhere, deletes whole segments."""

    def __init__(self, directory: Path, segment_bytes: int) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.sizes: dict[int, int] = {}
        self._bases: dict[int, int] = {}  # end of each segment's snapshot record
        self._readers: dict[int, int] = {}
        self.current = 0
        self._fd = -1
        self._synced = 0  # bytes of the current segment known durable
        self._dirty = False  # records written since the last fsync

    @property
    def bytes_used(self) -> int:
        return sum(self.sizes.values())

    @property
    def snapshot_bytes(self) -> int:
        """Size of the current segment's snapshot: about what the next roll will write."""
        return self._bases.get(self.current, 0)

    def holds_only_snapshot(self, number: int) -> bool:
        return self.sizes[number] <= self._bases[number]

    def adopt(self, sizes: dict[int, int], bases: dict[int, int]) -> None:
        """Take over the segments recovery found; append to the last."""
        self.sizes = dict(sizes)
        self._bases = dict(bases)
        self.current = max(sizes)
        self._fd = os.open(segment_path(self.directory, self.current), os.O_RDWR | os.O_CLOEXEC)
        # What recovery found may still be only in the page cache (after kill -9): make it
        # durable before anyone is told what the journal holds.
        os.fdatasync(self._fd)
        fsync_directory(self.directory)
        self._synced = self.sizes[self.current]

    def create(self, number: int, snapshot: Snapshot) -> None:
        """Start segment ``number`` with ``snapshot``; it becomes the current one."""
        path = segment_path(self.directory, number)
        data = encode(snapshot, 0)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        try:
            pwrite_all(fd, data, 0)
            os.fdatasync(fd)
            fsync_directory(self.directory)
        except OSError as exc:
            os.close(fd)
            path.unlink(missing_ok=True)
            if exc.errno in _NO_SPACE:
                raise JournalFull(f"cannot start segment {path}: {exc.strerror}") from exc
            raise
        if self._fd >= 0:
            self._readers[self.current] = self._fd
        self.current = number
        self._fd = fd
        self.sizes[number] = len(data)
        self._bases[number] = len(data)
        self._synced = len(data)
        self._dirty = False

    def roll(self, snapshot: Callable[[int], Snapshot]) -> None:
        # The current segment must be complete on disk before a later one exists: recovery
        # treats any damage outside the last segment as corruption.
        if self._dirty:
            os.fdatasync(self._fd)
            self._dirty = False
            self._synced = self.sizes[self.current]
        number = self.current + 1
        self.create(number, snapshot(number))

    def append(
        self, records: Sequence[Record], snapshot: Callable[[int], Snapshot]
    ) -> list[tuple[Location, int]]:
        """Write ``records`` together; all or nothing (the file is cut back on failure).

        Returns each record's location and size. Starts a new segment first when the records
        would overflow the current one (unless it holds nothing yet: a record larger than a
        segment gets a segment of its own).
        """
        payloads = [encode_payload(r) for r in records]
        total = sum(HEADER.size + len(p) for _, _, p in payloads)
        if self.sizes[self.current] + total > self.segment_bytes and not self.holds_only_snapshot(
            self.current
        ):
            self.roll(snapshot)
        start = pos = self.sizes[self.current]
        parts: list[bytes] = []
        placed: list[tuple[Location, int]] = []
        for kind, flags, payload in payloads:
            parts.append(encode_header(kind, flags, payload, self._synced))
            parts.append(payload)
            size = HEADER.size + len(payload)
            placed.append((Location(self.current, pos), size))
            pos += size
        try:
            pwrite_all(self._fd, b"".join(parts), start)
        except OSError as exc:
            # Leave no partial record behind: the journal stays exactly as it was.
            os.ftruncate(self._fd, start)
            if exc.errno in _NO_SPACE:
                raise JournalFull(f"journal file system full: {exc.strerror}") from exc
            raise
        self.sizes[self.current] = pos
        self._dirty = True
        return placed

    def sync(self) -> None:
        """Make every record written so far durable."""
        if not self._dirty:
            return
        os.fdatasync(self._fd)
        self._dirty = False
        self._synced = self.sizes[self.current]
        # Evidence for recovery that the bytes before it were fsynced (see classify_damage).
        # Not itself fsynced: it only matters if it happens to survive.
        mark = encode(SyncMark(), self._synced)
        try:
            pwrite_all(self._fd, mark, self._synced)
        except OSError:
            os.ftruncate(self._fd, self._synced)
            return
        self.sizes[self.current] += len(mark)

    def mark(self) -> Mark:
        return Mark(self.current, self.sizes[self.current])

    def truncate_to(self, mark: Mark) -> list[int]:
        """Cut the log back to ``mark``; returns the segments deleted to get there."""
        deleted = sorted((n for n in self.sizes if n > mark.segment), reverse=True)
        for number in deleted:
            if number == self.current:
                os.close(self._fd)
                self._fd = -1
            self._forget(number)
            segment_path(self.directory, number).unlink()
        if deleted:
            # Gone for good before the mark's segment is cut: a later one back after a crash
            # would list it at its old size (recovery checks the sizes of complete segments).
            fsync_directory(self.directory)
        if self.current != mark.segment:
            reader = self._readers.pop(mark.segment, -1)
            if reader >= 0:
                os.close(reader)
            path = segment_path(self.directory, mark.segment)
            self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            self.current = mark.segment
        os.ftruncate(self._fd, mark.offset)
        os.fdatasync(self._fd)
        self.sizes[self.current] = mark.offset
        self._synced = mark.offset
        self._dirty = False
        return deleted

    def delete(self, number: int) -> None:
        """Delete a whole segment other than the current one (caller fsyncs the directory)."""
        if number == self.current:
            raise ValueError("the current segment cannot be deleted")
        self._forget(number)
        segment_path(self.directory, number).unlink()

    def _forget(self, number: int) -> None:
        reader = self._readers.pop(number, -1)
        if reader >= 0:
            os.close(reader)
        del self.sizes[number]
        del self._bases[number]

    def _reader(self, number: int) -> int:
        if number == self.current:
            return self._fd
        fd = self._readers.get(number)
        if fd is None:
            fd = os.open(segment_path(self.directory, number), os.O_RDONLY | os.O_CLOEXEC)
            self._readers[number] = fd
        return fd

    def read(self, location: Location) -> tuple[Header, bytes]:
        """The record at ``location``, its CRC checked (bit rot since it was written raises)."""
        fd = self._reader(location.segment)
        raw = os.pread(fd, HEADER.size, location.offset)
        header = parse_header(raw) if len(raw) == HEADER.size else None
        if header is None:
            raise self._corrupt(location, "not a record header")
        payload = os.pread(fd, header.length, location.offset + HEADER.size)
        if len(payload) != header.length or not crc_ok(raw, header, payload):
            raise self._corrupt(location, "CRC mismatch")
        return header, payload

    def headers(self, number: int) -> Iterator[tuple[Location, Header]]:
        """The headers of a segment's records in order (payloads unread, unchecked)."""
        pos = 0
        fd = self._reader(number)
        while pos < self.sizes[number]:
            raw = os.pread(fd, HEADER.size, pos)
            header = parse_header(raw) if len(raw) == HEADER.size else None
            if header is None:
                raise self._corrupt(Location(number, pos), "not a record header")
            yield Location(number, pos), header
            pos += HEADER.size + header.length

    def _corrupt(self, location: Location, reason: str) -> JournalCorrupt:
        return JournalCorrupt(
            segment_path(self.directory, location.segment), location.offset, reason
        )

    def sync_directory(self) -> None:
        fsync_directory(self.directory)

    def close(self, clean: bool) -> None:
        """Close every file; ``clean`` also makes the last SYNC_MARK durable."""
        try:
            if clean and self._fd >= 0:
                self.sync()
                os.fdatasync(self._fd)
        finally:
            for fd in self._readers.values():
                os.close(fd)
            self._readers.clear()
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
