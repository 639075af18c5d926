"""Cutting a byte stream into frames made of a fixed header and a payload.

Shared by the tap-to-VDSA link and the site-to-site replication link: each says how to read its
header (and rejects a bad one); this keeps the partial-frame buffering in one place.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

# Given the unpacked header fields, return the payload length or raise the protocol's error.
PayloadLength = Callable[[tuple[Any, ...]], int]


class FrameSplitter:
    def __init__(self, header: struct.Struct, payload_length: PayloadLength) -> None:
        self._header = header
        self._payload_length = payload_length
        self._buffer = bytearray()

    def feed(self, data: bytes | bytearray | memoryview) -> list[tuple[tuple[Any, ...], bytes]]:
        """Whole frames received so far, as (header fields, payload); keeps any partial frame."""
        buffer = self._buffer
        buffer += data
        frames: list[tuple[tuple[Any, ...], bytes]] = []
        size = self._header.size
        pos = 0
        # Payloads are copied out through a view: slicing the bytearray would copy twice.
        with memoryview(buffer) as view:
            while len(buffer) - pos >= size:
                fields = self._header.unpack_from(buffer, pos)
                end = pos + size + self._payload_length(fields)
                if len(buffer) < end:
                    break
                frames.append((fields, bytes(view[pos + size : end])))
                pos = end
        del buffer[:pos]
        return frames
