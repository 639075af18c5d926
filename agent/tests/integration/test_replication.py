"""Site to site: tap -> source VDSA -> (mutual TLS) -> target VDSA -> journal and mirror.

Each test checks the target's mirror by the hash of the whole disk at a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Lab, TcpProxy, Vdsa, qemu_io, sha256_file

from hvds.pki import CertificateAuthority
from hvds.replication.wire import (
    Entry,
    EntryKind,
    Frame,
    FrameReader,
    FrameType,
    encode_entries,
    frame,
    json_frame,
    parse_json,
)
from hvds.tls import client_context
from hvds.vdsa.config import TargetVpg
from hvds.vdsa.target import open_journal

MiB = 1024 * 1024


class Sites:
    """Site A: one host with a tap and a VDSA. Sites B and C: one host with a VDSA each."""

    def __init__(self, root: Path) -> None:
        ca = CertificateAuthority(root / "pki")
        self.host_a = Lab(root / "a")
        self.host_a.root.mkdir()
        self.vdsa_a = Vdsa(root / "a" / "vdsa", "vdsa-a1", ca.issue("vdsa-a1"))
        self.vdsa_b = Vdsa(root / "b" / "vdsa", "vdsa-b1", ca.issue("vdsa-b1"))
        self.vdsa_c = Vdsa(root / "c" / "vdsa", "vdsa-c1", ca.issue("vdsa-c1"))
        self.targets = [self.vdsa_b]
        self.proxy: TcpProxy | None = None
        self.ca = ca

    def protect(
        self,
        disks: dict[str, int],
        fan_out: bool = False,
        replica_options: dict[str, object] | None = None,
        **options: object,
    ) -> None:
        """Disks (name -> size) of site A's host, protected as VPG "vpg1" to site B (and C)."""
        for name, size in disks.items():
            self.host_a.add_disk(name, size)
        ids = {name: n for n, name in enumerate(disks, start=1)}
        if fan_out:
            self.targets.append(self.vdsa_c)
        for target in self.targets:
            target.replicate_here(
                "vpg1", {ids[n]: (n, size) for n, size in disks.items()}, **(replica_options or {})
            )
        addresses = [(t.address, t.name) for t in self.targets]
        if self.proxy is not None:  # site B reached through a link the test can cut
            addresses[0] = (f"127.0.0.1:{self.proxy.port}", self.vdsa_b.name)
        self.vdsa_a.protect("vpg1", ids, addresses, **options)

    def start(self) -> None:
        for target in self.targets:
            target.start()
        self.vdsa_a.start()
        self.host_a.start_tap(vdsa_socket=str(self.vdsa_a.tap_socket))

    def target_status(self) -> dict[str, object]:
        status = self.vdsa_b.status()["targets"]["vpg1"]
        assert isinstance(status, dict)
        return status

    def wait_in_sync(self, timeout: float) -> None:
        """Until the VPG is in write order and the tap has every copy acknowledged."""
        self.host_a.wait_for(
            lambda: (
                self.vdsa_a.status()["sources"]["vpg1"]["consistent"]
                and all(
                    self.host_a.metric("hvds_tap_dirty_bytes", e) == 0 for e in self.host_a.exports
                )
            ),
            timeout=timeout,
            what="the VPG in sync",
        )

    def checkpoint_tagged(self, tag: str, target: Vdsa | None = None) -> dict[str, object] | None:
        listing = (target or self.vdsa_b).control(op="checkpoints", vpg="vpg1")["checkpoints"]
        return next((c for c in listing if c["tag"] == tag), None)

    def wait_for_checkpoint(self, tag: str, timeout: float = 30) -> dict[str, object]:
        self.host_a.wait_for(
            lambda: all(self.checkpoint_tagged(tag, t) is not None for t in self.targets),
            timeout=timeout,
            what=f"checkpoint {tag} at the target",
        )
        checkpoint = self.checkpoint_tagged(tag)
        assert checkpoint is not None
        return checkpoint

    def tagged_checkpoint(self, tag: str) -> dict[str, object]:
        """Wait for the tap to be clean, take a tagged checkpoint, wait for it at the target."""
        for export in self.host_a.exports:
            self.host_a.wait_for(
                lambda e=export: self.host_a.metric("hvds_tap_dirty_bytes", e) == 0,
                what="all copies acknowledged",
            )
        # And the VPG in write order: the tap's RESYNC_DONE may still be on its way.
        self.host_a.wait_for(lambda: self.vdsa_a.status()["sources"]["vpg1"]["consistent"],
                             what="the VPG in write order")  # fmt: skip
        answer = self.vdsa_a.control(op="checkpoint", vpg="vpg1", tag=tag, description=tag)
        assert answer["taken"], answer
        return self.wait_for_checkpoint(tag)

    def cuttable_link(self) -> TcpProxy:
        self.proxy = TcpProxy(self.vdsa_b.listen_port)
        return self.proxy

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.close()
        self.host_a.stop()
        self.vdsa_a.stop()
        self.vdsa_b.stop()
        self.vdsa_c.stop()


