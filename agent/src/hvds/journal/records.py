"""Journal records encoded and decoded with no I/O.

Every record is a fixed 24-byte header, then its payload:

    magic u32 | type u8 | flags u8 | reserved u16 | length u32 | synced u64 | crc u32

``length`` is the payload's length. ``crc`` is the CRC32C of the first 20 header bytes and the
payload, so a flipped bit anywhere in the record, or a header pointing at the wrong amount of
payload, fails the check. ``synced`` is how many bytes of this segment were known durable
(fsynced) when the record was written: recovery uses it as evidence that a damaged record had
been made durable, which a torn write never was (see ``segments.classify_damage``).

All integers are big-endian. Payloads by type are described on each record class.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import crc32c

MAGIC = 0x48564A52  # "HVJR"
MAGIC_BYTES = MAGIC.to_bytes(4, "big")
HEADER = struct.Struct(">IBBHIQI")
_CRC_START = HEADER.size - 4  # the crc covers the header bytes before it
# Refuse lengths beyond the largest record we ever write (a link frame carries at most 32 MiB):
# a damaged length must not make recovery read gigabytes.
MAX_PAYLOAD = 64 * 1024 * 1024
FORMAT_VERSION = 1


class RecordType(IntEnum):
    SNAPSHOT = 1  # first record of every segment: the journal's metadata at that point
    WRITE = 2  # redo: data written at offset
    ZERO = 3  # redo: a range that now reads as zeroes
    CHECKPOINT = 4  # a consistent cut covering every redo record before it
    UNDO_BEGIN = 5  # undo capture of an interval starts (a new attempt)
    UNDO = 6  # pre-interval content of whole blocks of a mirror
    UNDO_DONE = 7  # the interval's undo is complete and durable: the mirror may now change
    APPLIED = 8  # the interval's redo is on the mirror, which was flushed
    ROLLBACK = 9  # a rollback to a checkpoint has started (durable decision)
    ROLLBACK_DONE = 10  # the mirrors hold that checkpoint; the history after it is gone
    RECLAIM = 11  # checkpoints before ``oldest_kept`` are given up
    SYNC_MARK = 12  # written after each fsync so that the next recovery sees it happened


class RecordFlag:
    ZERO = 0x01  # an UNDO record whose blocks were all zeroes: no data follows
    OWN_SEQ = 0x02  # a CHECKPOINT that takes a sequence number of its own (no redo has it)


@dataclass(frozen=True, slots=True)
class Header:
    type: int
    flags: int
    length: int
    synced: int
    crc: int


def encode_header(kind: int, flags: int, payload: bytes, synced: int) -> bytes:
    head = HEADER.pack(MAGIC, kind, flags, 0, len(payload), synced, 0)[:_CRC_START]
    crc = crc32c.crc32c(payload, crc32c.crc32c(head))
    return head + crc.to_bytes(4, "big")


def parse_header(raw: bytes) -> Header | None:
    """The header in ``raw`` (at least HEADER.size bytes), or None if it cannot be one."""
    magic, kind, flags, reserved, length, synced, crc = HEADER.unpack_from(raw)
    if magic != MAGIC or reserved != 0 or length > MAX_PAYLOAD:
        return None
    if kind not in RecordType.__members__.values():
        return None
    return Header(kind, flags, length, synced, crc)


def crc_ok(raw_header: bytes, header: Header, payload: bytes | memoryview) -> bool:
    return crc32c.crc32c(payload, crc32c.crc32c(raw_header[:_CRC_START])) == header.crc


# --- payloads ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SnapshotCheckpoint:
    id: int
    seq: int
    time_ns: int
    tag: str
    description: str
    status: int  # state.Status
    attempt: int
    own_seq: bool


@dataclass(frozen=True, slots=True)
class SnapshotSegment:
    """An earlier segment still needed when a snapshot was written, and what it holds: so that
    recovery can tell a segment that is missing from one that was deleted as no longer needed."""

    number: int
    redo: tuple[tuple[int, int, int], ...]  # (epoch, lowest seq, highest seq)
    undo: tuple[tuple[int, int], ...]  # (interval, attempt)
    size: int = 0  # its final size in bytes (0: not known)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The journal's metadata when a segment was started; JSON payload (small, rare)."""

    segment: int
    block_size: int
    epoch: int
    next_checkpoint_id: int
    appended_seq: int
    applied_seq: int
    pending_bytes: int
    rollback_to: int | None
    checkpoints: tuple[SnapshotCheckpoint, ...]
    disks: tuple[tuple[int, int], ...]  # (id, size)
    segments: tuple[SnapshotSegment, ...] = ()  # absent in journals written before it

    def encode(self) -> tuple[int, int, bytes]:
        return RecordType.SNAPSHOT, 0, _encode_snapshot(self)

    @staticmethod
    def decode(flags: int, payload: bytes) -> Snapshot:
        return _decode_snapshot(payload)


