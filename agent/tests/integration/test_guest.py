"""A real QEMU guest (software emulation) whose virtio disk is served by hvds-tap.

The guest writes a pattern of 4 KiB blocks to /dev/vda and syncs; the host checks the disk
image byte for byte, the replica rebuilt from the copies by hash, and a second boot reads the
disk back and reports its sha256.
"""

from __future__ import annotations

import hashlib

import pytest
from guest import BLOCK_SIZE, GuestImage, ensure_guest, expected_block, qemu_available, run_guest
from harness import Lab, sha256_file

MiB = 1024 * 1024
SEED, COUNT = 11, 64

pytestmark = [
    pytest.mark.guest,
    pytest.mark.skipif(not qemu_available(), reason="qemu-system-x86_64 is not installed"),
]


@pytest.fixture(scope="module")
def guest_image() -> GuestImage:
    return ensure_guest()


@pytest.mark.parametrize("tcp", [False, True], ids=["unix", "tcp"])
def test_guest_boots_on_the_tap_and_its_writes_are_replicated(
    lab: Lab, guest_image: GuestImage, tcp: bool
) -> None:
    disk = lab.add_disk("vm1-disk0", 32 * MiB)
    lab.start_sink()
    lab.start_tap()

    wrote = run_guest(guest_image, lab.uri("vm1-disk0", tcp), f"write:{SEED}:{COUNT}")
    assert wrote.result == f"wrote {COUNT}", wrote.console[-2000:]
    with disk.open("rb") as f:
        for block in range(COUNT):
            assert f.read(BLOCK_SIZE) == expected_block(SEED, block), f"block {block}"
        assert f.read(BLOCK_SIZE) == bytes(BLOCK_SIZE)

    lab.wait_for(lambda: lab.metric("hvds_tap_dirty_bytes", "vm1-disk0") == 0, what="acks")
    assert sha256_file(lab.replica("vm1-disk0")) == sha256_file(disk)
    assert lab.metric("hvds_tap_requests_total", "vm1-disk0", "write") >= 1
    assert lab.metric("hvds_tap_requests_total", "vm1-disk0", "flush") >= 1  # the guest synced

    read = run_guest(guest_image, lab.uri("vm1-disk0", tcp), "read")
    assert read.result == f"sha256 {hashlib.sha256(disk.read_bytes()).hexdigest()}"
