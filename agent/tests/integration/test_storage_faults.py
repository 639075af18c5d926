"""Storage faults at the target: the datastore of the mirrors fills up (a small tmpfs), or the
journal's own file system does, then gets room again. Each is reported with its own reason
(hvds_vdsa_mirror_full or hvds_vdsa_journal_full, at the target and as the source sees it:
the operator's remedy differs), the alert holds while the fault does, and clears by itself once
there is room. (The journal's size limit, and damaged journal segments, are in
test_replication.py and tests/unit/test_fuzz_journal.py.)"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import sha256_file, wait_for, write_random
from test_replication import Sites, sites  # noqa: F401 - the fixture

MiB = 1024 * 1024
DISK = 64 * MiB


LINK = {"vpg": "vpg1", "target": "vdsa-b1"}
needs_mount = pytest.mark.skipif(shutil.which("mount") is None, reason="needs mount (root)")


def small_tmpfs(path: Path) -> Iterator[Path]:
    path.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def datastore(sites: Sites) -> Iterator[Path]:  # noqa: F811
    """The target's mirror directory on a 24 MiB tmpfs."""
    yield from small_tmpfs(sites.vdsa_b.root / "mirrors")


@pytest.fixture
def journal_fs(sites: Sites) -> Iterator[Path]:  # noqa: F811
    """The target's journal directory on a 24 MiB tmpfs (its size limit far above that)."""
    yield from small_tmpfs(sites.vdsa_b.root / "journal")


def full_reasons(sites: Sites) -> dict[str, float]:  # noqa: F811
    """Both reasons, as the target and as the source report them."""
    return {
        "target journal": sites.vdsa_b.metric("hvds_vdsa_journal_full", vpg="vpg1"),
        "target mirror": sites.vdsa_b.metric("hvds_vdsa_mirror_full", vpg="vpg1"),
        "source journal": sites.vdsa_a.metric("hvds_vdsa_target_journal_full", **LINK),
        "source mirror": sites.vdsa_a.metric("hvds_vdsa_target_mirror_full", **LINK),
    }


def alert_holds(sites: Sites, reason: str, seconds: float) -> None:  # noqa: F811
    """The alert says ``reason`` ("journal" or "mirror"), and only that, at both ends, and
    keeps saying it (through the source's retries, 5 s apart) for ``seconds``."""
    wanted = {f"{end} {what}": float(what == reason) for end in ("target", "source")
              for what in ("journal", "mirror")}  # fmt: skip
    wait_for(lambda: full_reasons(sites) == wanted, 60, f"the {reason}-full alert at both ends")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert full_reasons(sites) == wanted
        time.sleep(0.2)
    status = sites.vdsa_b.status()["targets"]["vpg1"]
    assert status["full"] == reason
    assert sites.vdsa_a.status()["sources"]["vpg1"]["targets"]["vdsa-b1"]["target_full"] == reason


def alert_clears(sites: Sites) -> None:  # noqa: F811
    cleared = dict.fromkeys(("target journal", "target mirror", "source journal",
                             "source mirror"), 0.0)  # fmt: skip
    wait_for(lambda: full_reasons(sites) == cleared, 60, "the alert to clear at both ends")
    assert sites.vdsa_b.status()["targets"]["vpg1"]["full"] is None


