"""Recovery through the site managers' API, end to end: failover tests that boot real QEMU
guests from the views of a checkpoint, live failover with rollback or commit, and a move.
Every check is by the content of whole disks."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from guest import ensure_guest, qemu_available, run_guest
from harness import qemu_io, readable, sha256_file, wait_for, write_random
from sites import RecoverySites, hashes

MiB = 1024 * 1024
pytestmark = pytest.mark.slow


@pytest.fixture
def sites(recovery_sites: RecoverySites) -> RecoverySites:
    return recovery_sites


def copies(paths: dict[str, Path], directory: Path) -> dict[str, Path]:
    directory.mkdir()
    return {name: Path(shutil.copyfile(path, directory / f"{name}.raw")) for name, path in
            paths.items()}  # fmt: skip


@pytest.mark.guest
@pytest.mark.skipif(not qemu_available(), reason="qemu-system-x86_64 is not installed")
def test_failover_test_boots_both_vms_from_the_checkpoint_while_replication_goes_on(
    sites: RecoverySites,
) -> None:
    image = ensure_guest()
    boot = {
        vm: {"kernel": str(image.kernel), "initrd": str(image.initramfs), "memory_mb": 256,
             "append": "console=ttyS0 panic=-1 hvds.action=read", "order": order,
             "delay_seconds": 0.5}
        for order, vm in enumerate(("vm2", "vm1"))  # vm2 boots first
    }  # fmt: skip
    vm1, vm2 = (sites.tap.uri(f"{vm}-disk0") for vm in ("vm1", "vm2"))
    assert run_guest(image, vm1, "write:1:64").result == "wrote 64"
    assert run_guest(image, vm2, "write:2:32").result == "wrote 32"
    sites.protect(boot)
    checkpoint = sites.checkpoint("before-test")
    at_checkpoint = hashes(sites.sources())
    assert run_guest(image, vm1, "write:3:8").result == "wrote 8"  # after the checkpoint

    started = sites.command("POST", "/vpgs/erp/failover-test", {"tag": "before-test"})["result"]
    assert started["checkpoint"]["id"] == checkpoint["id"]
    assert [vm["name"] for vm in started["vms"]] == ["erp.vm2", "erp.vm1"]
    # Replication goes on during the test: the source writes, checkpoints reach the target.
    qemu_io(vm2, "write -P 0x5a 8M 1M")
    during = sites.checkpoint("during-test")
    assert during["id"] > checkpoint["id"]
    rpo = sites.api("GET", "/vpgs/erp")["rpo_seconds"]
    assert rpo is not None and rpo < 10

    def guests_done() -> bool:
        return all(sites.vdsa_b.control(op="vm_status", name=f"erp.{vm}")["state"] == "stopped"
                   for vm in ("vm1", "vm2"))  # fmt: skip

    wait_for(guests_done, timeout=120, what="both recovered guests to report and power off")
    report = sites.command("DELETE", "/vpgs/erp/failover-test")["result"]["report"]
    assert report["result"] == "passed", report
    consoles = {vm["name"]: "\n".join(vm["console_tail"]) for vm in report["vms"]}
    for vm in ("vm1", "vm2"):
        assert f"HVDS-RESULT: sha256 {at_checkpoint[f'{vm}-disk0']}" in consoles[f"erp.{vm}"]
    assert report["checkpoint"]["tag"] == "before-test"
    assert sorted(report["disks"]) == ["vm1-disk0", "vm2-disk0"]
    sites.wait_state("erp", "protected")
    sites.checkpoint("after-test")
    assert sites.in_sync()


def test_live_failover_to_an_earlier_checkpoint_then_rollback(
    sites: RecoverySites, tmp_path: Path
) -> None:
    vm1 = sites.tap.uri("vm1-disk0")
    qemu_io(vm1, "write -P 0x11 0 4M")
    sites.protect()
    sites.checkpoint("c1")
    qemu_io(vm1, "write -P 0x22 1M 1M")
    sites.checkpoint("c2")
    before = hashes(sites.mirrors())
    assert before == hashes(sites.sources())

    failed_over = sites.command("POST", "/vpgs/erp/failover", {"tag": "c1"})["result"]
    assert sites.api("GET", "/vpgs/erp")["state"] == "failing_over"
    views = {view["disk"]: view["uri"] for view in failed_over["views"]}
    qemu_io(views["vm1-disk0"], "write -P 0x33 0 64k")  # the recovered VM writes
    assert not readable(vm1)  # the source's disks are detached: nothing there can write them
    rolled = sites.command("POST", "/vpgs/erp/failover/rollback")["result"]
    assert rolled["discarded_bytes"] == 64 * 1024
    assert rolled["source_attached"] == {"a1": ["vm1-disk0", "vm2-disk0"]}
    assert hashes(sites.mirrors()) == before  # the failover left the mirrors alone
    assert hashes(sites.sources()) == before  # and the sources
    qemu_io(vm1, "write -P 0x44 2M 64k")  # protection goes on
    sites.wait_state("erp", "protected")
    sites.checkpoint("after-rollback")
    assert sites.in_sync()


def test_failover_then_commit_makes_the_mirrors_the_checkpoint_plus_the_vms_writes(
    sites: RecoverySites, tmp_path: Path
) -> None:
    vm1 = sites.tap.uri("vm1-disk0")
    qemu_io(vm1, "write -P 0x11 0 6M")
    sites.protect()
    sites.checkpoint("c1")
    expected = copies(sites.sources(), tmp_path / "expected")
    qemu_io(vm1, "write -P 0x22 0 1M")
    sites.checkpoint("c2")

    failed_over = sites.command("POST", "/vpgs/erp/failover", {"tag": "c1"})["result"]
    views = {view["disk"]: view["uri"] for view in failed_over["views"]}
    for target in (views["vm2-disk0"], expected["vm2-disk0"]):
        qemu_io(target, "write -P 0x66 4M 128k")
    committed = sites.command("POST", "/vpgs/erp/failover/commit")["result"]
    assert committed["state"] == "committed" and committed["merged_bytes"] == 128 * 1024
    assert sites.api("GET", "/vpgs/erp")["state"] == "failed_over"
    assert hashes(sites.mirrors()) == hashes(expected)
    # Committing again (a re-run after a crash) changes nothing.
    sites.command("POST", "/vpgs/erp/failover/commit")
    assert hashes(sites.mirrors()) == hashes(expected)


def test_a_move_with_both_sites_up_loses_no_write(sites: RecoverySites) -> None:
    vm1, vm2 = (sites.tap.uri(f"{vm}-disk0") for vm in ("vm1", "vm2"))
    qemu_io(vm1, "write -P 0x11 0 2M")
    sites.protect()
    qemu_io(vm1, "write -P 0x12 3M 1M")  # the VMs' last writes before they are stopped
    qemu_io(vm2, "write -P 0x13 0 512k")
    moved = sites.command("POST", "/vpgs/erp/move")["result"]
    assert moved["checkpoint"]["tag"].startswith("move-")
    assert moved["state"] == "committed"
    assert hashes({n: Path(p) for n, p in moved["mirrors"].items()}) == hashes(sites.sources())


def test_commit_reverse_protection_sends_only_the_changes_then_failback(
    sites: RecoverySites, tmp_path: Path
) -> None:
    vm1 = sites.tap.uri("vm1-disk0")
    write_random(vm1, 0, 8 * MiB, tmp_path)
    sites.protect()
    sites.checkpoint("c1")

    failed_over = sites.command("POST", "/vpgs/erp/failover", {"tag": "c1"})["result"]
    assert failed_over["source_fenced"] == {"a1": ["vm1-disk0", "vm2-disk0"]}
    wait_for(lambda: not readable(vm1), what="site A's old disk detached from its tap")
    views = {view["disk"]: view["uri"] for view in failed_over["views"]}
    write_random(views["vm1-disk0"], 1 * MiB, 1 * MiB, tmp_path)  # the recovered VM writes
    committed = sites.command("POST", "/vpgs/erp/failover/commit")["result"]
    uris = committed["uris"]
    write_random(uris["vm1-disk0"], 4 * MiB, 512 * 1024, tmp_path)  # and goes on, at site B
    write_random(uris["vm2-disk0"], 0, 512 * 1024, tmp_path)
    changed = 2 * MiB

    assert sites.api("GET", "/vpgs/erp")["reverse_site"] is None
    assert sites.api("GET", "/vpgs/erp/checkpoints") == []  # the commit removed the journal
    reverse = sites.command("POST", "/vpgs/erp/reverse-protection")["result"]
    assert reverse["site"] == "site-b"
    assert sites.api("GET", "/vpgs/erp")["reverse_site"] == "site-b"  # what a re-run checks
    assert [vpg["reverse_site"] for vpg in sites.api("GET", "/vpgs")] == ["site-b"]
    b = sites.manager_b
    wait_for(lambda: b.ok("GET", "/vpgs/erp", sites.admin_b)["state"] == "protected", 60,
             "the reverse VPG protected")  # fmt: skip
    link = sites.vdsa_b.status()["sources"]["erp"]["targets"]["a1"]
    ratio = link["bytes_on_wire"] / changed
    print(f"reverse protection: {link['bytes_on_wire']} bytes on the wire for {changed} "
          f"bytes changed after the failover: {ratio:.3f}x")  # fmt: skip
    assert ratio <= 1.1, link

    # Failback: a move in the other direction, into site A's old disks, served again.
    moved = b.wait_command(b.ok("POST", "/vpgs/erp/move", sites.admin_b), sites.admin_b)
    assert moved["result"]["state"] == "committed"
    at_b = hashes(
        dict(
            zip(
                ("vm1-disk0", "vm2-disk0"),
                (Path(p) for p in committed["mirrors"].values()),
                strict=True,
            )
        )
    )
    assert hashes(sites.sources()) == at_b  # site A's disks hold all of site B's writes
    assert readable(vm1)  # served by site A's tap again
    assert not readable(uris["vm1-disk0"])  # and no longer at site B


def ext4_image(path: Path, size: int, files: dict[str, bytes]) -> Path:
    """An ext4 file system image holding ``files`` (made by mkfs.ext4 -d, no mounting)."""
    tree = path.with_suffix(".tree")
    for name, content in files.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(content)
    with path.open("wb") as f:
        f.truncate(size)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(path)], check=True)
    return path


def test_a_file_and_a_whole_disk_restored_from_an_earlier_checkpoint(
    sites: RecoverySites, tmp_path: Path
) -> None:
    vm1 = sites.tap.uri("vm1-disk0")
    size = sites.disk.stat().st_size
    v1 = ext4_image(tmp_path / "v1.img", size, {"etc/hello": b"version 1\n"})
    subprocess.run(["nbdcopy", str(v1), vm1], check=True)
    sites.protect()
    sites.checkpoint("v1")
    v2 = ext4_image(tmp_path / "v2.img", size, {"etc/hello": b"version 2\n", "etc/new": b"n"})
    subprocess.run(["nbdcopy", str(v2), vm1], check=True)
    sites.checkpoint("v2")

    def read(tag: str, path: str) -> Any:
        return sites.manager_a.api(
            "GET", f"/vpgs/erp/file?disk=vm1-disk0&path={path}&tag={tag}", sites.admin_a
        )

    for tag, expected in (("v1", b"version 1\n"), ("v2", b"version 2\n")):
        answer = read(tag, "/etc/hello")
        assert answer.status_code == 200, answer.text
        assert base64.b64decode(answer.json()["content"]) == expected
    missing = read("v1", "/etc/new")  # created after v1
    assert missing.status_code >= 400 and "not on the disk" in missing.text

    restored = sites.command("POST", "/vpgs/erp/restore", {
        "disk": "vm1-disk0", "tag": "v1", "datastore": "ds1", "name": "vm1-at-v1",
    })["result"]  # fmt: skip
    assert restored["path"].endswith("restores/vm1-at-v1.raw")
    assert sha256_file(Path(restored["path"])) == sha256_file(v1)
    again = sites.manager_a.ok("POST", "/vpgs/erp/restore", sites.admin_a, {
        "disk": "vm1-disk0", "tag": "v1", "datastore": "ds1", "name": "vm1-at-v1",
    })  # fmt: skip
    ended = sites.manager_a.api("GET", f"/commands/{again['id']}", sites.admin_a)
    wait_for(lambda: sites.manager_a.ok("GET", f"/commands/{again['id']}", sites.admin_a)[
        "status"] == "failed", what="a second restore under the same name refused")  # fmt: skip
    assert ended.status_code == 200


def test_a_failover_survives_crashes_of_both_managers_and_the_target_vdsa(
    sites: RecoverySites, tmp_path: Path
) -> None:
    vm1 = sites.tap.uri("vm1-disk0")
    qemu_io(vm1, "write -P 0x11 0 2M")
    sites.protect()
    sites.checkpoint("c1")
    expected = copies(sites.sources(), tmp_path / "expected")
    a, b = sites.manager_a, sites.manager_b

    started = sites.api("POST", "/vpgs/erp/failover", {"tag": "c1"})
    assert a.service is not None
    a.service.kill()  # whenever that lands in the command: it must be safe to ask again
    a.start()
    interrupted = sites.api("GET", f"/commands/{started['id']}")
    assert interrupted["status"] in ("succeeded", "failed"), interrupted
    if interrupted["status"] == "failed":
        assert interrupted["error"] == "interrupted by a manager restart"
    failed_over = sites.command("POST", "/vpgs/erp/failover", {"tag": "c1"})["result"]
    views = {view["disk"]: view["uri"] for view in failed_over["views"]}
    for target in (views["vm1-disk0"], expected["vm1-disk0"]):
        qemu_io(target, "write -P 0x77 512k 64k")

    assert b.service is not None and sites.vdsa_b.service is not None
    b.service.kill()  # the recovery site's manager and VDSA die with the failover live
    sites.vdsa_b.service.kill()
    sites.vdsa_b.start()
    b.start()
    committed = sites.command("POST", "/vpgs/erp/failover/commit")["result"]
    assert committed["state"] == "committed"
    assert hashes(sites.mirrors()) == hashes(expected)  # the VM's write survived it all


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"hvds-t{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def test_failover_test_networks_and_scripts(
    sites: RecoverySites, tmp_path: Path, netns: str
) -> None:
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    for name in ("pre", "post"):
        script = scripts / f"{name}.sh"
        script.write_text('#!/bin/sh\necho "$HVDS_VPG $HVDS_OPERATION $HVDS_CHECKPOINT" > '
                          f'"{scripts}/{name}.out"\n')  # fmt: skip
        script.chmod(0o755)
    sites.vdsa_b.settings["scripts_dir"] = str(scripts)
    sites.vdsa_b.stop()
    sites.vdsa_b.start()
    # No kernel and no boot loader on the disk: the VM waits in its firmware, on the network.
    boot = {"vm1": {"memory_mb": 64}, "vm2": {"memory_mb": 64}}
    sites.protect(boot)
    recovery = {"test_network": f"netns:{netns}", "pre_script": "pre.sh", "post_script": "post.sh"}
    vpg = sites.api("GET", "/vpgs/erp")
    settings = {k: vpg[k] for k in ("name", "vms", "targets", "checkpoint_interval_seconds")}
    sites.api("PUT", "/vpgs/erp", {**settings, "recovery": recovery})
    sites.wait_state("erp", "protected")
    checkpoint = sites.checkpoint("net")

    sites.command("POST", "/vpgs/erp/failover-test", {"tag": "net"})
    pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True,
                          check=True).stdout.split()  # fmt: skip
    commands = [Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] for pid in pids]
    assert commands.count(b"qemu-system-x86_64") == 2, commands  # both VMs, in the namespace
    for name in ("pre", "post"):
        assert (scripts / f"{name}.out").read_text().split() == [
            "erp",
            "test",
            str(checkpoint["id"]),
        ]
    report = sites.command("DELETE", "/vpgs/erp/failover-test")["result"]["report"]
    assert {vm["state"] for vm in report["vms"]} == {"stopped"}
    assert subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True,
                          check=True).stdout.split() == []  # fmt: skip

    # A script that fails stops the operation with its reason.
    (scripts / "pre.sh").write_text("#!/bin/sh\necho no capacity >&2\nexit 3\n")
    started = sites.api("POST", "/vpgs/erp/failover-test", {"tag": "net"})
    wait_for(lambda: sites.api("GET", f"/commands/{started['id']}")["status"] == "failed",
             what="the test refused by its pre script")  # fmt: skip
    error = sites.api("GET", f"/commands/{started['id']}")["error"]
    assert "pre.sh failed (exit 3): no capacity" in error
    # Nothing was left half open: with the script fixed, the test runs.
    (scripts / "pre.sh").write_text("#!/bin/sh\nexit 0\n")
    sites.command("POST", "/vpgs/erp/failover-test", {"tag": "net"})
    sites.command("DELETE", "/vpgs/erp/failover-test")


def test_disaster_failover_from_the_recovery_site_and_the_old_site_comes_back_fenced(
    sites: RecoverySites, tmp_path: Path
) -> None:
    vm1 = sites.tap.uri("vm1-disk0")
    qemu_io(vm1, "write -P 0x11 0 2M")
    sites.protect()
    sites.checkpoint("last-good")
    expected = copies(sites.sources(), tmp_path / "expected")
    # Site A goes dark: its manager, VDSA and tap die at once.
    for service in (sites.manager_a.service, sites.vdsa_a.service, sites.tap.tap):
        assert service is not None
        service.kill()

    b, admin_b = sites.manager_b, sites.admin_b
    (replica,) = b.ok("GET", "/replicas", admin_b)
    assert replica == {"vpg": "erp", "source_site": "site-a", "host": "b1", "recovery": None,
                       "state": None, "checkpoint": None}  # fmt: skip
    at = "?source=site-a"
    listed = b.ok("GET", f"/replicas/erp/checkpoints{at}", admin_b)
    assert "last-good" in [checkpoint["tag"] for checkpoint in listed]
    assert b.api("POST", "/replicas/erp/failover", admin_b, {}).status_code == 400  # whose?
    b.ok("POST", f"/replicas/erp/failover{at}", admin_b, {"tag": "last-good"})
    committed = b.ok("POST", f"/replicas/erp/failover/commit{at}", admin_b)
    assert committed["state"] == "committed"
    assert hashes(sites.mirrors()) == hashes(expected)

    # Site A comes back: it must not write the old copy, and it follows the recovery site.
    sites.vdsa_a.start()
    sites.tap.start_tap(vdsa_socket=str(sites.vdsa_a.tap_socket),
                        exports_dir=str(sites.tap.root / "exports.d"))  # fmt: skip
    sites.manager_a.start()
    sites.wait_state("erp", "failed_over", timeout=30)
    wait_for(lambda: not readable(vm1), what="site A's old disks fenced on its return")
    vpg = sites.api("GET", "/vpgs/erp")
    assert vpg["state"] == "failed_over"
    assert hashes(sites.sources()) == hashes(expected)  # nothing written on the old side


def test_a_view_in_use_survives_the_recovery_host_taking_another_vpg(
    sites: RecoverySites, tmp_path: Path
) -> None:
    vm1 = sites.tap.uri("vm1-disk0")
    qemu_io(vm1, "write -P 0x11 0 2M")
    erp = sites.vpg(vms=[{"name": "vm1", "host": "a1", "disks": [{"export": "vm1-disk0"}]}])
    sites.pair()
    sites.api("POST", "/vpgs", erp)
    sites.wait_state("erp", "protected")
    sites.checkpoint("c1")
    at_c1 = sha256_file(sites.disk)
    view = sites.command("POST", "/vpgs/erp/failover-test", {"tag": "c1"})["result"]["views"][0]
    qemu_io(view["uri"], "write -P 0x99 0 64k")  # the test VM writes
    # A client connected all along (as a VM is): it reads before and after the restart.
    flag = tmp_path / "go-on"
    script = (
        "import hashlib, os, time\n"
        "before = hashlib.sha256(h.pread(1 << 20, 0)).hexdigest()\n"
        f"while not os.path.exists({str(flag)!r}): time.sleep(0.05)\n"
        "after = hashlib.sha256(h.pread(1 << 20, 0)).hexdigest()\n"
        "print(before, after)\n"
    )
    connected = subprocess.Popen(["nbdsh", "-u", view["uri"], "-c", script],
                                 env={"PATH": "/usr/bin:/bin"}, stdout=subprocess.PIPE,
                                 text=True)  # fmt: skip

    # Meanwhile another VPG comes to the same recovery host: its VDSA restarts its roles.
    log = sites.vdsa_b.root / "vdsa.log"
    restarts = log.read_text().count("roles restarted")
    other = sites.vpg(name="crm", vms=[{"name": "vm2", "host": "a1",
                                        "disks": [{"export": "vm2-disk0"}]}])  # fmt: skip
    sites.api("POST", "/vpgs", other)
    sites.wait_state("crm", "protected")
    assert log.read_text().count("roles restarted") > restarts
    flag.touch()
    out, _ = connected.communicate(timeout=60)
    before, after = out.split()
    assert before == after  # the same data through the same connection, across the restart
    copy = tmp_path / "view.raw"
    subprocess.run(["nbdcopy", view["uri"], str(copy)], check=True)  # same connection URI
    expected = tmp_path / "expected.raw"
    shutil.copyfile(sites.disk, expected)
    qemu_io(expected, "write -P 0x99 0 64k")
    assert sha256_file(copy) == sha256_file(expected) != at_c1  # its writes and the checkpoint
    sites.command("DELETE", "/vpgs/erp/failover-test")
