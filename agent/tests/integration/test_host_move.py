"""A VM whose disks move to another hypervisor of the site (shared storage, live migration)
is followed: its VPG names the new host, and the target compares the disks by hash instead of
having them resent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import qemu_io, sha256_file, wait_for, write_random
from sites import TwoSites

MiB = 1024 * 1024
pytestmark = pytest.mark.slow


@pytest.fixture
def sites(tmp_path: Path) -> Iterator[TwoSites]:
    sites = TwoSites(tmp_path)
    # Host a2 sees the same disk image (shared storage); its tap starts once the VM moves.
    sites.tap_a2, sites.vdsa_a2 = sites.add_source_host("a2", {"vm1-disk0": sites.disk})
    try:
        sites.start()
        sites.vdsa_a2.start()
        yield sites
    finally:
        sites.stop()


def test_a_vm_moved_to_another_host_is_followed_without_resending_its_disks(
    sites: TwoSites, tmp_path: Path
) -> None:
    a, admin = sites.manager_a, sites.admin_a
    qemu_io(sites.tap.uri("vm1-disk0"), "write -P 0x11 0 8M")
    sites.pair()
    a.ok("POST", "/vpgs", admin, sites.vpg())
    sites.wait_state("erp", "protected")
    a.ok("POST", "/vpgs/erp/checkpoints", admin, {"tag": "on-a1"})

    sites.tap.stop()  # the VM leaves host a1 ...
    sites.tap_a2.start_tap(vdsa_socket=str(sites.vdsa_a2.tap_socket))  # ... and runs on a2
    write_random(sites.tap_a2.uri("vm1-disk0"), 1 * MiB, 1 * MiB, tmp_path)  # incompressible
    moved = sites.vpg(vms=[{"name": "vm1", "host": "a2", "disks": [{"export": "vm1-disk0"}]}])
    wait_for(lambda: a.api("PUT", "/vpgs/erp", admin, moved).status_code == 200,
             what="the VPG moved to host a2 (once a2 reports the disk)")  # fmt: skip
    wait_for(lambda: "erp" not in sites.vdsa_a.status()["sources"], what="a1 let go of it")
    sites.wait_state("erp", "protected")
    a.ok("POST", "/vpgs/erp/checkpoints", admin, {"tag": "on-a2"})
    (mirror,) = (sites.tap.root.parent / "b1" / "ds1").rglob("disk1.raw")
    assert sha256_file(mirror) == sha256_file(sites.disk)
    link = sites.vdsa_a2.status()["sources"]["erp"]["targets"]["b1"]
    disk_size = sites.disk.stat().st_size
    print(f"host move: {link['bytes_on_wire']} bytes on the wire for a {disk_size}-byte disk "
          f"with 1 MiB changed")  # fmt: skip
    assert MiB <= link["bytes_on_wire"] < 2 * MiB, link  # the changed MiB, matching hashes
