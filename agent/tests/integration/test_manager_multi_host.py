"""A VPG whose VMs run on two hosts of the site: the manager drives the cross-host checkpoint
barrier (decision 0009), a tagged checkpoint is one cut across both, and a failover test opens
both disks at it."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import make_image, qemu_io, sha256_file
from sites import TwoSites

MiB = 1024 * 1024
pytestmark = pytest.mark.slow


@pytest.fixture
def sites(tmp_path: Path) -> Iterator[TwoSites]:
    sites = TwoSites(tmp_path)
    (tmp_path / "images").mkdir()
    sites.disk_a2 = make_image(tmp_path / "images" / "vm2-disk0.raw", 16 * MiB)
    sites.tap_a2, sites.vdsa_a2 = sites.add_source_host("a2", {"vm2-disk0": sites.disk_a2})
    try:
        sites.start()
        sites.start_host(sites.tap_a2, sites.vdsa_a2)
        yield sites
    finally:
        sites.stop()


def test_a_vpg_over_two_hosts_checkpoints_as_one_cut(sites: TwoSites, tmp_path: Path) -> None:
    a, admin = sites.manager_a, sites.admin_a
    vm1, vm2 = sites.tap.uri("vm1-disk0"), sites.tap_a2.uri("vm2-disk0")
    qemu_io(vm1, "write -P 0x11 0 2M")
    qemu_io(vm2, "write -P 0x12 0 2M")
    sites.pair()
    vms = [{"name": "vm1", "host": "a1", "disks": [{"export": "vm1-disk0"}]},
           {"name": "vm2", "host": "a2", "disks": [{"export": "vm2-disk0"}]}]  # fmt: skip
    a.ok("POST", "/vpgs", admin, sites.vpg(vms=vms))
    sites.wait_state("erp", "protected")
    # The sources take no checkpoints of their own: every one is the manager's barrier.
    for vdsa in (sites.vdsa_a, sites.vdsa_a2):
        assert vdsa.status()["sources"]["erp"]["checkpoints_taken"] > 0
    qemu_io(vm1, "write -P 0x21 1M 1M")
    qemu_io(vm2, "write -P 0x22 1M 1M")
    cut = a.ok("POST", "/vpgs/erp/checkpoints", admin, {"tag": "both"})
    at_cut = {"vm1-disk0": sha256_file(sites.disk), "vm2-disk0": sha256_file(sites.disk_a2)}
    assert cut in a.ok("GET", "/vpgs/erp/checkpoints", admin)
    qemu_io(vm1, "write -P 0x31 0 1M")  # after the cut

    test = a.wait_command(a.ok("POST", "/vpgs/erp/failover-test", admin, {"tag": "both"}), admin)
    views = {view["disk"]: view["uri"] for view in test["result"]["views"]}
    seen = {}
    for disk, uri in views.items():
        copy = tmp_path / f"{disk}.raw"
        subprocess.run(["nbdcopy", uri, str(copy)], check=True)
        seen[disk] = sha256_file(copy)
    assert seen == at_cut  # both disks at the same cut
    a.wait_command(a.ok("DELETE", "/vpgs/erp/failover-test", admin), admin)
