"""More than two sites at once: site A protects "erp" to B and C (fan-out), and site B protects
"crm" to A. Every mirror equals its source at a checkpoint."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Manager, qemu_io, sha256_file
from test_recovery import RecoverySites

MiB = 1024 * 1024
pytestmark = pytest.mark.slow


class ThreeSites(RecoverySites):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.crm_disk = self.tap_b.add_disk("crm-disk0", 8 * MiB)
        self.tap_b.write_config(exports_dir=str(self.tap_b.root / "exports.d"))
        store_a = root / "a1" / "ds-a"
        store_a.mkdir()
        self.vdsa_a.sections["datastore"] = [{"name": "ds-a", "path": str(store_a)}]
        self.manager_c = Manager(root / "manager-c", "site-c",
                                 self.ca.issue("manager-c", ["127.0.0.1"]))  # fmt: skip
        self.admin_c = self.manager_c.token("admin", "admin")
        self.vdsa_c = self._vdsa(root / "c1" / "vdsa", "c1", self.manager_c)
        self.vdsa_c.target_role = True
        (root / "c1" / "ds-c").mkdir()
        self.vdsa_c.sections["datastore"] = [{"name": "ds-c", "path": str(root / "c1" / "ds-c")}]

    def start(self) -> None:
        self.manager_c.start()
        self.vdsa_c.start()
        super().start()

    def stop(self) -> None:
        super().stop()
        self.vdsa_c.stop()
        self.manager_c.stop()

    def pair_all(self) -> None:
        managers = {"a": (self.manager_a, self.admin_a), "b": (self.manager_b, self.admin_b),
                    "c": (self.manager_c, self.admin_c)}  # fmt: skip
        for here, there in (("a", "b"), ("a", "c")):
            manager, admin = managers[here]
            peer, peer_admin = managers[there]
            token = peer.ok("POST", "/pairing-tokens", peer_admin)["token"]
            manager.ok("POST", "/peers", admin, {"url": peer.url, "pairing_token": token,
                                                  "ca_pem": self.ca.path.read_text()})  # fmt: skip


@pytest.fixture
def sites(tmp_path: Path) -> Iterator[ThreeSites]:
    sites = ThreeSites(tmp_path)
    try:
        sites.start()
        yield sites
    finally:
        sites.stop()


def test_fan_out_and_both_directions_at_once(sites: ThreeSites) -> None:
    a, b = sites.manager_a, sites.manager_b
    qemu_io(sites.tap.uri("vm1-disk0"), "write -P 0x11 0 3M")
    qemu_io(sites.tap_b.uri("crm-disk0"), "write -P 0x22 1M 2M")
    sites.pair_all()
    assert sorted(p["name"] for p in a.ok("GET", "/peers", sites.admin_a)) == ["site-b", "site-c"]
    # B was paired by A: it protects back to A over the same pairing.
    assert [p["name"] for p in b.ok("GET", "/peers", sites.admin_b)] == ["site-a"]

    erp = sites.vpg(
        vms=[{"name": "vm1", "host": "a1", "disks": [{"export": "vm1-disk0"}]}],
        targets=[{"site": "site-b", "host": "b1", "datastore": "ds1"},
                 {"site": "site-c", "host": "c1", "datastore": "ds-c"}],
    )  # fmt: skip
    a.ok("POST", "/vpgs", sites.admin_a, erp)
    crm = {"name": "crm", "vms": [{"name": "crm1", "host": "b1",
                                   "disks": [{"export": "crm-disk0"}]}],
           "targets": [{"site": "site-a", "host": "a1", "datastore": "ds-a"}],
           "checkpoint_interval_seconds": 1}  # fmt: skip
    b.ok("POST", "/vpgs", sites.admin_b, crm)
    sites.wait_state("erp", "protected")
    wait = b.ok  # noqa: F841 - readability: B's VPG is waited on below
    from harness import wait_for  # noqa: PLC0415

    wait_for(lambda: b.ok("GET", "/vpgs/crm", sites.admin_b)["state"] == "protected", 60,
             "crm protected from B to A")  # fmt: skip
    a.ok("POST", "/vpgs/erp/checkpoints", sites.admin_a, {"tag": "three"})
    b.ok("POST", "/vpgs/crm/checkpoints", sites.admin_b, {"tag": "three"})

    source = sha256_file(sites.disk)
    mirrors = {site: next((sites.tap.root.parent / host / store).rglob("disk1.raw"))
               for site, host, store in (("b", "b1", "ds1"), ("c", "c1", "ds-c"))}  # fmt: skip
    assert {site: sha256_file(path) for site, path in mirrors.items()} == {"b": source, "c": source}
    (crm_mirror,) = (sites.tap.root.parent / "a1" / "ds-a").rglob("disk1.raw")
    assert sha256_file(crm_mirror) == sha256_file(sites.crm_disk)
    # Each target site lists the checkpoint; the source site's list is its first target's.
    assert "three" in [c["tag"] for c in a.ok("GET", "/vpgs/erp/checkpoints", sites.admin_a)]