_REDO = struct.Struct(">IIQQ")  # epoch, disk, seq, offset
_ZERO = struct.Struct(">IIQQQ")  # epoch, disk, seq, offset, length
_CHECKPOINT = struct.Struct(">QQQHH")  # id, seq, time_ns, tag length, description length
_INTERVAL_ATTEMPT = struct.Struct(">QI")  # interval (checkpoint id), attempt
_UNDO = struct.Struct(">QIIQI")  # interval, attempt, disk, offset, length
_ID = struct.Struct(">Q")
# Tag and description, each: every snapshot repeats them for every checkpoint kept.
MAX_TEXT = 1024
# The largest write one record carries (a link frame carries at most 32 MiB).
MAX_WRITE = 32 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Write:
    """WRITE payload: epoch u32 | disk u32 | seq u64 | offset u64 | data."""

    epoch: int
    disk: int
    seq: int
    offset: int
    data: bytes

    @property
    def length(self) -> int:
        return len(self.data)

    def encode(self) -> tuple[int, int, bytes]:
        head = _REDO.pack(self.epoch, self.disk, self.seq, self.offset)
        return RecordType.WRITE, 0, head + self.data

    @staticmethod
    def decode(flags: int, payload: bytes) -> Write:
        epoch, disk, seq, offset = _REDO.unpack_from(payload)
        return Write(epoch, disk, seq, offset, payload[_REDO.size :])


@dataclass(frozen=True, slots=True)
class Zero:
    """ZERO payload: epoch u32 | disk u32 | seq u64 | offset u64 | length u64."""

    epoch: int
    disk: int
    seq: int
    offset: int
    length: int

    def encode(self) -> tuple[int, int, bytes]:
        payload = _ZERO.pack(self.epoch, self.disk, self.seq, self.offset, self.length)
        return RecordType.ZERO, 0, payload

    @staticmethod
    def decode(flags: int, payload: bytes) -> Zero:
        return Zero(*_ZERO.unpack(payload))


@dataclass(frozen=True, slots=True)
class CheckpointMark:
    """CHECKPOINT payload: id u64 | seq u64 | time_ns u64 | tag len u16 | desc len u16 | text.

    Flag OWN_SEQ: ``seq`` is the checkpoint's own (the marker took a place in the source's
    sequence); otherwise ``seq`` is that of the last redo record before it.
    """

    id: int
    seq: int
    time_ns: int
    tag: str
    description: str
    own_seq: bool = False

    def encode(self) -> tuple[int, int, bytes]:
        tag, desc = self.tag.encode(), self.description.encode()
        head = _CHECKPOINT.pack(self.id, self.seq, self.time_ns, len(tag), len(desc))
        flags = RecordFlag.OWN_SEQ if self.own_seq else 0
        return RecordType.CHECKPOINT, flags, head + tag + desc

    @staticmethod
    def decode(flags: int, payload: bytes) -> CheckpointMark:
        cid, seq, time_ns, tag_len, desc_len = _CHECKPOINT.unpack_from(payload)
        text = payload[_CHECKPOINT.size :]
        if len(text) != tag_len + desc_len:
            raise ValueError("text length")
        tag, description = text[:tag_len].decode(), text[tag_len:].decode()
        return CheckpointMark(cid, seq, time_ns, tag, description, bool(flags & RecordFlag.OWN_SEQ))


