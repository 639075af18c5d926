"""Live failover at the target VDSA (decision 0011): the VMs run on views of a checkpoint while
the source is refused; rollback returns to protection with nothing lost; commit makes the
mirrors the live disks: the checkpoint plus the VMs' writes. Checked by whole-disk hashes."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import qemu_io, sha256_file, wait_for
from test_replication import Sites

MiB = 1024 * 1024
pytestmark = pytest.mark.slow


@pytest.fixture
def sites(tmp_path: Path) -> Iterator[Sites]:
    sites = Sites(tmp_path)
    try:
        sites.protect({"vm1-disk0": 16 * MiB, "vm1-disk1": 8 * MiB})
        sites.start()
        yield sites
    finally:
        sites.stop()


def copy_of_source(sites: Sites, directory: Path) -> dict[str, Path]:
    """The source disks as they are now (the tap idle), kept aside."""
    directory.mkdir()
    copies = {}
    for name, path in sites.host_a.exports.items():
        copies[name] = directory / f"{name}.raw"
        shutil.copyfile(path, copies[name])
    return copies


def hashes(paths: dict[str, Path]) -> dict[str, str]:
    return {name: sha256_file(path) for name, path in paths.items()}


def mirrors(sites: Sites) -> dict[str, Path]:
    return {name: sites.vdsa_b.mirror(name) for name in sites.host_a.exports}


def view_hash(uri: str, path: Path) -> str:
    subprocess.run(["nbdcopy", uri, str(path)], check=True, capture_output=True)
    return sha256_file(path)


def test_failover_to_an_earlier_checkpoint_then_rollback_loses_nothing(
    sites: Sites, tmp_path: Path
) -> None:
    disk0, disk1 = (sites.host_a.uri(name) for name in ("vm1-disk0", "vm1-disk1"))
    qemu_io(disk0, "write -P 0x11 0 4M")
    qemu_io(disk1, "write -P 0x12 1M 1M")
    sites.tagged_checkpoint("c1")
    at_c1 = hashes(copy_of_source(sites, tmp_path / "at-c1"))
    qemu_io(disk0, "write -P 0x21 2M 4M")
    sites.tagged_checkpoint("c2")
    before = hashes(mirrors(sites))
    assert before == hashes(sites.host_a.exports)

    failed_over = sites.vdsa_b.control(op="failover", vpg="vpg1", tag="c1")
    views = {d["disk"]: d["uri"] for d in failed_over["disks"]}
    assert {n: view_hash(u, tmp_path / f"{n}.view") for n, u in views.items()} == at_c1
    # The same request again is answered the same (an operation re-run after a crash).
    again = sites.vdsa_b.control(op="failover", vpg="vpg1", tag="c1")
    assert again["disks"] == failed_over["disks"]
    qemu_io(views["vm1-disk0"], "write -P 0x33 0 1M")  # the recovered VM writes
    qemu_io(disk0, "write -P 0x44 8M 1M")  # the source goes on writing meanwhile
    answer = sites.vdsa_a.control(op="checkpoint", vpg="vpg1", tag="refused")
    assert answer["taken"]
    wait_for(lambda: not sites.vdsa_a.status()["sources"]["vpg1"]["targets"]["vdsa-b1"][
        "connected"], what="the source refused")  # fmt: skip
    assert hashes(mirrors(sites)) == before  # the mirrors are untouched by the failover

    rolled = sites.vdsa_b.control(op="failover_rollback", vpg="vpg1")
    assert rolled["discarded_bytes"] == 1 * MiB
    sites.tagged_checkpoint("after-rollback")
    assert hashes(mirrors(sites)) == hashes(sites.host_a.exports)  # and the 0x44 write is there


def test_commit_after_a_vdsa_crash_makes_the_mirrors_the_checkpoint_plus_the_vms_writes(
    sites: Sites, tmp_path: Path
) -> None:
    disk0 = sites.host_a.uri("vm1-disk0")
    qemu_io(disk0, "write -P 0x11 0 6M")
    sites.tagged_checkpoint("c1")
    expected = copy_of_source(sites, tmp_path / "expected")
    qemu_io(disk0, "write -P 0x21 0 2M")
    sites.tagged_checkpoint("c2")

    failed_over = sites.vdsa_b.control(op="failover", vpg="vpg1", tag="c1")
    views = {d["disk"]: d["uri"] for d in failed_over["disks"]}
    for name, command in (
        ("vm1-disk0", "write -P 0x55 1M 12k"),
        ("vm1-disk1", "write -P 0x66 0 5000"),
    ):
        qemu_io(views[name], command)  # the recovered VMs' writes (FUA-less, then flushed)
        subprocess.run(["qemu-io", "-f", "raw", "-c", command, str(expected[name])],
                       check=True, capture_output=True)  # fmt: skip

    sites.vdsa_b.service.kill()  # the VDSA dies with the failover live
    sites.vdsa_b.start()
    uris = {d["disk"]: d["uri"] for d in sites.vdsa_b.control(op="failover", vpg="vpg1",
                                                              tag="c1")["disks"]}  # fmt: skip
    assert {n: view_hash(u, tmp_path / f"{n}.view") for n, u in uris.items()} == hashes(expected)

    committed = sites.vdsa_b.control(op="failover_commit", vpg="vpg1")
    assert committed["state"] == "committed" and committed["merged_bytes"] == 12288 + 8192
    assert hashes({n: Path(p) for n, p in committed["mirrors"].items()}) == hashes(expected)

    # Committed is final: the source stays refused, a rollback is refused, a commit is a no-op.
    assert "vpg1" not in sites.vdsa_b.status()["targets"]  # no target of it any more
    assert sites.vdsa_b.control(op="failover_commit", vpg="vpg1")["state"] == "committed"
    from hvds.vdsa.control import request  # noqa: PLC0415

    refused = request(sites.vdsa_b.control_socket, {"op": "failover_rollback", "vpg": "vpg1"})
    assert not refused["ok"] and "too late" in refused["error"]
    assert hashes(mirrors(sites)) == hashes(expected)
