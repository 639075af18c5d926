"""A real QEMU guest (software emulation) whose virtio disk is served by hvds-tap.

The guest writes a pattern of 4 KiB blocks to /dev/vda and syncs; the host checks the disk
image byte for byte, the replica rebuilt from the copies by hash, and a second boot reads the
disk back and reports its sha256.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from guest import (
    BLOCK_SIZE,
    GuestImage,
    ensure_guest,
    expected_block,
    last_tick,
    qemu_available,
    read_console,
    run_guest,
    start_ticker,
    ticker_block,
)
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


def test_a_ticker_guest_finds_its_durable_ticks_after_a_crash_and_goes_on(
    lab: Lab, guest_image: GuestImage, tmp_path: Path
) -> None:
    """The lab's VMs run the guest's ticker: it must count exactly the ticks it made durable
    before a power cut (QEMU killed), resume after them, and refuse a disk with a gap."""
    disk = lab.add_disk("vm1-disk0", 8 * MiB)
    lab.start_sink()
    lab.start_tap()
    uri = lab.uri("vm1-disk0")
    console = tmp_path / "ticker.console"

    vm = start_ticker(guest_image, uri, "vm1", console, interval=0.1)
    try:
        lab.wait_for(lambda: last_tick(console) >= 10, timeout=90,
                     what="ten ticks")  # fmt: skip
    finally:
        vm.kill()  # a power cut: no shutdown
        vm.wait()
    reported = last_tick(console)
    with disk.open("rb") as f:
        blocks = [f.read(BLOCK_SIZE) for _ in range(reported + 2)]
    assert blocks[0] == bytes(BLOCK_SIZE)  # block 0 is never written
    # Every tick the guest reported durable is on the disk; the one being written when QEMU
    # died may be there too (written, not yet reported).
    assert blocks[1 : reported + 1] == [ticker_block("vm1", n) for n in range(1, reported + 1)]
    on_disk = reported + (blocks[reported + 1] == ticker_block("vm1", reported + 1))

    vm = start_ticker(guest_image, uri, "vm1", console, interval=0.1)
    try:
        lab.wait_for(lambda: last_tick(console) > on_disk,
                     timeout=90, what="a tick after the restart")  # fmt: skip
    finally:
        vm.kill()
        vm.wait()
    text = read_console(console)
    assert f"HVDS-RESULT: ticks {on_disk} intact" in text
    assert f"HVDS-TICK: name=vm1 tick={on_disk + 1}" in text  # it went on where it was

    with disk.open("r+b") as f:  # a lost write in the middle: the ticker must see the gap
        f.seek(3 * BLOCK_SIZE)
        f.write(bytes(BLOCK_SIZE))
    vm = start_ticker(guest_image, uri, "vm1", console, interval=0.1)
    try:
        lab.wait_for(lambda: "HVDS-RESULT:" in read_console(console),
                     timeout=90, what="the ticker's verdict")  # fmt: skip
    finally:
        vm.kill()
        vm.wait()
    assert "HVDS-RESULT: error ticks out of order: gap after 2" in read_console(console)
