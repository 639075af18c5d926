"""Stock NBD clients against a real hvds-tap, over its unix socket and TCP.

Each test also checks that the copies sent to the VDSA sink rebuild the same disk.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
from pathlib import Path

import pytest
from harness import Lab, sha256_file

MiB = 1024 * 1024
TRANSPORTS = pytest.mark.parametrize("tcp", [False, True], ids=["unix", "tcp"])


def run(*argv: str, timeout: float = 120) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"{argv[0]} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def assert_replica_equals_disk(lab: Lab, export: str) -> None:
    lab.wait_for(lambda: lab.metric("hvds_tap_dirty_bytes", export) == 0, what="acks")
    assert sha256_file(lab.replica(export)) == sha256_file(lab.exports[export])


@pytest.fixture
def running(lab: Lab) -> Lab:
    lab.add_disk("disk0", 64 * MiB)
    lab.add_disk("disk1", 16 * MiB)
    lab.start_sink()
    lab.start_tap()
    return lab


@TRANSPORTS
def test_qemu_img_info(running: Lab, tcp: bool) -> None:
    info = json.loads(run("qemu-img", "info", "--output=json", running.uri("disk0", tcp)))
    assert info["virtual-size"] == 64 * MiB


@TRANSPORTS
def test_qemu_io_write_read_zero_discard(running: Lab, tcp: bool) -> None:
    out = run(
        "qemu-io", "-f", "raw",
        "-c", "write -P 0x5a 0 1M",
        "-c", "write -f -P 0x33 3M 64k",  # FUA
        "-c", "read -P 0x5a 0 1M",
        "-c", "write -z 1M 512k",
        "-c", "read -P 0 1M 512k",
        "-c", "discard 2M 1M",
        "-c", "flush",
        running.uri("disk0", tcp),
    )  # fmt: skip
    assert "Pattern verification failed" not in out
    with running.exports["disk0"].open("rb") as f:
        assert f.read(MiB) == b"\x5a" * MiB
        f.seek(3 * MiB)
        assert f.read(64 * 1024) == b"\x33" * 64 * 1024
    assert_replica_equals_disk(running, "disk0")


def test_nbdinfo_lists_every_export(running: Lab) -> None:
    listing = json.loads(run("nbdinfo", "--json", "--list", f"nbd://127.0.0.1:{running.tcp_port}"))
    exports = {e["export-name"]: e for e in listing["exports"]}
    assert set(exports) == {"disk0", "disk1"}
    assert exports["disk1"]["export-size"] == 16 * MiB
    assert exports["disk0"]["can_flush"] and exports["disk0"]["can_fua"]


@TRANSPORTS
def test_nbdcopy_in_and_out(running: Lab, tcp: bool, tmp_path: Path) -> None:
    source = tmp_path / "source.raw"
    source.write_bytes(os.urandom(16 * MiB))
    run("nbdcopy", str(source), running.uri("disk1", tcp))
    back = tmp_path / "back.raw"
    run("nbdcopy", running.uri("disk1", tcp), str(back))
    assert sha256_file(back) == sha256_file(source) == sha256_file(running.exports["disk1"])
    assert_replica_equals_disk(running, "disk1")


def test_nbdsh_commands_and_block_status(running: Lab) -> None:
    script = """
h.pwrite(b"x" * 65536, 1048576)
assert h.pread(65536, 1048576) == b"x" * 65536
h.flush()
h.zero(65536, 1048576 + 65536)
h.trim(65536, 0)
assert h.can_meta_context("base:allocation")
entries = []
h.block_status(4 * 65536, 0, lambda ctx, off, e, err: entries.extend(e))
print(entries)
"""
    # nbdsh (Debian's python3-libnbd) runs "python3 -m nbd": it needs Debian's Python, not the
    # virtualenv's, which has no libnbd bindings.
    nbdsh = ("env", "PATH=/usr/bin:/bin", "nbdsh", "--base-allocation")
    out = run(*nbdsh, "-u", running.uri("disk0"), "-c", script)
    extents = eval(out)
    lengths, flags = extents[0::2], extents[1::2]
    assert sum(lengths) >= 4 * 65536
    assert flags[0] & 2  # the trimmed range reads as zero
    assert_replica_equals_disk(running, "disk0")


@TRANSPORTS
def test_fio_random_write_verified_and_replica_identical(running: Lab, tcp: bool) -> None:
    out = run(
        "fio", "--name=verify", "--ioengine=nbd", f"--uri={running.uri('disk0', tcp)}",
        "--rw=randwrite", "--bs=4k", "--iodepth=32", "--size=64M",
        "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0",
        "--output-format=json",
    )  # fmt: skip
    job = json.loads(out[out.index("{") :])["jobs"][0]
    assert job["error"] == 0
    assert job["write"]["io_bytes"] == 64 * MiB  # every block written once
    assert job["read"]["io_bytes"] == 64 * MiB  # and read back to verify
    assert running.metric("hvds_tap_copies_lost_total", "disk0") == 0
    assert_replica_equals_disk(running, "disk0")


def nbd_greeting(sock: socket.socket) -> None:
    data = b""
    while len(data) < 18:
        data += sock.recv(18 - len(data))
    assert data[:8] == b"NBDMAGIC"


def test_malformed_clients_do_not_disturb_others(running: Lab) -> None:
    # A client that sends garbage handshakes, one that sends a bad request magic after GO, and
    # one that hangs up mid-write: each is dropped or answered, and the tap keeps serving.
    with socket.create_connection(("127.0.0.1", running.tcp_port)) as s:
        nbd_greeting(s)
        s.sendall(b"\xff" * 64)
        assert s.recv(100) == b""  # closed on the bad client flags
    with socket.create_connection(("127.0.0.1", running.tcp_port)) as s:
        nbd_greeting(s)
        name = b"disk0"
        go = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
        s.sendall(struct.pack(">I", 1) + struct.pack(">QII", 0x49484156454F5054, 7, len(go)) + go)
        s.recv(4096)
        s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 1, 1, 0, 1 << 20) + b"partial")
    run("qemu-io", "-f", "raw", "-c", "write -P 0x11 0 64k", running.uri("disk0"))
    assert running.tap is not None and running.tap.proc is not None
    assert running.tap.proc.poll() is None
    assert_replica_equals_disk(running, "disk0")


def test_many_clients_at_once_on_both_transports(running: Lab) -> None:
    # Four fio clients per transport, each writing and verifying its own 8 MiB slice of disk0.
    jobs = [
        subprocess.Popen(
            [
                "fio", "--name=slice", "--ioengine=nbd", f"--uri={running.uri('disk0', tcp)}",
                "--rw=randwrite", "--bs=16k", "--iodepth=8", "--numjobs=4", "--size=8M",
                f"--offset={32 * MiB if tcp else 0}", "--offset_increment=8M",
                "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for tcp in (False, True)
    ]  # fmt: skip
    for job in jobs:
        out = job.communicate(timeout=120)[0]
        assert job.returncode == 0, out
        assert "err= 0" in out
    assert_replica_equals_disk(running, "disk0")
