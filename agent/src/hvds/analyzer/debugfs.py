"""Reading a file out of an ext2/3/4 file system inside an image, without mounting it.

e2fsprogs' debugfs does the ext work. Its unix I/O manager takes "NAME?offset=BYTES" (checked
with Debian 12's e2fsprogs 1.47.0), so it reads the partition in place: no loop device to set
up and clean after, no copy of a big disk. It runs without -w, so the image is opened read-only.
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import subprocess

from hvds.analyzer.image import Image

# A hostile or corrupt image decides what a symlink points to; only plain paths are passed to
# debugfs, whose request parser would otherwise treat spaces and quotes as syntax.
_SAFE_PATH = re.compile(r"/[A-Za-z0-9._+@/-]*")
_MAX_SYMLINKS = 8  # like a kernel's ELOOP limit, so a link cycle ends
MAX_FILE_SIZE = 64 * 1024  # os-release is a few hundred bytes; never slurp a huge file
_TIMEOUT = 30.0
_NOT_FOUND = re.compile(r"File not found by ext2_lookup|Ext2 inode is not a directory")


class DebugfsError(Exception):
    """debugfs is missing, failed to open the file system, or misbehaved."""


class ExtFiles:
    """Files of the ext file system that starts `offset` bytes into `image`."""

    def __init__(self, image: Image, offset: int, max_size: int = MAX_FILE_SIZE) -> None:
        self.image = image
        self.offset = offset
        self.max_size = max_size  # a larger file is refused, not truncated

    def _debugfs(self, request: str) -> tuple[bytes, str]:
        """(stdout, stderr) of one debugfs request against the file system."""
        # The image goes in as the already-open descriptor: the path may hold a "?" (which
        # would end the name for the I/O manager) and the file cannot be swapped underneath.
        device = f"/proc/self/fd/{self.image.fd}?offset={self.offset}"
        # debugfs lives in /usr/sbin, which is not on every user's PATH.
        search = os.pathsep.join((os.environ.get("PATH", ""), "/usr/sbin", "/sbin"))
        program = shutil.which("debugfs", path=search)
        if program is None:
            raise DebugfsError("debugfs not installed (e2fsprogs)")
        # C locale for parseable messages; no pager, which debugfs would start for "stat".
        env = {"LC_ALL": "C", "DEBUGFS_PAGER": "__none__", "PAGER": "__none__"}
        try:
            # -c (catastrophic mode) skips the inode and block bitmaps: faster on big file
            # systems, and tolerant of a crash-consistent replica whose bitmaps are stale.
            # No shell, and `request` only ever holds a path checked against _SAFE_PATH.
            result = subprocess.run(  # noqa: S603
                [program, "-c", "-R", request, device],
                capture_output=True,
                timeout=_TIMEOUT,
                env=env,
                pass_fds=(self.image.fd,),
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise DebugfsError(f"debugfs timed out after {_TIMEOUT:.0f} s") from e
        stderr = result.stderr.decode(errors="replace")
        if result.returncode != 0 or "while trying to open" in stderr:
            raise DebugfsError(_first_error(stderr) or f"debugfs exited {result.returncode}")
        return result.stdout, stderr

    def _stat(self, path: str) -> tuple[str, int, str | None] | None:
        """(type, size, fast symlink target) of `path`, or None if it does not exist."""
        raw, err = self._debugfs(f"stat {path}")
        out = raw.decode(errors="replace")
        if _NOT_FOUND.search(err):
            return None
        if not out:  # e.g. "Corrupt group descriptor": the file system is damaged, not the path
            raise DebugfsError(_first_error(err) or f"debugfs stat {path} printed nothing")
        kind = re.search(r"Type: (\w+)", out)
        size = re.search(r"\bSize: (\d+)", out)
        if kind is None or size is None:
            raise DebugfsError(f"unexpected debugfs stat output for {path}")
        fast = re.search(r'Fast link dest: "?(.*?)"?$', out, re.MULTILINE)
        return kind.group(1), int(size.group(1)), fast.group(1) if fast else None

    def _cat(self, path: str) -> bytes:
        out, err = self._debugfs(f"cat {path}")
        error = _first_error(err)
        if error:  # a short read of a damaged file: better no answer than half a file
            raise DebugfsError(error)
        return out[: self.max_size]

    def read(self, path: str) -> tuple[str, bytes] | None:
        """(path after following symlinks, contents) of a regular file, or None if absent."""
        for _ in range(_MAX_SYMLINKS + 1):
            if not _SAFE_PATH.fullmatch(path):
                raise DebugfsError(f"refusing unusual path {path!r}")
            stat = self._stat(path)
            if stat is None:
                return None
            kind, size, target = stat
            if kind == "regular":
                if size > self.max_size:
                    raise DebugfsError(f"{path} is larger ({size} bytes) than {self.max_size}")
                return path, self._cat(path)
            if kind != "symlink":
                return None
            # Long targets live in a data block, which "cat" prints; short ones are in the inode.
            if target is None:
                target = self._cat(path).decode(errors="replace")
            path = resolve(path, target)
        raise DebugfsError(f"too many levels of symbolic links at {path}")


def resolve(link: str, target: str) -> str:
    """Where symlink `link` points, inside the file system (".." stops at its root)."""
    joined = target if target.startswith("/") else posixpath.join(posixpath.dirname(link), target)
    # normpath keeps a leading "//"; the file system root has one slash.
    return "/" + posixpath.normpath("/" + joined).lstrip("/")


def _first_error(stderr: str) -> str | None:
    for raw in stderr.splitlines():
        line = raw.strip()
        if line and not line.startswith("debugfs ") and "catastrophic mode" not in line:
            return line
    return None