@pytest.fixture
def sites(tmp_path: Path) -> Iterator[Sites]:
    sites = Sites(tmp_path)
    try:
        yield sites
    finally:
        sites.stop()


def fio_verify(uri: str, *args: str) -> dict[str, object]:
    argv = [
        "fio", "--name=verify", "--ioengine=nbd", f"--uri={uri}", "--output-format=json",
        "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0", *args,
    ]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    job = json.loads(result.stdout[result.stdout.index("{") :])["jobs"][0]
    assert job["error"] == 0
    return dict(job)


def test_fio_through_the_tap_reaches_the_mirror_bit_exact(sites: Sites) -> None:
    sites.protect({"vm1-disk0": 64 * MiB})
    sites.start()
    fio_verify(sites.host_a.uri("vm1-disk0"), "--rw=randwrite", "--bs=4k", "--iodepth=32",
               "--size=64M", "--io_size=48M")  # fmt: skip
    checkpoint = sites.tagged_checkpoint("after-fio")
    assert int(checkpoint["seq"]) > 48 * MiB // 4096  # every write is before it
    source = sha256_file(sites.host_a.exports["vm1-disk0"])
    assert sha256_file(sites.vdsa_b.mirror("vm1-disk0")) == source

    link = {"vpg": "vpg1", "target": "vdsa-b1"}
    assert sites.vdsa_a.metric("hvds_vdsa_rpo_seconds", **link) < 5
    assert sites.vdsa_a.metric("hvds_vdsa_link_up", **link) == 1
    assert sites.vdsa_a.metric("hvds_vdsa_written_bytes_total", **link) >= 48 * MiB
    assert sites.vdsa_a.metric("hvds_vdsa_vpg_consistent", vpg="vpg1") == 1
    assert sites.vdsa_b.metric("hvds_vdsa_journal_checkpoints", vpg="vpg1") >= 1
    journal_bytes = sites.vdsa_b.metric("hvds_vdsa_journal_bytes", vpg="vpg1")
    assert 0 < journal_bytes <= sites.vdsa_b.metric("hvds_vdsa_journal_limit_bytes", vpg="vpg1")

    # Dedup and zero elision: the same random 1 MiB written four times, then 4 MiB of zeroes,
    # cost about one MiB on the wire (random data does not compress: this is dedup at work).
    link = lambda: sites.vdsa_a.status()["sources"]["vpg1"]["targets"]["vdsa-b1"]  # noqa: E731
    before = link()
    block = sites.host_a.root / "random.bin"
    block.write_bytes(os.urandom(MiB))
    writes = [f"write -s {block} {offset}M 1M" for offset in (0, 8, 16, 24)]
    commands = [arg for w in [*writes, "write -z 32M 4M"] for arg in ("-c", w)]
    subprocess.run(
        ["qemu-io", "-f", "raw", *commands, sites.host_a.uri("vm1-disk0")],
        check=True,
        capture_output=True,
    )
    sites.tagged_checkpoint("dedup")
    after = link()
    written = after["bytes_in"] - before["bytes_in"]
    on_wire = after["bytes_on_wire"] - before["bytes_on_wire"]
    assert written == 4 * MiB
    assert MiB < on_wire < MiB + 64 * 1024, f"{on_wire} bytes on the wire for 4 x the same MiB"
    assert sha256_file(sites.vdsa_b.mirror("vm1-disk0")) == sha256_file(
        sites.host_a.exports["vm1-disk0"]
    )


