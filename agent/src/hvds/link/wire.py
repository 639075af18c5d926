"""Frames of the local link from a tap to its host's VDSA, encoded and decoded with no I/O.

Every frame is a fixed 32-byte header, then a payload for the frame types that carry one:

    magic u32 | type u8 | flags u8 | reserved u16 | seq u64 | export u32 | offset u64 | length u32

``seq`` numbers the frames a tap sends on one connection, from 1; the VDSA answers with ACK
frames carrying the highest sequence it has taken responsibility for (cumulative). Copies that
were sent but not acknowledged when a connection drops are not resent from memory: the tap's
dirty-block bitmap still covers them and they are resynced from the disk.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import Any

from hvds.framing import FrameSplitter

MAGIC = 0x4856544C  # "HVTL"
HEADER = struct.Struct(">IBBHQIQI")
# Largest payload a frame may carry: one NBD write at most, plus headroom for HELLO/EXPORT.
MAX_PAYLOAD = 32 * 1024 * 1024


class FrameType(IntEnum):
    HELLO = 1  # tap -> VDSA, payload: tap identity (UTF-8)
    EXPORT = 2  # tap -> VDSA, export id, offset = disk size, payload: export name
    WRITE = 3  # tap -> VDSA, data written at offset
    ZERO = 4  # tap -> VDSA, offset/length now read as zeroes (WRITE_ZEROES, TRIM)
    RESYNC_START = 5  # tap -> VDSA, export's copies are out of order until RESYNC_DONE
    RESYNC_DONE = 6  # tap -> VDSA, every dirty block of the export has been sent again
    ACK = 7  # VDSA -> tap, seq: highest sequence taken over
    FULL_SYNC = 8  # VDSA -> tap, export: send every block again (a target starts empty)
    # The checkpoint barrier of a VPG spread over several hosts (decision 0009):
    HOLD = 9  # VDSA -> tap, offset: cut id, payload: u32 export ids whose answers to hold
    MARKER = 10  # tap -> VDSA, offset: cut id: every copy before it belongs to the cut
    RELEASE = 11  # VDSA -> tap, offset: cut id: answer the held requests


class FrameFlag(IntFlag):
    NONE = 0
    RESYNC = 1 << 0  # a WRITE that re-sends a dirty block from the disk
    DIRTY = 1 << 1  # an EXPORT whose dirty blocks will be resent: copies are out of order


_WITH_PAYLOAD = frozenset({FrameType.HELLO, FrameType.EXPORT, FrameType.WRITE, FrameType.HOLD})


class LinkProtocolError(Exception):
    """The peer sent something that is not a valid frame; the connection cannot continue."""


@dataclass(frozen=True, slots=True)
class Frame:
    type: FrameType
    seq: int
    export: int = 0
    offset: int = 0
    length: int = 0
    flags: FrameFlag = FrameFlag.NONE
    payload: bytes | bytearray = b""  # a bytearray when read straight into its own buffer


def encode_header(
    kind: FrameType,
    seq: int,
    export: int = 0,
    offset: int = 0,
    length: int = 0,
    flags: int = 0,
) -> bytes:
    return HEADER.pack(MAGIC, kind, flags, 0, seq, export, offset, length)


def encode(frame: Frame) -> bytes:
    length = len(frame.payload) if frame.type in _WITH_PAYLOAD else frame.length
    header = encode_header(frame.type, frame.seq, frame.export, frame.offset, length, frame.flags)
    return header + frame.payload


class FrameDecoder:
    """Turns a byte stream into frames; keeps partial frames until the rest arrives."""

    def __init__(self) -> None:
        self._splitter = FrameSplitter(HEADER, _payload_length)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        return self._frames(self._splitter.feed(data))

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        return self._splitter.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> list[Frame]:
        return self._frames(self._splitter.buffer_updated(nbytes))

    @staticmethod
    def _frames(split: list[tuple[tuple[Any, ...], bytes | bytearray]]) -> list[Frame]:
        frames = []
        for (_, kind, flags, _, seq, export, offset, length), payload in split:
            frames.append(
                Frame(FrameType(kind), seq, export, offset, length, FrameFlag(flags), payload)
            )
        return frames


def _payload_length(fields: tuple[Any, ...]) -> int:
    magic, kind, flags, _, _, _, _, length = fields
    if magic != MAGIC:
        raise LinkProtocolError(f"bad frame magic {magic:#x}")
    try:
        frame_type = FrameType(kind)
    except ValueError:
        raise LinkProtocolError(f"unknown frame type {kind}") from None
    if flags & ~int(FrameFlag.RESYNC | FrameFlag.DIRTY):
        raise LinkProtocolError(f"unknown frame flags {flags:#x}")
    payload_length = int(length) if frame_type in _WITH_PAYLOAD else 0
    if payload_length > MAX_PAYLOAD:
        raise LinkProtocolError(f"frame payload of {payload_length} bytes is too large")
    return payload_length
