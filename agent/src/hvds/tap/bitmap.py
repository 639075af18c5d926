"""A persistent dirty-block bitmap, one per export, kept in a memory-mapped file.

A bit is set before the write it covers reaches the disk and cleared only once the VDSA has
acknowledged a copy of that block, so after any crash the set bits are a superset of the blocks
the VDSA may lack. The file is mapped shared: a bit set in memory is in the kernel's page cache
at once and survives a kill -9 of the tap; ``sync()`` (called on FLUSH and FUA, before the disk
is synced) makes it survive a power cut too.
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

_MAGIC = b"HVDSBMP1"
_HEADER = struct.Struct(">8sIIQ")  # magic, version, block size, disk size
_HEADER_SIZE = 64
_VERSION = 1


def block_range(offset: int, length: int, block_size: int) -> range:
    """The blocks that a byte range touches (empty for a zero-length range)."""
    if length <= 0:
        return range(0)
    return range(offset // block_size, (offset + length - 1) // block_size + 1)


def iter_set_bits(bits: bytes | bytearray | memoryview, limit: int) -> Iterator[int]:
    """Indices of the set bits, below ``limit``, skipping zero bytes quickly."""
    view = memoryview(bits)
    pos = 0
    zero = b"\x00" * 4096
    while pos < len(view):
        chunk = view[pos : pos + 4096]
        if chunk == zero[: len(chunk)]:
            pos += len(chunk)
            continue
        for i, byte in enumerate(chunk):
            if byte:
                base = (pos + i) * 8
                for bit in range(8):
                    if byte & (1 << bit) and base + bit < limit:
                        yield base + bit
        pos += len(chunk)


class DirtyBitmap:
    """Bits over the blocks of one disk, persisted in ``path``."""

    def __init__(self, path: Path, disk_size: int, block_size: int) -> None:
        self.path = path
        self.block_size = block_size
        self.disk_size = disk_size
        self.blocks = (disk_size + block_size - 1) // block_size
        nbytes = (self.blocks + 7) // 8
        fresh = not path.exists()
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            all_dirty = False if fresh else not self._header_matches(fd)
            os.ftruncate(fd, _HEADER_SIZE + max(nbytes, 1))
            self._map = mmap.mmap(fd, _HEADER_SIZE + max(nbytes, 1))
        finally:
            os.close(fd)
        self._bits = memoryview(self._map)[_HEADER_SIZE : _HEADER_SIZE + nbytes]
        if fresh or all_dirty:
            header = _HEADER.pack(_MAGIC, _VERSION, block_size, disk_size)
            self._map[: len(header)] = header
            # A bitmap we cannot trust (other geometry, damaged header) must not hide a dirty
            # block: everything is dirty and the whole disk is resynced.
            self._bits[:] = (b"\xff" if all_dirty else b"\x00") * nbytes
            spare_bits = nbytes * 8 - self.blocks
            if all_dirty and spare_bits:
                self._bits[nbytes - 1] = 0xFF >> spare_bits
            self._map.flush()
        self.dirty_blocks = int.from_bytes(self._bits, "little").bit_count()

    def _header_matches(self, fd: int) -> bool:
        raw = os.pread(fd, _HEADER.size, 0)
        if len(raw) < _HEADER.size:
            log.warning("%s: truncated bitmap header, marking the whole disk dirty", self.path)
            return False
        magic, version, block_size, disk_size = _HEADER.unpack(raw)
        if (magic, version, block_size, disk_size) != (
            _MAGIC,
            _VERSION,
            self.block_size,
            self.disk_size,
        ):
            log.warning(
                "%s: bitmap made for another geometry (block %s, size %s), "
                "marking the whole disk dirty",
                self.path,
                block_size,
                disk_size,
            )
            return False
        return True

        self.dirty_blocks = int.from_bytes(self._bits, "little").bit_count()

    def set(self, block: int) -> None:
        byte, mask = self._bits[block >> 3], 1 << (block & 7)
        if not byte & mask:
            self._bits[block >> 3] = byte | mask
            self.dirty_blocks += 1

    def clear(self, block: int) -> None:
        byte, mask = self._bits[block >> 3], 1 << (block & 7)
        if byte & mask:
            self._bits[block >> 3] = byte & ~mask
            self.dirty_blocks -= 1

    def is_set(self, block: int) -> bool:
        return bool(self._bits[block >> 3] & (1 << (block & 7)))

    def set_blocks(self) -> Iterator[int]:
        return iter_set_bits(self._bits, self.blocks)

    def sync(self) -> None:
        self._map.flush()

    def close(self) -> None:
        self._bits.release()
        self._map.flush()
        self._map.close()