@dataclass(frozen=True, slots=True)
class UndoBegin:
    """UNDO_BEGIN payload: interval u64 | attempt u32."""

    interval: int
    attempt: int

    def encode(self) -> tuple[int, int, bytes]:
        return RecordType.UNDO_BEGIN, 0, _INTERVAL_ATTEMPT.pack(self.interval, self.attempt)

    @staticmethod
    def decode(flags: int, payload: bytes) -> UndoBegin:
        return UndoBegin(*_INTERVAL_ATTEMPT.unpack(payload))


@dataclass(frozen=True, slots=True)
class Undo:
    """UNDO payload: interval u64 | attempt u32 | disk u32 | offset u64 | length u32 | data.

    ``data`` is None for blocks that were all zeroes (flag ZERO, nothing follows).
    """

    interval: int
    attempt: int
    disk: int
    offset: int
    length: int
    data: bytes | None

    def encode(self) -> tuple[int, int, bytes]:
        head = _UNDO.pack(self.interval, self.attempt, self.disk, self.offset, self.length)
        if self.data is None:
            return RecordType.UNDO, RecordFlag.ZERO, head
        return RecordType.UNDO, 0, head + self.data

    @staticmethod
    def decode(flags: int, payload: bytes) -> Undo:
        interval, attempt, disk, offset, length = _UNDO.unpack_from(payload)
        data = payload[_UNDO.size :]
        if flags & RecordFlag.ZERO:
            if data:
                raise ValueError("zero undo with data")
            return Undo(interval, attempt, disk, offset, length, None)
        if len(data) != length:
            raise ValueError("undo length")
        return Undo(interval, attempt, disk, offset, length, data)


@dataclass(frozen=True, slots=True)
class UndoDone:
    """UNDO_DONE payload: interval u64 | attempt u32."""

    interval: int
    attempt: int

    def encode(self) -> tuple[int, int, bytes]:
        return RecordType.UNDO_DONE, 0, _INTERVAL_ATTEMPT.pack(self.interval, self.attempt)

    @staticmethod
    def decode(flags: int, payload: bytes) -> UndoDone:
        return UndoDone(*_INTERVAL_ATTEMPT.unpack(payload))


@dataclass(frozen=True, slots=True)
class Applied:
    """APPLIED payload: interval u64."""

    interval: int

    def encode(self) -> tuple[int, int, bytes]:
        return RecordType.APPLIED, 0, _ID.pack(self.interval)

    @staticmethod
    def decode(flags: int, payload: bytes) -> Applied:
        return Applied(*_ID.unpack(payload))


@dataclass(frozen=True, slots=True)
class Rollback:
    """ROLLBACK payload: target checkpoint id u64."""

    target: int

    def encode(self) -> tuple[int, int, bytes]:
        return RecordType.ROLLBACK, 0, _ID.pack(self.target)

    @staticmethod
    def decode(flags: int, payload: bytes) -> Rollback:
        return Rollback(*_ID.unpack(payload))


@dataclass(frozen=True, slots=True)
class RollbackDone:
    """ROLLBACK_DONE payload: target checkpoint id u64."""

    target: int

    def encode(self) -> tuple[int, int, bytes]:
        return RecordType.ROLLBACK_DONE, 0, _ID.pack(self.target)

    @staticmethod
    def decode(flags: int, payload: bytes) -> RollbackDone:
        return RollbackDone(*_ID.unpack(payload))


@dataclass(frozen=True, slots=True)
class Reclaim:
    """RECLAIM payload: oldest checkpoint id kept u64."""

    oldest_kept: int

    def encode(self) -> tuple[int, int, bytes]:
        return RecordType.RECLAIM, 0, _ID.pack(self.oldest_kept)

    @staticmethod
    def decode(flags: int, payload: bytes) -> Reclaim:
        return Reclaim(*_ID.unpack(payload))


@dataclass(frozen=True, slots=True)
class SyncMark:
    """SYNC_MARK: no payload; its header's ``synced`` is the evidence."""

    def encode(self) -> tuple[int, int, bytes]:
        return RecordType.SYNC_MARK, 0, b""

    @staticmethod
    def decode(flags: int, payload: bytes) -> SyncMark:
        if payload:
            raise ValueError("sync mark with a payload")
        return SyncMark()


