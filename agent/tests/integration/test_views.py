"""Point-in-time views of a replicated disk, served over NBD by the target VDSA while
replication goes on: the first slice of recovery (failover test)."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from guest import ensure_guest, expected_block, qemu_available, run_guest
from harness import qemu_io, sha256_file
from test_replication import Sites

MiB = 1024 * 1024


@pytest.fixture
def sites(tmp_path: Path) -> Iterator[Sites]:
    sites = Sites(tmp_path)
    try:
        yield sites
    finally:
        sites.stop()


def test_a_view_shows_its_checkpoint_takes_writes_and_leaves_the_mirror_alone(
    sites: Sites,
) -> None:
    sites.protect({"vm1-disk0": 32 * MiB})
    sites.start()
    source = sites.host_a.uri("vm1-disk0")
    qemu_io(source, "write -P 0x11 0 4M")
    sites.tagged_checkpoint("c1")
    qemu_io(source, "write -P 0x22 0 2M")
    sites.tagged_checkpoint("c2")

    view = sites.vdsa_b.control(op="view_open", vpg="vpg1", disk="vm1-disk0", tag="c1")
    out = qemu_io(view["uri"], "read -P 0x11 0 4M", "read -P 0 4M 4M")
    assert "Pattern verification failed" not in out

    # Replication goes on while the view is open; the view stays at its checkpoint.
    qemu_io(source, "write -P 0x33 1M 1M")
    sites.tagged_checkpoint("c3")
    assert "Pattern verification failed" not in qemu_io(view["uri"], "read -P 0x11 0 4M")

    # The view takes writes (a test VM's), on top of the checkpoint.
    out = qemu_io(
        view["uri"], "write -P 0x44 4096 512", "read -P 0x44 4096 512",
        "read -P 0x11 0 4096", "read -P 0x11 4608 3584",
    )  # fmt: skip
    assert "Pattern verification failed" not in out

    sites.vdsa_b.control(op="view_close", export=view["export"])
    assert not list((sites.vdsa_b.root / "journal" / "scratch").iterdir())  # scratch discarded
    mirror = sites.vdsa_b.mirror("vm1-disk0")
    assert sha256_file(mirror) == sha256_file(sites.host_a.exports["vm1-disk0"])


@pytest.mark.guest
@pytest.mark.skipif(not qemu_available(), reason="qemu-system-x86_64 is not installed")
def test_a_qemu_guest_boots_from_a_view_of_a_checkpoint(sites: Sites) -> None:
    sites.protect({"vm1-disk0": 32 * MiB})
    sites.start()
    image = ensure_guest()
    source = sites.host_a.uri("vm1-disk0")
    assert run_guest(image, source, "write:5:32").result == "wrote 32"
    sites.tagged_checkpoint("before")
    at_checkpoint = hashlib.sha256(sites.host_a.exports["vm1-disk0"].read_bytes()).hexdigest()
    assert run_guest(image, source, "write:9:8").result == "wrote 8"  # after the checkpoint

    view = sites.vdsa_b.control(op="view_open", vpg="vpg1", disk="vm1-disk0", tag="before")
    booted = run_guest(image, view["uri"], "read")
    assert booted.result == f"sha256 {at_checkpoint}"
    # And the view is writable like a disk: the guest writes to it, the mirror does not change.
    assert run_guest(image, view["uri"], "write:7:4").result == "wrote 4"
    copy = sites.host_a.root / "view.raw"
    subprocess.run(["nbdcopy", view["uri"], str(copy)], check=True)
    with copy.open("rb") as f:
        blocks = [f.read(4096) for _ in range(32)]
    assert blocks[:4] == [expected_block(7, n) for n in range(4)]  # the test VM's writes
    assert blocks[4:] == [expected_block(5, n) for n in range(4, 32)]  # the checkpoint's
    sites.vdsa_b.control(op="view_close", export=view["export"])
    sites.tagged_checkpoint("after")
    mirror = sites.vdsa_b.mirror("vm1-disk0")
    assert sha256_file(mirror) == sha256_file(sites.host_a.exports["vm1-disk0"])
