"""Small helpers to read fields out of on-disk structures that may be short or garbage."""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable

# How the parsers get bytes: read(offset, length) returns at most `length` bytes, fewer (maybe
# none) past the end of the image or partition. Parsers take this instead of a file so they stay
# pure and the tests can feed them bytes.
ReadAt = Callable[[int, int], bytes]


class TruncatedError(Exception):
    """A structure whose signature was found ends past the data we have."""


def unpack(fmt: str, data: bytes, offset: int) -> tuple[int, ...]:
    """struct.unpack_from raising TruncatedError, which callers report rather than crash on."""
    if offset < 0 or offset + struct.calcsize(fmt) > len(data):
        raise TruncatedError(f"needs {offset + struct.calcsize(fmt)} bytes, has {len(data)}")
    return struct.unpack_from(fmt, data, offset)


def u8(data: bytes, offset: int) -> int:
    return unpack("<B", data, offset)[0]


def le16(data: bytes, offset: int) -> int:
    return unpack("<H", data, offset)[0]


def le32(data: bytes, offset: int) -> int:
    return unpack("<I", data, offset)[0]


def le64(data: bytes, offset: int) -> int:
    return unpack("<Q", data, offset)[0]


def be16(data: bytes, offset: int) -> int:
    return unpack(">H", data, offset)[0]


def be32(data: bytes, offset: int) -> int:
    return unpack(">I", data, offset)[0]


def be64(data: bytes, offset: int) -> int:
    return unpack(">Q", data, offset)[0]


def field(data: bytes, offset: int, length: int) -> bytes:
    if offset < 0 or offset + length > len(data):
        raise TruncatedError(f"needs {offset + length} bytes, has {len(data)}")
    return data[offset : offset + length]


def text(raw: bytes, encoding: str = "utf-8") -> str | None:
    """A NUL-padded on-disk string; None when empty, so "no label" is not reported as ""."""
    value = raw.split(b"\0", 1)[0].decode(encoding, errors="replace").strip()
    return value or None


def utf16_text(raw: bytes) -> str | None:
    # UTF-16 strings end at the first NUL code unit, which is two zero bytes on an even offset.
    for i in range(0, len(raw) - 1, 2):
        if raw[i] == 0 and raw[i + 1] == 0:
            raw = raw[:i]
            break
    value = raw[: len(raw) & ~1].decode("utf-16-le", errors="replace").strip()
    return value or None


def uuid_str(raw: bytes) -> str | None:
    """A UUID stored as 16 big-endian bytes (ext, XFS, btrfs, swap); None when all zero."""
    if len(raw) != 16 or not any(raw):
        return None
    return str(uuid.UUID(bytes=raw))


def is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0
