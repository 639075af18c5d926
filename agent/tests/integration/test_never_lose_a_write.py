"""The tap's promise: the VM never waits for the VDSA, and no write is ever missed by it.

Every test ends by comparing the replica the sink rebuilt with the disk, by hash.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from harness import Lab, sha256_file

from hvds.tap.bitmap import DirtyBitmap
from hvds.tap.exports import bitmap_path

MiB = 1024 * 1024
BLOCK = 64 * 1024


def fio(uri: str, *args: str) -> subprocess.Popen[bytes]:
    argv = ["fio", "--name=load", "--ioengine=nbd", f"--uri={uri}", "--output-format=json"]
    return subprocess.Popen([*argv, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def changed_blocks(image: Path, size: int) -> set[int]:
    """Blocks of an image that started all zeroes and no longer are."""
    zero = bytes(BLOCK)
    with image.open("rb") as f:
        return {n for n in range(size // BLOCK) if f.read(BLOCK) != zero}


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_kill_9_with_the_vdsa_down_loses_no_range(lab: Lab) -> None:
    size = 64 * MiB
    disk = lab.add_disk("disk0", size)
    lab.start_tap()  # no sink: every write must land in the bitmap
    region = range(8 * MiB // BLOCK, 24 * MiB // BLOCK)
    load = fio(
        lab.uri("disk0"), "--rw=randwrite", "--bs=4k", "--iodepth=16",
        "--offset=8M", "--size=16M", "--time_based", "--runtime=60",
    )  # fmt: skip
    time.sleep(2)
    assert lab.tap is not None
    lab.tap.kill()
    load.wait(30)

    written = changed_blocks(disk, size)
    bitmap = DirtyBitmap(bitmap_path(lab.root / "state", "disk0"), size, BLOCK)
    dirty = set(bitmap.set_blocks())
    bitmap.close()
    assert len(written) > 10, "the write stream had not started"
    assert written <= dirty, f"blocks written but not dirty: {sorted(written - dirty)[:10]}"
    assert dirty <= set(region), "dirty blocks outside the range that was written"

    lab.start_tap()
    assert lab.metric("hvds_tap_dirty_bytes", "disk0") == len(dirty) * BLOCK
    lab.start_sink()
    lab.wait_for(lambda: lab.metric("hvds_tap_dirty_bytes", "disk0") == 0, what="resync")

    copies = [c for c in lab.copies() if c["type"] == "WRITE"]
    resent = {int(c["offset"]) // BLOCK for c in copies if c["resync"]}  # type: ignore[call-overload]
    assert len(copies) == len(dirty), "only the dirty blocks are sent, each once"
    assert resent == dirty
    assert sha256_file(lab.replica("disk0")) == sha256_file(disk)


def test_slow_vdsa_never_slows_the_vm_and_memory_stays_bounded(lab: Lab) -> None:
    disk = lab.add_disk("disk0", 64 * MiB)
    lab.start_sink()
    lab.start_tap(link_buffer_bytes=MiB)
    assert lab.tap is not None and lab.tap.proc is not None and lab.sink is not None
    baseline_rss = rss_bytes(lab.tap.proc.pid)
    lab.sink.pause()  # the VDSA stops reading: the link fills up
    load = fio(lab.uri("disk0"), "--rw=randwrite", "--bs=64k", "--iodepth=16", "--size=64M",
               "--io_size=256M")  # fmt: skip
    _out, err = load.communicate(timeout=120)
    assert load.returncode == 0, err.decode()
    grown = rss_bytes(lab.tap.proc.pid) - baseline_rss
    lost = lab.metric("hvds_tap_copies_lost_total", "disk0")
    assert lost > 0, "the link never filled: the test did not test anything"
    assert grown < 48 * MiB, f"tap memory grew by {grown / MiB:.0f} MiB with a 1 MiB link limit"
    assert lab.metric("hvds_tap_dirty_bytes", "disk0") > 0

    lab.sink.resume()
    lab.wait_for(lambda: lab.metric("hvds_tap_dirty_bytes", "disk0") == 0, what="resync")
    assert any(c["resync"] for c in lab.copies())
    assert sha256_file(lab.replica("disk0")) == sha256_file(disk)


def test_vdsa_restart_resyncs_only_what_it_missed(lab: Lab) -> None:
    disk = lab.add_disk("disk0", 32 * MiB)
    lab.start_sink()
    lab.start_tap()
    subprocess.run(
        ["qemu-io", "-f", "raw", "-c", "write -P 1 0 1M", lab.uri("disk0")], check=True,
        capture_output=True,
    )  # fmt: skip
    lab.wait_for(lambda: lab.metric("hvds_tap_dirty_bytes", "disk0") == 0, what="acks")
    assert lab.sink is not None
    lab.sink.kill()
    lab.wait_for(lambda: lab.metric("hvds_tap_vdsa_link_up") == 0, what="link down")
    subprocess.run(
        ["qemu-io", "-f", "raw", "-c", "write -P 2 8M 256k", "-c", "write -P 3 16M 4k",
         lab.uri("disk0")], check=True, capture_output=True,
    )  # fmt: skip
    assert lab.metric("hvds_tap_dirty_bytes", "disk0") == 5 * BLOCK
    lab.start_sink()
    lab.wait_for(lambda: lab.metric("hvds_tap_dirty_bytes", "disk0") == 0, what="resync")
    resent = [c for c in lab.copies() if c["resync"]]
    assert sorted(int(c["offset"]) for c in resent) == [  # type: ignore[call-overload]
        8 * MiB, 8 * MiB + BLOCK, 8 * MiB + 2 * BLOCK, 8 * MiB + 3 * BLOCK, 16 * MiB,
    ]  # fmt: skip
    assert sha256_file(lab.replica("disk0")) == sha256_file(disk)


def test_discarding_sink_acknowledges_every_copy_without_a_replica(lab: Lab) -> None:
    lab.add_disk("disk0", 16 * MiB)
    lab.start_sink(discard=True)
    lab.start_tap()
    subprocess.run(
        ["qemu-io", "-f", "raw", "-c", "write -P 9 0 4M", "-c", "write -z 8M 1M", lab.uri("disk0")],
        check=True,
        capture_output=True,
    )
    lab.wait_for(lambda: lab.metric("hvds_tap_dirty_bytes", "disk0") == 0, what="acks")
    kinds = [c["type"] for c in lab.copies()]
    assert kinds.count("ZERO") == 1 and kinds.count("WRITE") >= 1
    assert not lab.replica_dir.exists()


def test_a_full_disk_fails_the_write_with_enospc_and_nothing_is_lost(lab: Lab) -> None:
    # The image lives on an 8 MiB tmpfs: the ninth MiB of data cannot be stored.
    store = lab.root / "small-fs"
    store.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(store)], check=True)
    try:
        lab.exports["disk0"] = store / "disk0.raw"
        with lab.exports["disk0"].open("wb") as f:
            f.truncate(32 * MiB)
        lab.start_sink()
        lab.start_tap()
        result = subprocess.run(
            ["qemu-io", "-f", "raw", "-c", "write -P 0x61 0 4M", "-c", "write -P 0x62 4M 8M",
             lab.uri("disk0")], capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert "No space left on device" in result.stdout + result.stderr
        assert lab.tap is not None and lab.tap.proc is not None and lab.tap.proc.poll() is None
        lab.wait_for(lambda: lab.metric("hvds_tap_dirty_bytes", "disk0") == 0, what="acks")
        # Whatever reached the disk reached the replica, and the first write is whole.
        assert sha256_file(lab.replica("disk0")) == sha256_file(lab.exports["disk0"])
        with lab.exports["disk0"].open("rb") as f:
            assert f.read(4 * MiB) == b"\x61" * 4 * MiB
    finally:
        lab.stop()
        subprocess.run(["umount", str(store)], check=False)
