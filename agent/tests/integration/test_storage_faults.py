"""Storage faults at the target: the datastore of the mirrors fills up (a small tmpfs), then
gets room again. (The journal's own file system full, and damaged journal segments, are in
test_replication.py and tests/unit/test_fuzz_journal.py.)"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import sha256_file, wait_for, write_random
from test_replication import Sites, sites  # noqa: F401 - the fixture

MiB = 1024 * 1024
DISK = 64 * MiB


@pytest.fixture
def datastore(sites: Sites) -> Iterator[Path]:  # noqa: F811
    """The target's mirror directory on a 24 MiB tmpfs."""
    path = sites.vdsa_b.root / "mirrors"
    path.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.skipif(shutil.which("mount") is None, reason="needs mount (root)")
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
    link = {"vpg": "vpg1", "target": "vdsa-b1"}
    wait_for(lambda: sites.vdsa_b.metric("hvds_vdsa_journal_full", vpg="vpg1") == 1, 60,
             "the target to report it")  # fmt: skip
    wait_for(lambda: sites.vdsa_a.metric("hvds_vdsa_target_journal_full", **link) == 1, 30,
             "the source to be told")  # fmt: skip
    log = (sites.vdsa_b.root / "vdsa.log").read_text()
    assert "No space left on device" in log and str(sites.vdsa_b.mirror("vm1-disk0")) in log
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
    sites.host_a.wait_for(
        lambda: sites.vdsa_a.metric("hvds_vdsa_target_journal_full", **link) == 0,
        timeout=60, what="replication to resume",
    )  # fmt: skip
    sites.tagged_checkpoint("after")
    assert sha256_file(sites.vdsa_b.mirror("vm1-disk0")) == sha256_file(disk)
    assert sites.vdsa_b.metric("hvds_vdsa_journal_full", vpg="vpg1") == 0
    assert sites.vdsa_a.metric("hvds_vdsa_rpo_seconds", **link) < 5