Record = (
    Snapshot
    | Write
    | Zero
    | CheckpointMark
    | UndoBegin
    | Undo
    | UndoDone
    | Applied
    | Rollback
    | RollbackDone
    | Reclaim
    | SyncMark
)


class RecordFormatError(ValueError):
    """A payload whose CRC matched but whose content does not parse (a bug, not bit rot)."""


def encode_payload(record: Record) -> tuple[int, int, bytes]:
    """(type, flags, payload bytes) of a record."""
    return record.encode()


def encode(record: Record, synced: int) -> bytes:
    kind, flags, payload = record.encode()
    return encode_header(kind, flags, payload, synced) + payload


def decode_payload(kind: int, flags: int, payload: bytes) -> Record:
    decoder = _DECODERS.get(kind)
    if decoder is None:
        raise RecordFormatError(f"unknown record type {kind}")
    try:
        return decoder(flags, payload)
    except (struct.error, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise RecordFormatError(f"bad {RecordType(kind).name} payload: {exc}") from exc


def _encode_snapshot(snap: Snapshot) -> bytes:
    doc = {
        "format": FORMAT_VERSION,
        "segment": snap.segment,
        "block_size": snap.block_size,
        "epoch": snap.epoch,
        "next_checkpoint_id": snap.next_checkpoint_id,
        "appended_seq": snap.appended_seq,
        "applied_seq": snap.applied_seq,
        "pending_bytes": snap.pending_bytes,
        "rollback_to": snap.rollback_to,
        "checkpoints": [
            [c.id, c.seq, c.time_ns, c.tag, c.description, c.status, c.attempt, c.own_seq]
            for c in snap.checkpoints
        ],
        "disks": [list(d) for d in snap.disks],
        "segments": [
            [s.number, [list(r) for r in s.redo], [list(u) for u in s.undo], s.size]
            for s in snap.segments
        ],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def _decode_snapshot(payload: bytes) -> Snapshot:
    doc: dict[str, Any] = json.loads(payload)
    if doc["format"] != FORMAT_VERSION:
        raise ValueError(f"journal format {doc['format']} is not {FORMAT_VERSION}")
    return Snapshot(
        segment=int(doc["segment"]),
        block_size=int(doc["block_size"]),
        epoch=int(doc["epoch"]),
        next_checkpoint_id=int(doc["next_checkpoint_id"]),
        appended_seq=int(doc["appended_seq"]),
        applied_seq=int(doc["applied_seq"]),
        pending_bytes=int(doc["pending_bytes"]),
        rollback_to=None if doc["rollback_to"] is None else int(doc["rollback_to"]),
        checkpoints=tuple(
            SnapshotCheckpoint(int(a), int(b), int(c), str(d), str(e), int(f), int(g), bool(h))
            for a, b, c, d, e, f, g, h in doc["checkpoints"]
        ),
        disks=tuple((int(i), int(s)) for i, s in doc["disks"]),
        segments=tuple(
            SnapshotSegment(
                int(n),
                tuple((int(e), int(lo), int(hi)) for e, lo, hi in redo),
                tuple((int(i), int(a)) for i, a in undo),
                int(size[0]) if size else 0,
            )
            for n, redo, undo, *size in doc.get("segments", [])
        ),
    )


_DECODERS: dict[int, Callable[[int, bytes], Record]] = {
    RecordType.SNAPSHOT: Snapshot.decode,
    RecordType.WRITE: Write.decode,
    RecordType.ZERO: Zero.decode,
    RecordType.CHECKPOINT: CheckpointMark.decode,
    RecordType.UNDO_BEGIN: UndoBegin.decode,
    RecordType.UNDO: Undo.decode,
    RecordType.UNDO_DONE: UndoDone.decode,
    RecordType.APPLIED: Applied.decode,
    RecordType.ROLLBACK: Rollback.decode,
    RecordType.ROLLBACK_DONE: RollbackDone.decode,
    RecordType.RECLAIM: Reclaim.decode,
    RecordType.SYNC_MARK: SyncMark.decode,
}


def redo_record_size(data_length: int) -> int:
    return HEADER.size + _REDO.size + data_length


ZERO_RECORD_SIZE = HEADER.size + _ZERO.size
UNDO_RECORD_OVERHEAD = HEADER.size + _UNDO.size
