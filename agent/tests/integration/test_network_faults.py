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
from typing import Any

import pytest
from harness import Lab, Manager, Vdsa, sha256_file, wait_for, write_random
from netfaults import LINK_A, LINK_B, DelayProxy, NetPair, available

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


class ManagedNetSites:
    """The same two sites, each with its site manager, as deployed: manager A and VDSA a1 in
    namespace A, manager B and VDSA b1 in namespace B, the tap outside. The managers pair over
    the link (so a cut cuts them apart too), the VPG is created through manager A's API, and
    the VDSAs heartbeat to their own site's manager."""

    def __init__(self, root: Path, pair: NetPair) -> None:
        self.pair = pair
        ca = CertificateAuthority(root / "pki")
        self.ca = ca
        self.manager_a = Manager(root / "manager-a", "site-a",
                                 ca.issue("manager-a", ["127.0.0.1", LINK_A]),
                                 netns=pair.a, address=LINK_A)  # fmt: skip
        self.manager_b = Manager(root / "manager-b", "site-b",
                                 ca.issue("manager-b", ["127.0.0.1", LINK_B]),
                                 netns=pair.b, address=LINK_B)  # fmt: skip
        self.admin_a = self.manager_a.token("admin", "admin")
        self.admin_b = self.manager_b.token("admin", "admin")
        self.host = Lab(root / "a1")
        self.host.root.mkdir()
        self.disk = self.host.add_disk("vm1-disk0", DISK)
        self.host.write_config()
        self.vdsa_a = self._vdsa(root / "a1" / "vdsa", "a1", self.manager_a, pair.a)
        self.vdsa_a.settings["tap_config"] = str(self.host.config_path)
        self.vdsa_b = self._vdsa(root / "b1" / "vdsa", "b1", self.manager_b, pair.b)
        self.vdsa_b.target_role = True
        self.vdsa_b.settings["listen"] = f"{LINK_B}:{self.vdsa_b.listen_port}"
        self.datastore = root / "b1" / "ds1"
        self.datastore.mkdir(parents=True)
        self.vdsa_b.sections["datastore"] = [{"name": "ds1", "path": str(self.datastore)}]
        self.uri = self.host.uri("vm1-disk0")

    def _vdsa(self, root: Path, name: str, manager: Manager, netns: str) -> Vdsa:
        vdsa = Vdsa(root, name, self.ca.issue(name), netns=netns)
        root.mkdir(parents=True)
        token_file = root / "manager.token"
        token_file.write_text(manager.token(name, "host"))
        vdsa.settings["managed_config"] = str(root / "managed.json")
        vdsa.sections["manager"] = {
            "url": f"https://127.0.0.1:{manager.port}", "token_file": str(token_file),
            "ca": str(self.ca.path), "heartbeat_interval": 0.3,
        }  # fmt: skip
        return vdsa

    def start(self) -> None:
        for manager in (self.manager_a, self.manager_b):
            manager.write_config(host_timeout=5.0, watch_interval=0.5)
            manager.start()
        self.vdsa_b.start()
        self.vdsa_a.start()
        self.host.start_tap(vdsa_socket=str(self.vdsa_a.tap_socket))
        pairing = self.manager_b.ok("POST", "/pairing-tokens", self.admin_b)
        self.manager_a.ok("POST", "/peers", self.admin_a, {
            "url": self.manager_b.url, "pairing_token": pairing["token"],
            "ca_pem": self.ca.path.read_text(),
        })  # fmt: skip

    def vpg(self) -> dict[str, Any]:
        return self.manager_a.ok("GET", "/vpgs/erp", self.admin_a)  # type: ignore[no-any-return]

    def alerts(self) -> dict[str, str]:
        """Manager A's alerts about VPG erp, by kind."""
        health = self.manager_a.ok("GET", "/site", self.admin_a)["health"]
        return {a["kind"]: a["message"] for a in health["alerts"] if a["subject"] == "erp"}

    def mirror_matches(self) -> bool:
        (mirror,) = self.datastore.rglob("*.raw")
        return sha256_file(mirror) == sha256_file(self.disk)

    def stop(self) -> None:
        self.host.stop()
        for service in (self.vdsa_a, self.vdsa_b, self.manager_a, self.manager_b):
            service.stop()


