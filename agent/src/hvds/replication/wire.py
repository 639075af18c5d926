"""Frames of the site-to-site replication link (source VDSA -> target VDSA), with no I/O.

Every frame: ``magic u32 | type u8 | flags u8 | reserved u16 | length u32`` then ``length``
bytes of payload. HELLO and WELCOME carry JSON; BATCH carries entries, zstd-compressed when the
COMPRESSED flag is set; ACK carries the highest sequence the target has made durable.

Entries of a batch, back to back, each ``kind u8 | seq u64 | disk u32 | offset u64 | length u32``
followed by:
- WRITE: ``length`` bytes of data;
- REF: the 16-byte xxh3-128 of data the target already holds (sent earlier on this connection);
- ZERO: nothing (the range reads as zeroes);
- CHECKPOINT: ``length`` bytes of JSON (id, time, tag, description); disk and offset are 0;
- SAME: nothing (the target's mirror already holds these ``length`` bytes; initial sync).

HASHES (a fresh target's mirror, before a full sync): ``disk u32 | block size u32`` then
``block u64 | xxh3-128 digest`` for each block of the mirror that is not a hole.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import Any

import zstandard

from hvds.framing import FrameSplitter

MAGIC = 0x48565250  # "HVRP"
FRAME_HEADER = struct.Struct(">IBBHI")
ENTRY_HEADER = struct.Struct(">BQIQI")
HASH_SIZE = 16
# A batch is cut well below this; anything larger is a peer that lies or is broken.
MAX_FRAME_PAYLOAD = 64 * 1024 * 1024
MAX_ENTRY_LENGTH = 32 * 1024 * 1024


class FrameType(IntEnum):
    HELLO = 1  # source -> target: JSON {vpg, source, protocol}
    WELCOME = 2  # target -> source: JSON {vpg, last_seq}: resume after last_seq
    BATCH = 3  # source -> target: entries
    ACK = 4  # target -> source: u64 highest durable sequence
    ERROR = 5  # either way: JSON {error}; the sender closes the connection
    HASHES = 6  # target -> source, after a WELCOME announcing them: what a fresh mirror holds


class FrameFlag(IntFlag):
    NONE = 0
    COMPRESSED = 1 << 0


class EntryKind(IntEnum):
    WRITE = 1
    ZERO = 2
    REF = 3
    CHECKPOINT = 4
    SAME = 5  # a full sync block equal to what the target's mirror already holds: no data


class ReplicationProtocolError(Exception):
    """The peer sent something that is not valid; the connection cannot continue."""


@dataclass(frozen=True, slots=True)
class Frame:
    type: FrameType
    flags: FrameFlag
    payload: bytes | bytearray


@dataclass(frozen=True, slots=True)
class Entry:
    kind: EntryKind
    seq: int
    disk: int = 0
    offset: int = 0
    length: int = 0
    body: bytes | bytearray = b""  # data (WRITE), hash (REF), JSON (CHECKPOINT)

    def checkpoint_info(self) -> dict[str, Any]:
        """The checkpoint's JSON: ``time_ns`` an integer of 64 bits, ``tag`` and
        ``description`` strings when present; anything else is a protocol error."""
        info = parse_json(self.body)
        when = info.get("time_ns")
        if type(when) is not int or not 0 <= when < 1 << 64:
            raise ReplicationProtocolError(f"checkpoint time {when!r} is not a time in ns")
        for key in ("tag", "description"):
            if not isinstance(info.get(key, ""), str):
                raise ReplicationProtocolError(f"checkpoint {key} is not a string")
        return info


def frame(kind: FrameType, payload: bytes = b"", flags: FrameFlag = FrameFlag.NONE) -> bytes:
    return FRAME_HEADER.pack(MAGIC, kind, flags, 0, len(payload)) + payload


def json_frame(kind: FrameType, value: dict[str, Any]) -> bytes:
    return frame(kind, json.dumps(value).encode())


def ack_frame(seq: int) -> bytes:
    return frame(FrameType.ACK, struct.pack(">Q", seq))


def parse_ack(payload: bytes | bytearray) -> int:
    if len(payload) != 8:
        raise ReplicationProtocolError("ACK payload must be 8 bytes")
    return int(struct.unpack(">Q", payload)[0])


def parse_json(payload: bytes | bytearray) -> dict[str, Any]:
    try:
        value = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReplicationProtocolError(f"invalid JSON payload: {exc}") from None
    if not isinstance(value, dict):
        raise ReplicationProtocolError("JSON payload is not an object")
    return value


def encode_entries(entries: Iterable[Entry]) -> bytes:
    parts: list[bytes | bytearray] = []
    for entry in entries:
        parts.append(
            ENTRY_HEADER.pack(entry.kind, entry.seq, entry.disk, entry.offset, entry.length)
        )
        parts.append(entry.body)
    return b"".join(parts)


def _body_size(kind: EntryKind, length: int) -> int:
    if kind is EntryKind.WRITE or kind is EntryKind.CHECKPOINT:
        return length
    if kind is EntryKind.REF:
        return HASH_SIZE
    return 0


def decode_entries(data: bytes | bytearray) -> list[Entry]:
    entries: list[Entry] = []
    pos = 0
    view = memoryview(data)
    while pos < len(data):
        if len(data) - pos < ENTRY_HEADER.size:
            raise ReplicationProtocolError("batch ends inside an entry header")
        kind_value, seq, disk, offset, length = ENTRY_HEADER.unpack_from(data, pos)
        try:
            kind = EntryKind(kind_value)
        except ValueError:
            raise ReplicationProtocolError(f"unknown entry kind {kind_value}") from None
        if length > MAX_ENTRY_LENGTH and kind is not EntryKind.ZERO:
            raise ReplicationProtocolError(f"entry of {length} bytes is too large")
        pos += ENTRY_HEADER.size
        size = _body_size(kind, length)
        if len(data) - pos < size:
            raise ReplicationProtocolError("batch ends inside an entry")
        entries.append(Entry(kind, seq, disk, offset, length, bytes(view[pos : pos + size])))
        pos += size
    return entries


class BatchCodec:
    """zstd for batch payloads; one compressor and decompressor per connection."""

    def __init__(self, level: int = 1) -> None:
        self._compressor = zstandard.ZstdCompressor(level=level)
        self._decompressor = zstandard.ZstdDecompressor()

    def batch_frame(self, entries: Iterable[Entry], compress: bool) -> tuple[bytes, int]:
        """The BATCH frame, and the size of the entries before compression."""
        raw = encode_entries(entries)
        if compress:
            packed = self._compressor.compress(raw)
            if len(packed) < len(raw):
                return frame(FrameType.BATCH, packed, FrameFlag.COMPRESSED), len(raw)
        return frame(FrameType.BATCH, raw), len(raw)

    def batch_entries(self, received: Frame) -> list[Entry]:
        payload = received.payload
        if received.flags & FrameFlag.COMPRESSED:
            try:
                # max_output_size binds only a frame that does not declare its size: one that
                # declares more than a batch may hold is refused before anything is allocated.
                declared = zstandard.get_frame_parameters(payload).content_size
                if declared != zstandard.CONTENTSIZE_UNKNOWN and declared > MAX_FRAME_PAYLOAD:
                    raise ReplicationProtocolError(
                        f"batch does not decompress: it declares {declared} bytes"
                    )
                payload = self._decompressor.decompress(payload, max_output_size=MAX_FRAME_PAYLOAD)
            except zstandard.ZstdError as exc:
                raise ReplicationProtocolError(f"batch does not decompress: {exc}") from None
        return decode_entries(payload)


class FrameReader:
    """Turns the byte stream into frames."""

    def __init__(self) -> None:
        self._splitter = FrameSplitter(FRAME_HEADER, _payload_length)

    def feed(self, data: bytes) -> list[Frame]:
        return [
            Frame(FrameType(fields[1]), FrameFlag(fields[2]), payload)
            for fields, payload in self._splitter.feed(data)
        ]


def _payload_length(fields: tuple[Any, ...]) -> int:
    magic, kind, flags, _, length = fields
    if magic != MAGIC:
        raise ReplicationProtocolError(f"bad frame magic {magic:#x}")
    try:
        FrameType(kind)
    except ValueError:
        raise ReplicationProtocolError(f"unknown frame type {kind}") from None
    if flags & ~int(FrameFlag.COMPRESSED):
        raise ReplicationProtocolError(f"unknown frame flags {flags:#x}")
    if length > MAX_FRAME_PAYLOAD:
        raise ReplicationProtocolError(f"frame of {length} bytes is too large")
    return int(length)


HASHES_HEADER = struct.Struct(">II")
HASH_ENTRY = struct.Struct(">Q16s")


def encode_hashes(disk: int, block_size: int, digests: list[tuple[int, bytes]]) -> bytes:
    body = b"".join(HASH_ENTRY.pack(block, digest) for block, digest in digests)
    return frame(FrameType.HASHES, HASHES_HEADER.pack(disk, block_size) + body)


def decode_hashes(payload: bytes | bytearray) -> tuple[int, int, dict[int, bytes]]:
    """(disk, block size, {block: digest}) of a HASHES frame."""
    if len(payload) < HASHES_HEADER.size or (len(payload) - HASHES_HEADER.size) % HASH_ENTRY.size:
        raise ReplicationProtocolError("HASHES payload of a wrong size")
    disk, block_size = HASHES_HEADER.unpack_from(payload)
    digests = {
        block: digest
        for block, digest in HASH_ENTRY.iter_unpack(memoryview(payload)[HASHES_HEADER.size :])
    }
    return disk, block_size, digests
