"""File-level restore: one file out of a replicated disk as it was at a checkpoint.

The disk is a point-in-time view (nothing is copied), made a read-only file by ``nbdfuse``
(libnbd), and the file is read from its ext2/3/4 file system by debugfs, without mounting it
(the analyzer's ``ExtFiles``): a whole disk or any of its partitions.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from hvds.analyzer.analyze import analyze
from hvds.analyzer.debugfs import DebugfsError, ExtFiles
from hvds.analyzer.image import Image
from hvds.analyzer.os_release import EXT_TYPES

MAX_RESTORED_FILE = 8 * 1024 * 1024  # answered in one JSON line (base64) by the control socket
_MOUNT_TIMEOUT = 10.0


@contextlib.contextmanager
def nbd_as_file(uri: str) -> Iterator[Path]:
    """An NBD export as a read-only file, for as long as the context lasts."""
    program = shutil.which("nbdfuse")
    if program is None:
        raise FileNotFoundError("nbdfuse is not installed (libnbd-bin)")
    with tempfile.TemporaryDirectory(prefix="hvds-file-restore-") as directory:
        mountpoint = Path(directory)
        process = subprocess.Popen(  # noqa: S603 - fixed program, the URI is one argument
            [program, "-r", str(mountpoint / "disk"), uri],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            disk = mountpoint / "disk"
            deadline = time.monotonic() + _MOUNT_TIMEOUT
            while not disk.exists():
                if process.poll() is not None or time.monotonic() > deadline:
                    error = process.stderr.read().decode() if process.stderr else ""
                    raise OSError(f"nbdfuse could not attach {uri}: {error.strip()}")
                time.sleep(0.05)
            yield disk
        finally:
            # Fixed program and arguments: the mountpoint is our own temporary directory.
            unmount = ["fusermount3", "-u", str(mountpoint)]
            subprocess.run(unmount, check=False, capture_output=True)  # noqa: S603
            try:
                process.wait(_MOUNT_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def read_file(image_path: Path, path: str, partition: int | None = None) -> bytes:
    """``path`` from the ext file system of the disk or of partition ``partition`` (by
    default the first ext volume that has the file)."""
    report = analyze(image_path, find_os=False)
    volumes: list[tuple[int | None, int]] = []
    if report.filesystem is not None and report.filesystem.type in EXT_TYPES:
        volumes.append((None, 0))
    volumes += [(p.index, p.start) for p in report.partitions
                if p.filesystem is not None and p.filesystem.type in EXT_TYPES]  # fmt: skip
    if partition is not None:
        volumes = [v for v in volumes if v[0] == partition]
    if not volumes:
        raise DebugfsError("no ext2/3/4 file system there to read files from")
    with Image(image_path) as image:
        for _index, start in volumes:
            found = ExtFiles(image, start, max_size=MAX_RESTORED_FILE).read(path)
            if found is not None:
                return found[1]
    raise FileNotFoundError(f"{path} is not on the disk at that checkpoint")
