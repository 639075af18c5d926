"""A disk of a VPG as it was at a checkpoint, writable, without touching the mirror.

Reads come from the target's journal (``read_at``: the mirror plus the undo data of the
intervals since the checkpoint) overlaid by a scratch file that takes the view's writes; closing
the view throws the scratch away. Opening one copies nothing, whatever the disk's size.
Replication goes on meanwhile: journal reads take the journal's lock, as batches do.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from hvds.disk import Disk
from hvds.nbd.server import ExportInfo

SCRATCH_BLOCK = 4096

ReadAt = Callable[[int, int], bytes]  # (offset, length) -> bytes at the checkpoint


class CheckpointView:
    def __init__(
        self, info: ExportInfo, read_at: ReadAt, lock: threading.Lock, scratch_dir: Path
    ) -> None:
        self.info = info
        self._read_at = read_at
        self._lock = lock
        fd, name = tempfile.mkstemp(prefix=f"{info.name}.", suffix=".scratch", dir=scratch_dir)
        os.close(fd)
        self.scratch_path = Path(name)
        os.truncate(self.scratch_path, info.size)
        self._scratch = Disk(self.scratch_path)
        self._written: set[int] = set()  # scratch blocks that hold the view's own data

    def _base(self, offset: int, length: int) -> bytes:
        with self._lock:
            return self._read_at(offset, length)

    async def read(self, offset: int, length: int) -> bytes:
        return await asyncio.to_thread(self._read, offset, length)

    def _read(self, offset: int, length: int) -> bytes:
        first, last = offset // SCRATCH_BLOCK, (offset + length - 1) // SCRATCH_BLOCK
        if not any(b in self._written for b in range(first, last + 1)):
            return self._base(offset, length)
        out = bytearray(self._base(offset, length))
        for block in range(first, last + 1):
            if block in self._written:
                start = max(block * SCRATCH_BLOCK, offset)
                end = min((block + 1) * SCRATCH_BLOCK, offset + length)
                out[start - offset : end - offset] = self._scratch.read(start, end - start)
        return bytes(out)

    async def write(self, offset: int, data: bytes | bytearray) -> None:
        await asyncio.to_thread(self._write, offset, bytes(data))

    def _write(self, offset: int, data: bytes) -> None:
        end = offset + len(data)
        first, last = offset // SCRATCH_BLOCK, (end - 1) // SCRATCH_BLOCK
        # Partly written blocks new to the scratch take the rest of their content from the base.
        for block in {first, last} - self._written:
            start = block * SCRATCH_BLOCK
            length = min(SCRATCH_BLOCK, self.info.size - start)
            self._scratch.write(start, self._read(start, length))
        self._scratch.write(offset, data)
        self._written.update(range(first, last + 1))

    async def zero(self, offset: int, length: int) -> None:
        end = offset + length
        while offset < end:  # in pieces: a trim of the whole disk must not allocate it
            piece = min(end - offset, 1024 * 1024)
            await self.write(offset, bytes(piece))
            offset += piece

    def close(self) -> None:
        self._scratch.close()
        self.scratch_path.unlink(missing_ok=True)