def test_initial_sync_of_a_mostly_zero_disk_sends_only_its_data(sites: Sites) -> None:
    size = 4 * 1024 * MiB
    sites.protect({"vm1-disk0": size})
    disk = sites.host_a.exports["vm1-disk0"]
    data = os.urandom(3 * MiB)
    with disk.open("r+b") as f:  # the VM wrote this before it was protected
        for offset in (0, 1024 * MiB, size - MiB):
            f.seek(offset)
            f.write(data[:MiB])
            data = data[MiB:]
    sites.start()
    sites.wait_in_sync(timeout=120)
    sites.tagged_checkpoint("synced")
    assert sha256_file(sites.vdsa_b.mirror("vm1-disk0")) == sha256_file(disk)
    link = sites.vdsa_a.status()["sources"]["vpg1"]["targets"]["vdsa-b1"]
    print(f"initial sync of a 4 GiB disk holding 3 MiB: {link['bytes_on_wire']} bytes on the wire")
    assert 3 * MiB < link["bytes_on_wire"] < 3 * MiB + 256 * 1024


def test_kill_9_of_source_and_target_vdsa_mid_stream_loses_nothing(sites: Sites) -> None:
    sites.protect({"vm1-disk0": 64 * MiB})
    sites.start()
    uri = sites.host_a.uri("vm1-disk0")
    argv = [
        "fio", "--name=stream", "--ioengine=nbd", f"--uri={uri}", "--rw=randwrite", "--bs=4k",
        "--iodepth=8", "--size=64M", "--io_size=40M", "--rate_iops=2500", "--verify=crc32c",
        "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0",
    ]  # fmt: skip
    load = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for vdsa, at in ((sites.vdsa_a, 1.0), (sites.vdsa_b, 1.5)):
        time.sleep(at)
        assert vdsa.service is not None
        vdsa.service.kill()
        vdsa.start()
    out = load.communicate(timeout=120)[0]
    assert load.returncode == 0, out
    sites.host_a.wait_for(
        lambda: sites.vdsa_a.status()["sources"]["vpg1"]["consistent"],
        timeout=60,
        what="the resync after the kills",
    )
    sites.tagged_checkpoint("after-kills")
    assert sha256_file(sites.vdsa_b.mirror("vm1-disk0")) == sha256_file(
        sites.host_a.exports["vm1-disk0"]
    )
    target_log = (sites.vdsa_b.root / "vdsa.log").read_text()
    assert "ERROR" not in target_log, target_log[-3000:]


# Writes i = 0, 1, 2, ... alternate between the two disks, each waiting for the previous one to
# complete (as dependent writes of a database and its log would), each block stamped with i.
STAMPED_WRITER = """
import os, sys, time, nbd
handles = []
for uri in sys.argv[1:3]:
    h = nbd.NBD()
    h.connect_uri(uri)
    handles.append(h)
count = int(sys.argv[3])
for i in range(count):
    stamp = b"hvds-seq=%08d\\n" % i
    handles[i % 2].pwrite(stamp.ljust(4096, b"."), (i // 2) * 4096)
    if i % 50 == 49:
        time.sleep(0.01)  # spread the writes over many checkpoints
"""


def stamps(data: bytes) -> set[int]:
    found = set()
    for offset in range(0, len(data), 4096):
        if data.startswith(b"hvds-seq=", offset):
            found.add(int(data[offset + 9 : offset + 17]))
    return found


