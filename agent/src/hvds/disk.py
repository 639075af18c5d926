"""A raw disk image (file or block device) as the tap reads and writes it."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import stat
from pathlib import Path

from hvds.nbd.constants import AllocationFlag

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_FALLOC_FL_ZERO_RANGE = 0x10
_ZERO_CHUNK = bytes(1024 * 1024)

# The standard library has no fallocate(2) with mode flags (os.posix_fallocate only allocates),
# and punching holes is what makes TRIM and WRITE_ZEROES cheap on sparse images.
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def _fallocate(fd: int, mode: int, offset: int, length: int) -> bool:
    """True if done; False if the file system cannot do it (the caller falls back)."""
    if _libc.fallocate(fd, mode, offset, length) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        return False
    raise OSError(err, os.strerror(err))


class Disk:
    def __init__(self, path: Path, read_only: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        # O_NONBLOCK: a FIFO named as a disk must not block the open (a read-only one would
        # wait for a writer, and the tap's event loop with it); it is refused just below.
        flags = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC | os.O_NONBLOCK
        self.fd = os.open(path, flags)
        mode = os.fstat(self.fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            # A directory, a character device (/dev/null), a FIFO, a socket: no disk image.
            os.close(self.fd)
            raise OSError(errno.ENOTBLK, "neither a regular file nor a block device", str(path))
        os.set_blocking(self.fd, True)
        self.is_block_device = stat.S_ISBLK(mode)
        self.size = os.lseek(self.fd, 0, os.SEEK_END)

    def read(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, offset)
        if len(data) < length:
            # Only a file shrunk behind our back reads short; the export's size is fixed.
            data += bytes(length - len(data))
        return data

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self.fd, view, offset)
            view = view[written:]
            offset += written

    def zero(self, offset: int, length: int, may_trim: bool) -> None:
        """Make the range read as zeroes, by punching a hole when allowed."""
        if not self.is_block_device:
            if may_trim and _fallocate(
                self.fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length
            ):
                return
            if _fallocate(self.fd, _FALLOC_FL_ZERO_RANGE | _FALLOC_FL_KEEP_SIZE, offset, length):
                return
        end = offset + length
        while offset < end:
            chunk = min(len(_ZERO_CHUNK), end - offset)
            self.write(offset, memoryview(_ZERO_CHUNK)[:chunk])
            offset += chunk

    def flush(self) -> None:
        os.fdatasync(self.fd)

    def next_data(self, offset: int) -> int:
        """Where the next allocated data starts at or after ``offset`` (the size if none)."""
        if self.is_block_device:
            return offset
        try:
            return os.lseek(self.fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            return self.size

    def extents(self, offset: int, length: int, limit: int = 256) -> list[tuple[int, int]]:
        """base:allocation extents from ``offset``: (length, flags) pairs, at most ``limit``."""
        end = offset + length
        if self.is_block_device:
            return [(length, 0)]
        extents: list[tuple[int, int]] = []
        pos = offset
        while pos < end and len(extents) < limit:
            try:
                data = os.lseek(self.fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
                data = end  # no data after pos: the rest is a hole
            if data > pos:
                hole_end = min(data, end)
                extents.append((hole_end - pos, AllocationFlag.HOLE | AllocationFlag.ZERO))
                pos = hole_end
                continue
            hole = min(os.lseek(self.fd, pos, os.SEEK_HOLE), end)
            extents.append((hole - pos, 0))
            pos = hole
        return extents

    def close(self) -> None:
        os.close(self.fd)
