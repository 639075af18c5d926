"""Network faults between the sites: the source VDSA in one network namespace, the target VDSA
in another, a veth link between them (tests/netfaults.py), the tap and the test outside both.

For each fault the VM's writes go on through the tap, and the test checks that replication
resumes (a tagged checkpoint reaches the target and the mirror equals the disk, whole, by
sha256), that what crossed the wire is about what was written (only dirty data resent, not the
disk: hvds_vdsa_wire_bytes_total against the data written), that the RPO
(hvds_vdsa_rpo_seconds) comes back under a few seconds, and, where the link breaks, that
hvds_vdsa_link_up goes to 0 and back to 1. Needs root (the CI runs as root).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Lab, Vdsa, sha256_file, wait_for, write_random
from netfaults import LINK_B, DelayProxy, NetPair, available

from hvds.pki import CertificateAuthority

MiB = 1024 * 1024
DISK = 64 * MiB
LINK = {"vpg": "vpg1", "target": "vdsa-b1"}
# The RPO a healthy link keeps (checkpoints every 0.5 s).
RPO_OK = 5.0

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))


class NetSites:
    """Site A: a tap (outside the namespaces) and its source VDSA in namespace A. Site B: the
    target VDSA in namespace B. One VPG of one 64 MiB disk, checkpoints every 0.5 s."""

    def __init__(self, root: Path, pair: NetPair) -> None:
        ca = CertificateAuthority(root / "pki")
        self.root = root
        self.pair = pair
        self.host = Lab(root / "a")
        self.host.root.mkdir()
        self.disk = self.host.add_disk("vm1-disk0", DISK)
        self.source = Vdsa(root / "a" / "vdsa", "vdsa-a1", ca.issue("vdsa-a1"), netns=pair.a)
        self.target = Vdsa(root / "b" / "vdsa", "vdsa-b1", ca.issue("vdsa-b1"), netns=pair.b)
        self.target.settings["listen"] = f"{LINK_B}:{self.target.listen_port}"
        self.target.replicate_here("vpg1", {1: ("vm1-disk0", DISK)})
        self.proxy: DelayProxy | None = None
        self.uri = self.host.uri("vm1-disk0")
        self.written = 0

    def start(self, via_proxy: bool = False, **options: object) -> None:
        self.target.start()
        address = f"{LINK_B}:{self.target.listen_port}"
        if via_proxy:
            self.proxy = DelayProxy(self.pair.a, (LINK_B, self.target.listen_port)).start()
            address = f"127.0.0.1:{self.proxy.port}"
        self.source.protect("vpg1", {"vm1-disk0": 1}, [(address, "vdsa-b1")],
                            checkpoint_interval=0.5, **options)  # fmt: skip
        self.source.start()
        self.host.start_tap(vdsa_socket=str(self.source.tap_socket))
        self.checkpoint("start", timeout=30)

    def write(self, offset: int, length: int) -> None:
        """The VM writes incompressible data (so that the wire shows what changed)."""
        write_random(self.uri, offset, length, self.host.root)
        self.written += length

    def link(self, name: str) -> float:
        return self.source.metric(name, **LINK)

    def wire(self) -> float:
        return self.link("hvds_vdsa_wire_bytes_total")

    def checkpoint(self, tag: str, timeout: float = 60) -> float:
        """A tagged checkpoint once the tap is clean; waits until the target has it. Returns
        the seconds it took to arrive."""

        def clean() -> bool:  # in write order (no resync under way), every copy acknowledged
            return bool(
                self.source.status()["sources"]["vpg1"]["consistent"]
                and self.host.metric("hvds_tap_dirty_bytes", "vm1-disk0") == 0
            )

        wait_for(clean, timeout, f"the VPG in sync before {tag}")
        started = time.monotonic()
        # Refused while a resync the test did not see start (the initial one) is under way.
        wait_for(lambda: self.source.control(op="checkpoint", vpg="vpg1", tag=tag)["taken"],
                 timeout, f"checkpoint {tag} taken")  # fmt: skip

        def arrived() -> bool:
            listing = self.target.control(op="checkpoints", vpg="vpg1")["checkpoints"]
            return any(c["tag"] == tag for c in listing)

        wait_for(arrived, timeout, f"checkpoint {tag} at the target")
        return time.monotonic() - started

    def mirror_matches(self) -> bool:
        return sha256_file(self.target.mirror("vm1-disk0")) == sha256_file(self.disk)

    def rpo_recovers(self, within: float = 20) -> None:
        wait_for(lambda: self.link("hvds_vdsa_rpo_seconds") < RPO_OK, within, "the RPO back")

    def stop(self) -> None:
        self.host.stop()
        self.source.stop()
        self.target.stop()
        if self.proxy is not None:
            self.proxy.stop()


@pytest.fixture
def net(tmp_path: Path) -> Iterator[NetSites]:
    pair = NetPair().create()
    sites = NetSites(tmp_path, pair)
    try:
        yield sites
    finally:
        sites.stop()
        pair.destroy()


def test_link_down_for_seconds(net: NetSites) -> None:
    net.start()
    net.write(0, 4 * MiB)
    net.checkpoint("before")
    kept = sha256_file(net.target.mirror("vm1-disk0"))
    wire, written = net.wire(), net.written

    net.pair.cut()
    down = time.monotonic()
    net.write(16 * MiB, 8 * MiB)  # the VM is not held up by the link
    wait_for(lambda: net.link("hvds_vdsa_link_up") == 0, 30, "the source to see the link down")
    noticed = time.monotonic() - down
    time.sleep(max(0.0, 5 - noticed))  # five seconds down in all
    assert sha256_file(net.target.mirror("vm1-disk0")) == kept  # the last checkpoint, intact
    assert net.link("hvds_vdsa_rpo_seconds") > 4

    net.pair.heal()
    took = net.checkpoint("after", timeout=90)
    assert net.mirror_matches()
    assert net.link("hvds_vdsa_link_up") == 1
    net.rpo_recovers()
    sent = net.wire() - wire
    changed = net.written - written
    print(f"link down: noticed after {noticed:.1f} s; {changed} bytes written, "
          f"{sent:.0f} on the wire; in sync {took:.1f} s after healing")  # fmt: skip
    # What changed crossed again only if it had been sent into the dead link: never the disk.
    assert changed <= sent <= 2 * changed + 2 * MiB


def test_ten_percent_packet_loss(net: NetSites) -> None:
    net.start()
    wire, written = net.wire(), net.written
    net.pair.loss(10)
    started = time.monotonic()
    for n in range(8):
        net.write(n * 4 * MiB, 2 * MiB)
    net.checkpoint("lossy", timeout=120)
    took = time.monotonic() - started
    assert net.mirror_matches()
    assert net.link("hvds_vdsa_link_up") == 1  # TCP carried it: no reconnection needed
    net.rpo_recovers()
    net.pair.heal()
    sent, changed = net.wire() - wire, net.written - written
    print(f"10% loss: {changed} bytes written, {sent:.0f} on the wire, in sync in {took:.1f} s")
    assert changed <= sent <= changed * 1.02 + 256 * 1024  # retransmits are TCP's, not ours


def test_fifty_ms_more_latency(net: NetSites) -> None:
    net.start(via_proxy=True)
    assert net.proxy is not None
    quick = net.checkpoint("near")
    net.proxy.delay = 0.05  # each way
    wire, written = net.wire(), net.written
    for n in range(4):
        net.write(n * 8 * MiB, 2 * MiB)
    far = net.checkpoint("far")
    assert far >= 0.1  # a round trip of the proxy at least, now
    assert net.mirror_matches()
    net.rpo_recovers()
    sent, changed = net.wire() - wire, net.written - written
    print(f"+50 ms: checkpoint round trip {quick * 1000:.0f} -> {far * 1000:.0f} ms; "
          f"{changed} bytes written, {sent:.0f} on the wire")  # fmt: skip
    assert changed <= sent <= changed * 1.02 + 256 * 1024


def test_one_megabyte_a_second(net: NetSites) -> None:
    net.start()
    net.pair.throttle(MiB)
    wire, written = net.wire(), net.written
    started = time.monotonic()
    net.write(0, 6 * MiB)  # the VM writes at once; the link takes six seconds
    wait_for(lambda: net.link("hvds_vdsa_rpo_seconds") > 2, 30, "the RPO to grow")
    net.checkpoint("throttled", timeout=60)
    took = time.monotonic() - started
    assert net.mirror_matches()
    sent, changed = net.wire() - wire, net.written - written
    print(f"1 MB/s: {changed} bytes written, {sent:.0f} on the wire in {took:.1f} s")
    assert took >= 0.8 * sent / MiB  # the link was the limit
    net.pair.unthrottle()
    net.rpo_recovers()
    assert changed <= sent <= changed * 1.02 + 256 * 1024


def test_a_peer_that_closes_mid_batch(net: NetSites) -> None:
    net.start(via_proxy=True)
    assert net.proxy is not None
    wire, written = net.wire(), net.written
    net.proxy.abort_after = 3 * MiB + 12345  # inside a batch (they are 1 MiB)
    for n in range(4):
        net.write(n * 8 * MiB, 2 * MiB)
    wait_for(lambda: net.proxy is not None and net.proxy.aborted == 1, 30, "the reset")
    net.checkpoint("after-reset")
    assert net.mirror_matches()
    assert net.link("hvds_vdsa_link_up") == 1
    net.rpo_recovers()
    log = (net.source.root / "vdsa.log").read_text()
    assert "Traceback" not in log and "unexpected error" not in log, log[-2000:]
    assert log.count("connected, resuming at sequence") == 2  # the link went down and up
    sent, changed = net.wire() - wire, net.written - written
    print(f"reset mid-batch: {changed} bytes written, {sent:.0f} on the wire")
    assert changed <= sent <= 2 * changed + 2 * MiB