def test_every_checkpoint_is_a_prefix_of_the_write_order_on_both_targets(
    sites: Sites, tmp_path: Path
) -> None:
    count = 3000
    sites.protect({"db-disk": 8 * MiB, "log-disk": 8 * MiB}, fan_out=True,
                  checkpoint_interval=0.1)  # fmt: skip
    sites.start()
    writer = tmp_path / "writer.py"
    writer.write_text(STAMPED_WRITER)
    uris = [sites.host_a.uri(name) for name in ("db-disk", "log-disk")]
    subprocess.run(["/usr/bin/python3", str(writer), *uris, str(count)], check=True, timeout=120)
    sites.tagged_checkpoint("end")
    for target in sites.targets:
        target.stop()

    for target in sites.targets:
        config = TargetVpg.model_validate(target.target_vpgs[0])
        with open_journal(config, target.root / "journal") as journal:
            checkpoints = journal.checkpoints()
            seen = []
            contents = {}
            for checkpoint in checkpoints:
                disks = [journal.read_at(checkpoint.id, d, 0, 8 * MiB) for d in (1, 2)]
                found = stamps(disks[0]) | stamps(disks[1])
                assert found == set(range(len(found))), (
                    f"{target.name}: checkpoint {checkpoint.id} is not a prefix of the writes"
                )
                seen.append(len(found))
                contents[checkpoint.id] = [hashlib.sha256(d).hexdigest() for d in disks]
            assert seen[-1] == count
            assert len(set(seen)) >= 5, f"too few distinct cuts to prove anything: {seen}"

            # Roll the mirrors back to a checkpoint in the middle: exactly its content.
            middle = checkpoints[len(checkpoints) // 2]
            journal.rollback(middle.id)
            mirrors = [sha256_file(target.mirror(name)) for name in ("db-disk", "log-disk")]
            assert mirrors == contents[middle.id]


def test_link_cut_keeps_the_last_checkpoint_and_resumes(sites: Sites) -> None:
    link = sites.cuttable_link()
    sites.protect({"vm1-disk0": 32 * MiB})
    sites.start()
    uri = sites.host_a.uri("vm1-disk0")
    qemu_io(uri, "write -P 0x11 0 4M")
    sites.tagged_checkpoint("before-cut")
    mirror = sites.vdsa_b.mirror("vm1-disk0")
    at_cut = sha256_file(mirror)

    link.cut()
    qemu_io(uri, "write -P 0x22 8M 4M", "write -P 0x33 0 1M")  # the VM goes on writing
    sites.host_a.wait_for(
        lambda: not sites.vdsa_a.status()["sources"]["vpg1"]["targets"]["vdsa-b1"]["connected"],
        what="the source to notice the cut",
    )
    time.sleep(1.5)  # checkpoints are cut at the source meanwhile; none can reach site B
    assert sites.host_a.metric("hvds_tap_dirty_bytes", "vm1-disk0") > 0  # not acknowledged
    assert sha256_file(mirror) == at_cut  # site B still holds the last checkpoint, unchanged
    assert sites.vdsa_a.metric("hvds_vdsa_rpo_seconds", vpg="vpg1", target="vdsa-b1") > 1

    link.restore()
    sites.tagged_checkpoint("after-cut")
    assert sha256_file(mirror) == sha256_file(sites.host_a.exports["vm1-disk0"])


def test_bandwidth_limit_is_honoured(sites: Sites) -> None:
    limit = 2 * MiB
    sites.protect({"vm1-disk0": 32 * MiB}, bandwidth_limit=limit, compression=False)
    sites.start()
    sites.tagged_checkpoint("start")
    data = sites.host_a.root / "random.bin"
    data.write_bytes(os.urandom(8 * MiB))
    wire = {"vpg": "vpg1", "target": "vdsa-b1"}
    sent_before = sites.vdsa_a.metric("hvds_vdsa_wire_bytes_total", **wire)
    started = time.monotonic()
    subprocess.run(["nbdcopy", str(data), sites.host_a.uri("vm1-disk0")], check=True)
    sites.host_a.wait_for(
        lambda: sites.host_a.metric("hvds_tap_dirty_bytes", "vm1-disk0") == 0, timeout=30
    )
    elapsed = time.monotonic() - started
    sent = sites.vdsa_a.metric("hvds_vdsa_wire_bytes_total", **wire) - sent_before
    assert sent >= 8 * MiB
    # The first batch leaves at once; the rest at the limit (a little slack for scheduling).
    assert elapsed >= (sent - MiB) / limit * 0.9, f"{sent} bytes in {elapsed:.1f} s"
    assert elapsed < sent / limit * 2 + 2


def test_a_vdsa_with_another_sites_certificate_is_refused(sites: Sites) -> None:
    stranger = CertificateAuthority(sites.host_a.root / "other-pki", name="another CA")
    sites.vdsa_a.tls = stranger.issue("vdsa-a1")  # right name, wrong authority
    sites.protect({"vm1-disk0": 8 * MiB})
    sites.start()
    time.sleep(2)
    target = sites.vdsa_a.status()["sources"]["vpg1"]["targets"]["vdsa-b1"]
    assert not target["connected"] and target["acked_seq"] == 0
    assert sites.vdsa_b.status()["targets"]["vpg1"]["last_seq"] == 0
    log = (sites.vdsa_a.root / "vdsa.log").read_text()
    assert "CERTIFICATE_VERIFY_FAILED" in log or "certificate" in log.lower(), log[-2000:]


def test_full_journal_raises_the_alert_keeps_the_checkpoint_and_recovers(sites: Sites) -> None:
    sites.protect({"vm1-disk0": 256 * MiB}, max_unacknowledged_bytes=16 * MiB)
    sites.vdsa_b.target_vpgs[0]["journal_size_limit"] = 64 * MiB
    sites.start()
    uri = sites.host_a.uri("vm1-disk0")
    qemu_io(uri, "write -P 0x5a 0 4M")
    sites.tagged_checkpoint("before")
    mirror = sites.vdsa_b.mirror("vm1-disk0")
    before = sha256_file(mirror)

    # The source VDSA is down while the VM writes 160 MiB: when it is back, the tap resends
    # them out of order, and no checkpoint can be cut until they are all in: more than the
    # journal holds.
    assert sites.vdsa_a.service is not None
    sites.vdsa_a.service.kill()
    data = sites.host_a.root / "random.bin"
    data.write_bytes(os.urandom(160 * MiB))
    subprocess.run(["nbdcopy", str(data), f"{uri}"], check=True)
    sites.vdsa_a.start()
    sites.host_a.wait_for(
        lambda: sites.vdsa_b.metric("hvds_vdsa_journal_full", vpg="vpg1") == 1,
        timeout=60,
        what="the journal-full alert at the target",
    )
    sites.host_a.wait_for(
        lambda: (
            sites.vdsa_a.metric("hvds_vdsa_target_journal_full", vpg="vpg1", target="vdsa-b1") == 1
        ),
        what="the source to see it",
    )
    assert sites.host_a.metric("hvds_tap_dirty_bytes", "vm1-disk0") > 0  # the bitmap holds it
    assert sha256_file(mirror) == before  # the last consistent checkpoint, untouched

    # Room for it (a bigger journal): the resync completes and the mirror catches up.
    sites.vdsa_b.stop()
    sites.vdsa_b.target_vpgs[0]["journal_size_limit"] = 1024 * MiB
    sites.vdsa_b.start()
    sites.host_a.wait_for(
        lambda: sites.vdsa_a.status()["sources"]["vpg1"]["consistent"], timeout=120,
        what="the resync to finish",
    )  # fmt: skip
    sites.tagged_checkpoint("after")
    assert sha256_file(mirror) == sha256_file(sites.host_a.exports["vm1-disk0"])
    assert sites.vdsa_b.metric("hvds_vdsa_journal_full", vpg="vpg1") == 0


def test_a_lying_source_gets_a_clear_refusal_and_the_journal_loses_nothing(sites: Sites) -> None:
    sites.protect({"vm1-disk0": 16 * MiB})
    sites.start()
    qemu_io(sites.host_a.uri("vm1-disk0"), "write -P 0x77 0 2M")
    sites.tagged_checkpoint("before")
    durable = sites.target_status()["last_seq"]

    # Another VDSA of the deployment (a valid certificate) that sends nonsense.
    liar = sites.ca.issue("vdsa-liar")
    context = client_context(liar)
    port = sites.vdsa_b.listen_port
    lies = [
        encode_entries([Entry(EntryKind.WRITE, durable + 1, 99, 0, 3, b"abc")]),  # no disk 99
        encode_entries([Entry(EntryKind.WRITE, durable + 1, 1, 16 * MiB, 3, b"abc")]),  # past end
        encode_entries([Entry(EntryKind.REF, durable + 1, 1, 0, 4096, b"\x00" * 16)]),  # no block
        b"\x01\x02garbage",
    ]
    for lie in lies:
        with (
            socket.create_connection(("127.0.0.1", port)) as raw,
            context.wrap_socket(raw, server_hostname="vdsa-b1") as tls,
        ):
            tls.sendall(json_frame(FrameType.HELLO, {"vpg": "vpg1", "source": "vdsa-liar"}))
            reader = FrameReader()
            frames: list[Frame] = []
            while len(frames) < 2:
                data = tls.recv(65536)
                if not data:
                    break
                frames += reader.feed(data)
                if frames and frames[0].type is FrameType.WELCOME and len(frames) == 1:
                    tls.sendall(frame(FrameType.BATCH, lie))
            assert [f.type for f in frames] == [FrameType.WELCOME, FrameType.ERROR], frames
            assert parse_json(frames[1].payload)["error"]

    # Nor may it speak for another host.
    with (
        socket.create_connection(("127.0.0.1", port)) as raw,
        context.wrap_socket(raw, server_hostname="vdsa-b1") as tls,
    ):
        tls.sendall(json_frame(FrameType.HELLO, {"vpg": "vpg1", "source": "vdsa-a1"}))
        refusal = FrameReader().feed(tls.recv(65536))
        assert [f.type for f in refusal] == [FrameType.ERROR]
        assert "certificate" in parse_json(refusal[0].payload)["error"]

    # The real source takes over again; nothing of the lies reached the journal.
    qemu_io(sites.host_a.uri("vm1-disk0"), "write -P 0x78 4M 1M")
    sites.tagged_checkpoint("after")
    assert sha256_file(sites.vdsa_b.mirror("vm1-disk0")) == sha256_file(
        sites.host_a.exports["vm1-disk0"]
    )


def test_the_target_reports_what_the_replicated_disk_holds(sites: Sites) -> None:
    sites.protect({"vm1-disk0": 64 * MiB}, replica_options={"analysis_interval": 0.2})
    sites.start()
    root = sites.host_a.root / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "os-release").write_text(
        'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\n'
        'VERSION_ID="12"\nID=debian\n'
    )
    image = sites.host_a.root / "fs.img"
    image.write_bytes(b"")
    os.truncate(image, 32 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(root), str(image)], check=True)
    subprocess.run(["nbdcopy", str(image), sites.host_a.uri("vm1-disk0")], check=True)
    sites.tagged_checkpoint("installed")

    def analysis() -> dict[str, object] | None:
        summary = sites.target_status()["analysis"]
        return summary["disks"]["vm1-disk0"] if summary else None  # type: ignore[index]

    sites.host_a.wait_for(lambda: (analysis() or {}).get("os") is not None, what="the analysis")
    assert analysis() == {
        "partition_table": "none",
        "filesystems": ["ext4"],
        "os": "Debian GNU/Linux 12 (bookworm)",
    }


