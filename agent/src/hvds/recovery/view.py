"""A disk of a VPG as it was at a checkpoint, writable, without touching the mirror.

Reads come from the target's journal (``read_at``: the mirror plus the undo data of the
intervals since the checkpoint) overlaid by a scratch file that takes the view's writes; closing
the view throws the scratch away. Opening one copies nothing, whatever the disk's size.
Replication goes on meanwhile: journal reads take the journal's lock, as batches do.

A live failover runs its VMs on views too, until it is committed or rolled back (decision 0011):
then the scratch is a named file that outlives a restart of the VDSA. Which of its blocks hold
the VMs' data is the file's own allocation (a written 4 KiB block is allocated, an unwritten
one is a hole), so a FLUSH (fsync) makes data and map durable together.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from hvds.disk import Disk
from hvds.nbd.constants import AllocationFlag
from hvds.nbd.server import ExportInfo

SCRATCH_BLOCK = 4096

ReadAt = Callable[[int, int], bytes]  # (offset, length) -> bytes at the checkpoint


class CheckpointView:
    def __init__(
        self,
        info: ExportInfo,
        read_at: ReadAt,
        lock: threading.Lock,
        scratch_dir: Path,
        scratch_name: str | None = None,
    ) -> None:
        """``scratch_name``: keep the scratch as this file in ``scratch_dir`` (a failover's),
        taking up the blocks it already holds; otherwise it is a temporary file."""
        self.info = info
        self._read_at = read_at
        self._lock = lock
        if scratch_name is None:
            fd, name = tempfile.mkstemp(prefix=f"{info.name}.", suffix=".scratch", dir=scratch_dir)
            os.close(fd)
            self.scratch_path = Path(name)
        else:
            self.scratch_path = scratch_dir / scratch_name
            self.scratch_path.touch()
        os.truncate(self.scratch_path, info.size)
        self._scratch = Disk(self.scratch_path)
        # Scratch blocks that hold the view's own data: the allocated ones.
        self._written: set[int] = set(self._allocated_blocks())
        # Cleared while the journal behind the view is being reopened: requests wait.
        self.gate: asyncio.Event | None = None

    def rebind(self, read_at: ReadAt, lock: threading.Lock) -> None:
        """Read from the same checkpoint of a reopened journal."""
        self._read_at, self._lock = read_at, lock

    async def _ready(self) -> None:
        if self.gate is not None:
            await self.gate.wait()

    def _allocated_blocks(self) -> list[int]:
        blocks: list[int] = []
        offset = 0
        for length, flags in self._scratch.extents(0, self.info.size, limit=1 << 30):
            if not flags & AllocationFlag.HOLE:
                first, last = offset // SCRATCH_BLOCK, (offset + length - 1) // SCRATCH_BLOCK
                blocks.extend(range(first, last + 1))
            offset += length
        return blocks

    def _base(self, offset: int, length: int) -> bytes:
        with self._lock:
            return self._read_at(offset, length)

    async def read(self, offset: int, length: int) -> bytes:
        await self._ready()
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
        await self._ready()
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

    async def flush(self) -> None:
        await asyncio.to_thread(self._scratch.flush)

    def written_bytes(self) -> int:
        return len(self._written) * SCRATCH_BLOCK

    def merge_into(self, write: Callable[[int, bytes], None]) -> int:
        """Hand every block the view wrote to ``write`` (offset, data): a failover's commit puts
        them on the mirror. Returns the bytes handed over."""
        merged = 0
        for block in sorted(self._written):
            start = block * SCRATCH_BLOCK
            length = min(SCRATCH_BLOCK, self.info.size - start)
            write(start, self._scratch.read(start, length))
            merged += length
        return merged

    def close(self, discard: bool = True) -> None:
        self._scratch.close()
        if discard:
            self.scratch_path.unlink(missing_ok=True)