@needs_mount
def test_a_full_mirror_datastore_keeps_the_checkpoint_and_recovers(
    sites: Sites,  # noqa: F811
    datastore: Path,
) -> None:
    sites.protect({"vm1-disk0": DISK}, checkpoint_interval=0.5)
    sites.start()
    sites.wait_in_sync(timeout=60)  # the initial sync done: checkpoints are taken
    uri = sites.host_a.uri("vm1-disk0")
    disk = sites.host_a.exports["vm1-disk0"]
    scratch = sites.host_a.root
    write_random(uri, 0, 8 * MiB, scratch)
    sites.tagged_checkpoint("good")
    good = sha256_file(disk)
    assert sha256_file(sites.vdsa_b.mirror("vm1-disk0")) == good

    # 32 MiB more: the mirror's 24 MiB file system cannot take them.
    for n in range(4):
        write_random(uri, (16 + 8 * n) * MiB, 8 * MiB, scratch)
    # The mirror's datastore is full, not the journal: its own reason at both ends, held
    # through the source's retries (a batch of writes alone still fits in the journal).
    alert_holds(sites, "mirror", seconds=6)
    log = (sites.vdsa_b.root / "vdsa.log").read_text()
    assert "No space left on device" in log and str(sites.vdsa_b.mirror("vm1-disk0")) in log
    assert "mirror datastore full" in log
    assert "Traceback" not in log, log[-3000:]
    # The writes themselves are safe: durable in the journal (its file system has room), so
    # the tap's bitmap is clean; it is the checkpoint's apply to the mirror that waits.

    # The checkpoint before is still whole, and nothing before it is gone, although the mirror
    # itself may hold part of the interval it could not finish.
    tags = [c["tag"] for c in sites.vdsa_b.control(op="checkpoints", vpg="vpg1")["checkpoints"]]
    assert "good" in tags
    view = sites.vdsa_b.control(op="view_open", vpg="vpg1", disk="vm1-disk0", tag="good")
    copy = scratch / "good.raw"
    subprocess.run(["nbdcopy", view["uri"], str(copy)], check=True)
    sites.vdsa_b.control(op="view_close", export=view["export"])
    assert sha256_file(copy) == good
    copy.unlink()

    # Room again: the interval is finished, replication catches up by itself.
    subprocess.run(["mount", "-o", "remount,size=256m", str(datastore)], check=True)
    alert_clears(sites)
    sites.tagged_checkpoint("after")
    assert sha256_file(sites.vdsa_b.mirror("vm1-disk0")) == sha256_file(disk)
    assert sites.vdsa_a.metric("hvds_vdsa_rpo_seconds", **LINK) < 5
    assert full_reasons(sites) == dict.fromkeys(full_reasons(sites), 0.0)


@needs_mount
def test_a_full_journal_file_system_is_told_apart_and_recovers(
    sites: Sites,  # noqa: F811
    journal_fs: Path,
) -> None:
    """The journal's own file system full (its size limit far away): the journal reason, not
    the mirror's; the checkpoint before stays whole; room again, replication catches up."""
    sites.protect({"vm1-disk0": DISK}, checkpoint_interval=0.5)
    sites.vdsa_b.target_vpgs[0]["journal_size_limit"] = 1024 * MiB
    sites.start()
    sites.wait_in_sync(timeout=60)
    uri = sites.host_a.uri("vm1-disk0")
    disk = sites.host_a.exports["vm1-disk0"]
    scratch = sites.host_a.root
    write_random(uri, 0, 4 * MiB, scratch)
    sites.tagged_checkpoint("good")

    for n in range(4):  # 32 MiB: more than the journal's 24 MiB file system holds
        write_random(uri, (16 + 8 * n) * MiB, 8 * MiB, scratch)
    alert_holds(sites, "journal", seconds=6)
    log = (sites.vdsa_b.root / "vdsa.log").read_text()
    assert "journal full" in log and "No space left on device" in log
    assert "Traceback" not in log, log[-3000:]
    # Nothing durable is lost: the writes that did not fit wait in the tap's bitmap.
    assert sites.host_a.metric("hvds_tap_dirty_bytes", "vm1-disk0") > 0
    assert "good" in [c["tag"] for c in sites.vdsa_b.control(op="checkpoints", vpg="vpg1")
                      ["checkpoints"]]  # fmt: skip

    subprocess.run(["mount", "-o", "remount,size=256m", str(journal_fs)], check=True)
    alert_clears(sites)
    sites.tagged_checkpoint("after")
    assert sha256_file(sites.vdsa_b.mirror("vm1-disk0")) == sha256_file(disk)
    assert sites.vdsa_a.metric("hvds_vdsa_rpo_seconds", **LINK) < 5