def test_initial_sync_to_a_seeded_mirror_sends_only_the_blocks_that_differ(sites: Sites) -> None:
    size = 128 * MiB
    sites.protect({"vm1-disk0": size})
    disk = sites.host_a.exports["vm1-disk0"]
    with disk.open("r+b") as f:
        for offset in range(0, size, 16 * MiB):  # 32 MiB of data, in 4 MiB pieces
            f.seek(offset)
            f.write(os.urandom(4 * MiB))
    # The mirror was seeded from a backup of the disk, one MiB of which has changed since.
    mirror = sites.vdsa_b.mirror("vm1-disk0")
    mirror.parent.mkdir(parents=True)
    subprocess.run(["cp", "--sparse=always", str(disk), str(mirror)], check=True)
    with disk.open("r+b") as f:
        f.seek(16 * MiB)
        f.write(os.urandom(MiB))
    sites.start()
    sites.wait_in_sync(timeout=60)
    sites.tagged_checkpoint("synced")
    assert sha256_file(mirror) == sha256_file(disk)
    link = sites.vdsa_a.status()["sources"]["vpg1"]["targets"]["vdsa-b1"]
    assert link["bytes_in"] >= 32 * MiB  # every data block came from the tap...
    assert MiB < link["bytes_on_wire"] < MiB + 256 * 1024  # ...only the changed MiB crossed


