"""Baseline for the guest fixture: a real QEMU guest against a stock NBD server.

This proves the fixture itself (kernel, initramfs, write pattern, result parsing) before the
same guest is pointed at hvds-tap: the guest writes through qemu-nbd (or nbdkit) into a raw
image, and the host checks the image byte for byte and the guest's read-back checksum.
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

_TESTS_DIR = str(Path(__file__).resolve().parents[1])
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from guest import (  # noqa: E402
    BLOCK_SIZE,
    GuestImage,
    boot_guest,
    default_cache_dir,
    ensure_guest,
    expected_block,
    qemu_available,
    run_guest,
)

DISK_SIZE = 64 * 1024 * 1024
EXPORT = "disk"
SEED = 7
COUNT = 16


def _wait_for_socket(path: Path, server: subprocess.Popen[bytes], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            out = server.stdout.read().decode(errors="replace") if server.stdout else ""
            pytest.fail(f"NBD server exited with {server.returncode}:\n{out}")
        if path.exists():
            with socket.socket(socket.AF_UNIX) as probe:
                try:
                    probe.connect(str(path))
                except OSError:
                    pass
                else:
                    return
        time.sleep(0.05)
    pytest.fail(f"NBD server did not listen on {path} within {timeout} s")


def _server_argv(sock: Path, disk: Path) -> list[str]:
    if shutil.which("qemu-nbd"):
        return ["qemu-nbd", "--socket", str(sock), "--format", "raw", "--export-name", EXPORT,
                "--persistent", str(disk)]  # fmt: skip
    if shutil.which("nbdkit"):
        return ["nbdkit", "--foreground", "--unix", str(sock), "--exportname", EXPORT,
                "file", str(disk)]  # fmt: skip
    pytest.fail("neither qemu-nbd nor nbdkit is installed (qemu-utils / nbdkit)")


@pytest.fixture(scope="module")
def guest_image() -> GuestImage:
    if not qemu_available():
        pytest.skip("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    return ensure_guest(default_cache_dir())


@pytest.fixture
def nbd_disk(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A 64 MiB zeroed raw image exported by a stock NBD server on a unix socket."""
    disk = tmp_path / "disk.img"
    with disk.open("wb") as f:
        f.truncate(DISK_SIZE)
    sock = tmp_path / "nbd.sock"
    assert len(str(sock)) < 100, f"unix socket path too long: {sock}"
    server = subprocess.Popen(
        _server_argv(sock, disk),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_for_socket(sock, server)
        yield f"nbd+unix:///{EXPORT}?socket={sock}", disk
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        if server.stdout:
            server.stdout.close()


def test_expected_block_layout() -> None:
    block = expected_block(SEED, 3)
    header = b"hvds seed=7 block=3\n"
    assert len(block) == BLOCK_SIZE
    assert block.startswith(header)
    assert set(block[len(header) :]) == {ord("a") + (SEED * 7 + 3) % 26}
    assert expected_block(SEED, 3) == block
    assert expected_block(SEED, 4) != block


@pytest.mark.guest
def test_guest_writes_and_reads_through_stock_nbd_server(
    guest_image: GuestImage, nbd_disk: tuple[str, Path]
) -> None:
    uri, disk = nbd_disk

    wrote = run_guest(guest_image, uri, f"write:{SEED}:{COUNT}")
    print(f"guest boot (write:{SEED}:{COUNT}) took {wrote.seconds:.2f} s")
    assert wrote.result == f"wrote {COUNT}"

    data = disk.read_bytes()
    assert len(data) == DISK_SIZE
    for n in range(COUNT):
        got = data[n * BLOCK_SIZE : (n + 1) * BLOCK_SIZE]
        assert got == expected_block(SEED, n), f"block {n} differs: {got[:40]!r}..."
    assert data[COUNT * BLOCK_SIZE :].count(0) == DISK_SIZE - COUNT * BLOCK_SIZE, (
        "the guest wrote outside blocks 0..COUNT-1"
    )

    read_all = run_guest(guest_image, uri, "read")
    print(f"guest boot (read) took {read_all.seconds:.2f} s")
    assert read_all.result == f"sha256 {hashlib.sha256(data).hexdigest()}"

    head = (COUNT + 1) * BLOCK_SIZE
    result = boot_guest(guest_image, uri, "read", read_bytes=head)
    assert result == f"sha256 {hashlib.sha256(data[:head]).hexdigest()}"
