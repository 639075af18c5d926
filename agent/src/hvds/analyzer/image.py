"""Read-only, bounds-checked access to a disk image (a replica file or a block device)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from types import TracebackType


class Image:
    """An image opened read-only; reads past the end come back short instead of failing.

    The analyzer runs against a live replica, so it never opens it for writing, and it reads
    with os.pread, never mmap: a replica being written to (or truncated) under an mmap can SIGBUS.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            mode = os.fstat(self.fd).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
                raise OSError(errno.EINVAL, "not a disk image (regular file or block device)")
            # lseek rather than stat so block devices report their size too.
            self.size = os.lseek(self.fd, 0, os.SEEK_END)
        except BaseException:
            os.close(self.fd)
            raise

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length <= 0 or offset >= self.size:
            return b""
        length = min(length, self.size - offset)
        chunks: list[bytes] = []
        while length > 0:
            chunk = os.pread(self.fd, length, offset)
            if not chunk:  # the file shrank while we read it
                break
            chunks.append(chunk)
            offset += len(chunk)
            length -= len(chunk)
        return b"".join(chunks)

    def window(self, start: int, size: int) -> Window:
        return Window(self, start, size)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Image:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Window:
    """A partition's byte range, so a file system probe can never read its neighbour's data."""

    def __init__(self, image: Image, start: int, size: int) -> None:
        self.image = image
        self.start = start
        self.size = max(0, size)

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or offset >= self.size:
            return b""
        return self.image.read(self.start + offset, min(length, self.size - offset))