def test_a_corrupt_journal_is_refused_clearly_and_the_mirror_kept(sites: Sites) -> None:
    sites.protect({"vm1-disk0": 16 * MiB})
    sites.start()
    qemu_io(sites.host_a.uri("vm1-disk0"), "write -P 0x19 0 2M")
    sites.tagged_checkpoint("good")
    qemu_io(sites.host_a.uri("vm1-disk0"), "write -P 0x20 4M 1M")  # more records after it
    sites.tagged_checkpoint("more")
    mirror = sites.vdsa_b.mirror("vm1-disk0")
    kept = sha256_file(mirror)
    sites.vdsa_b.stop()
    segments = sorted((sites.vdsa_b.root / "journal" / "vpg1").glob("*.hvj"))
    with segments[0].open("r+b") as f:  # a flipped byte in a record that was made durable
        f.seek(200)
        byte = f.read(1)
        f.seek(200)
        f.write(bytes([byte[0] ^ 0xFF]))

    sites.vdsa_b.start()  # the VDSA starts; that VPG is refused with the reason
    status = sites.vdsa_b.status()["targets"]["vpg1"]
    assert "corrupt record" in status["failed"]
    sites.host_a.wait_for(
        lambda: "journal of vpg1 cannot be used" in (sites.vdsa_a.root / "vdsa.log").read_text(),
        what="the source to be told",
    )
    assert sha256_file(mirror) == kept  # the mirror is left as it was


