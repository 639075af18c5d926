"""Cutting a byte stream into frames made of a fixed header and a payload.

Shared by the tap-to-VDSA link and the site-to-site replication link: each says how to read its
header (and rejects a bad one); this keeps the partial-frame buffering in one place.

It follows asyncio's BufferedProtocol as the NBD core does: ``get_buffer()`` says where the next
bytes should land, ``buffer_updated(n)`` how many did. A large payload is read straight into its
own buffer, so a 1 MiB copy is copied once, from the kernel; small frames are cut out of a
scratch buffer. ``feed()`` does the same for bytes already received.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

# Given the unpacked header fields, return the payload length or raise the protocol's error.
PayloadLength = Callable[[tuple[Any, ...]], int]
Frame = tuple[tuple[Any, ...], bytes | bytearray]

_SCRATCH_SIZE = 256 * 1024
# A payload with at least this much still to come is read straight into its own buffer.
_DIRECT_READ_THRESHOLD = 64 * 1024


class FrameSplitter:
    def __init__(self, header: struct.Struct, payload_length: PayloadLength) -> None:
        self._header = header
        self._payload_length = payload_length
        self._scratch = bytearray(_SCRATCH_SIZE)
        self._start = 0
        self._end = 0
        self._fields: tuple[Any, ...] | None = None  # header of the payload being read
        self._payload = bytearray()
        self._filled = 0
        self._direct = False

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        if self._fields is not None and len(self._payload) - self._filled >= _DIRECT_READ_THRESHOLD:
            self._direct = True
            return memoryview(self._payload)[self._filled :]
        self._direct = False
        if len(self._scratch) - self._end < _DIRECT_READ_THRESHOLD:
            # Move what is left to the front; a header never fills the scratch buffer.
            remaining = self._end - self._start
            self._scratch[:remaining] = self._scratch[self._start : self._end]
            self._start, self._end = 0, remaining
        return memoryview(self._scratch)[self._end :]

    def buffer_updated(self, nbytes: int) -> list[Frame]:
        if self._direct:
            self._filled += nbytes
        else:
            self._end += nbytes
        return self._split()

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Whole frames received so far, as (header fields, payload); keeps a partial one."""
        frames: list[Frame] = []
        view = memoryview(data)
        while view:
            buffer = self.get_buffer(len(view))
            n = min(len(buffer), len(view))
            buffer[:n] = view[:n]
            view = view[n:]
            frames += self.buffer_updated(n)
        return frames

    def _split(self) -> list[Frame]:
        frames: list[Frame] = []
        size = self._header.size
        scratch = self._scratch
        while True:
            if self._fields is not None:
                # Finish the payload being read: first from the scratch buffer, then it waits.
                n = min(self._end - self._start, len(self._payload) - self._filled)
                if n:
                    self._payload[self._filled : self._filled + n] = scratch[
                        self._start : self._start + n
                    ]
                    self._start += n
                    self._filled += n
                if self._filled < len(self._payload):
                    return frames
                frames.append((self._fields, self._payload))
                self._fields = None
                continue
            if self._end - self._start < size:
                return frames
            fields = self._header.unpack_from(scratch, self._start)
            length = self._payload_length(fields)
            self._start += size
            if self._end - self._start >= length:  # the whole payload is here: cut it out
                with memoryview(scratch) as view:
                    frames.append((fields, bytes(view[self._start : self._start + length])))
                self._start += length
                continue
            self._fields, self._payload, self._filled = fields, bytearray(length), 0
