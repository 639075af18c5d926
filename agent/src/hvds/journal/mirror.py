"""The mirrors: one raw image per disk, holding the disk as of the latest applied checkpoint."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

from hvds.disk import Disk
from hvds.journal.model import DiskSpec, MirrorFull
from hvds.journal.segments import fsync_directory
from hvds.nbd.constants import AllocationFlag

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


# Undo capture reads the mirror this much at a time.
_CAPTURE_CHUNK = 4 * 1024 * 1024


class Mirrors:
    def __init__(self, disks: Sequence[DiskSpec]) -> None:
        self.specs: dict[int, DiskSpec] = {}
        self._disks: dict[int, Disk] = {}
        try:
            for spec in disks:
                if spec.id in self.specs:
                    raise ValueError(f"disk id {spec.id} given twice")
                self.specs[spec.id] = spec
                self._disks[spec.id] = _open_mirror(spec)
        except BaseException:
            self.close()
            raise

    def read(self, disk: int, offset: int, length: int) -> bytes:
        return self._disks[disk].read(offset, length)

    def write(self, disk: int, offset: int, data: bytes) -> None:
        with _no_space_is_full(self.specs[disk]):
            self._disks[disk].write(offset, data)

    def zero(self, disk: int, offset: int, length: int) -> None:
        with _no_space_is_full(self.specs[disk]):
            # A hole reads as zeroes and costs nothing: the mirror of a trimmed disk stays sparse.
            self._disks[disk].zero(offset, length, may_trim=True)

    def flush(self, disks: Iterable[int]) -> None:
        for disk in sorted(set(disks)):
            with _no_space_is_full(self.specs[disk]):
                self._disks[disk].flush()

    def capture(
        self, disk: int, first_block: int, count: int, block_size: int
    ) -> Iterator[tuple[int, int, bytes | None]]:
        """The current content of whole blocks, as (offset, length, data) runs.

        Runs of all-zero blocks come as data None: their undo costs a header, not the blocks,
        which matters for sparse mirrors where most first writes land on zeroes. The range is
        read a chunk at a time (memory stays bounded whatever ``count`` is) and chunks that are
        holes in a sparse mirror are not read at all.
        """
        size = self.specs[disk].size
        start = first_block * block_size
        end = min(start + count * block_size, size)
        chunk = block_size * max(1, _CAPTURE_CHUNK // block_size)
        zeroes_from: int | None = None  # start of the current run of zero blocks
        for pos in range(start, end, chunk):
            stop = min(pos + chunk, end)
            if self.data_bytes(disk, pos, stop - pos) == 0:
                zeroes_from = pos if zeroes_from is None else zeroes_from
                continue
            data = self._disks[disk].read(pos, stop - pos)
            data_from: int | None = None  # start, within data, of the current data run
            for offset in range(0, len(data), block_size):
                block_end = min(offset + block_size, len(data))
                if data.count(0, offset, block_end) == block_end - offset:
                    if data_from is not None:
                        yield pos + data_from, offset - data_from, data[data_from:offset]
                        data_from = None
                    zeroes_from = pos + offset if zeroes_from is None else zeroes_from
                    continue
                if zeroes_from is not None:
                    yield zeroes_from, pos + offset - zeroes_from, None
                    zeroes_from = None
                data_from = offset if data_from is None else data_from
            if data_from is not None:
                yield pos + data_from, len(data) - data_from, data[data_from:]
        if zeroes_from is not None:
            yield zeroes_from, end - zeroes_from, None

    def data_bytes(self, disk: int, offset: int, length: int) -> int:
        """Bytes of ``[offset, offset+length)`` that are not holes (all of it on a device)."""
        mirror = self._disks[disk]
        end = min(offset + length, self.specs[disk].size)
        total = 0
        while offset < end:
            extents = mirror.extents(offset, end - offset)
            if not extents:
                return total + end - offset
            for extent, flags in extents:
                if not flags & AllocationFlag.HOLE:
                    total += extent
                offset += extent
        return total

    def close(self) -> None:
        for disk in self._disks.values():
            disk.close()
        self._disks.clear()


def _open_mirror(spec: DiskSpec) -> Disk:
    if not spec.mirror.exists():
        # Sparse: a fresh mirror reads as zeroes and costs nothing until written.
        fd = os.open(spec.mirror, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        try:
            os.ftruncate(fd, spec.size)
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_directory(spec.mirror.parent)
    disk = Disk(spec.mirror)
    too_small = disk.size < spec.size
    if too_small or (disk.size != spec.size and not disk.is_block_device):
        disk.close()
        raise ValueError(
            f"mirror {spec.mirror} of disk {spec.name} is {disk.size} bytes, not {spec.size}"
        )
    return disk


@contextmanager
def _no_space_is_full(spec: DiskSpec) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            raise MirrorFull(f"mirror {spec.mirror} of disk {spec.name}: {exc.strerror}") from exc
        raise