def test_a_mirror_that_cannot_be_opened_stops_its_vpg_not_the_vdsa(sites: Sites) -> None:
    """Found by the lab: reverse protection into a disk the VDSA's sandbox could not write made
    the VDSA exit at every start, taking every VPG of the host down with it."""
    sites.protect({"vm1-disk0": 8 * MiB})
    sites.start()
    qemu_io(sites.host_a.uri("vm1-disk0"), "write -P 0x21 0 1M")
    sites.tagged_checkpoint("before")
    mirror = sites.vdsa_b.mirror("vm1-disk0")
    sites.vdsa_b.stop()
    mirror.unlink()
    mirror.mkdir()  # the mirror's path cannot be opened as a disk any more

    sites.vdsa_b.start()  # the VDSA starts and serves; that VPG is refused with the reason
    status = sites.vdsa_b.status()["targets"]["vpg1"]
    assert "Is a directory" in status["failed"]
    sites.host_a.wait_for(
        lambda: "journal of vpg1 cannot be used" in (sites.vdsa_a.root / "vdsa.log").read_text(),
        what="the source to be told",
    )


def test_a_checkpoint_label_the_journal_cannot_keep_is_refused_at_the_source(
    sites: Sites,
) -> None:
    sites.protect({"vm1-disk0": 8 * MiB})
    sites.start()
    from hvds.vdsa.control import request  # noqa: PLC0415

    answer = request(sites.vdsa_a.control_socket,
                     {"op": "checkpoint", "vpg": "vpg1", "description": "x" * 2000})  # fmt: skip
    assert not answer["ok"] and "longer than 1024 bytes" in answer["error"]
    qemu_io(sites.host_a.uri("vm1-disk0"), "write -P 0x5 0 1M")
    sites.tagged_checkpoint("still-replicating")  # the VPG was not stopped by it
    assert sha256_file(sites.vdsa_b.mirror("vm1-disk0")) == sha256_file(
        sites.host_a.exports["vm1-disk0"]
    )