@pytest.fixture
def managed(tmp_path: Path) -> Iterator[ManagedNetSites]:
    pair = NetPair().create()
    sites = ManagedNetSites(tmp_path, pair)
    try:
        yield sites
    finally:
        sites.stop()
        pair.destroy()


def test_the_source_managers_alerts_follow_a_link_cut(managed: ManagedNetSites) -> None:
    """Manager A watches the VPG through its host's heartbeats: with the link between the sites
    cut, it shows the VPG unprotected, a link_down alert within seconds of the VDSA giving the
    link up, its RPO growing in the API and in /metrics, and the RPO alert once the RPO passes
    the VPG's threshold (60 s, the least the API takes); all of it clears by itself once the
    link is back, and a checkpoint taken through the manager then reaches the mirror."""
    sites, a = managed, managed.manager_a
    sites.start()
    a.ok("POST", "/vpgs", sites.admin_a, {
        "name": "erp", "checkpoint_interval_seconds": 0.5, "rpo_alert_seconds": 60,
        "vms": [{"name": "vm1", "host": "a1", "disks": [{"export": "vm1-disk0"}]}],
        "targets": [{"site": "site-b", "host": "b1", "datastore": "ds1"}],
    })  # fmt: skip
    wait_for(lambda: sites.vpg()["state"] == "protected", 90, "VPG erp protected")
    write_random(sites.uri, 0, 4 * MiB, sites.host.root)
    wait_for(lambda: (sites.vpg()["rpo_seconds"] or 99) < RPO_OK, 30, "the RPO low")
    assert sites.alerts() == {}
    assert a.metric("hvds_vpg_protected", vpg="erp", state="protected") == 1

    sites.pair.cut()
    cut = time.monotonic()
    write_random(sites.uri, 16 * MiB, 4 * MiB, sites.host.root)  # the VM goes on
    wait_for(lambda: "link_down" in sites.alerts(), 60, "manager A's link_down alert")
    link_alert = time.monotonic() - cut
    assert "host a1 has had no connection to b1" in sites.alerts()["link_down"]
    assert sites.vpg()["state"] == "syncing"
    assert a.metric("hvds_vpg_protected", vpg="erp", state="syncing") == 0
    rpo = a.metric("hvds_vpg_rpo_seconds", vpg="erp")
    assert rpo is not None and rpo > 10
    wait_for(lambda: "rpo" in sites.alerts(), 90, "manager A's RPO alert")
    rpo_alert = time.monotonic() - cut
    assert "is over 60 s" in sites.alerts()["rpo"]
    rpo = a.metric("hvds_vpg_rpo_seconds", vpg="erp")
    assert rpo is not None and rpo > 60
    assert a.metric("hvds_vpg_rpo_alert_seconds", vpg="erp") == 60

    sites.pair.heal()
    healed = time.monotonic()
    wait_for(lambda: sites.alerts() == {}, 60, "manager A's alerts to clear")
    cleared = time.monotonic() - healed
    wait_for(lambda: sites.vpg()["state"] == "protected", 30, "VPG erp protected again")
    wait_for(lambda: (sites.vpg()["rpo_seconds"] or 99) < RPO_OK, 30, "the RPO back")
    caught_up = time.monotonic() - healed
    assert a.metric("hvds_vpg_protected", vpg="erp", state="protected") == 1
    a.ok("POST", "/vpgs/erp/checkpoints", sites.admin_a, {"tag": "after"})
    assert sites.mirror_matches()
    print(f"managed link cut: link_down alert {link_alert:.1f} s after the cut, RPO alert "
          f"{rpo_alert:.1f} s after, both cleared {cleared:.1f} s after healing, RPO under "
          f"{RPO_OK:.0f} s {caught_up:.1f} s after")  # fmt: skip
