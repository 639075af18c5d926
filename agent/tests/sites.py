"""Two sites for the site manager's tests: each a manager with its host's VDSA (and, at site A,
a tap) as real processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness import Lab, Manager, Vdsa, sha256_file, wait_for

from hvds.pki import CertificateAuthority

MiB = 1024 * 1024


def managed_vdsa(root: Path, name: str, ca: CertificateAuthority, manager: Manager) -> Vdsa:
    """A VDSA (not started) that registers with ``manager`` as host ``name`` and takes its VPGs
    from it."""
    vdsa = Vdsa(root, name, ca.issue(name))
    root.mkdir(parents=True)
    token_file = root / "manager.token"
    token_file.write_text(manager.token(name, "host"))
    vdsa.settings["managed_config"] = str(root / "managed.json")
    vdsa.sections["manager"] = {
        "url": manager.url, "token_file": str(token_file), "ca": str(ca.path),
        "heartbeat_interval": 0.3,
    }  # fmt: skip
    return vdsa


class TwoSites:
    """Site A: manager, host a1 (VDSA + tap serving vm1-disk0). Site B: manager, host b1
    (VDSA with datastore ds1)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.extra_hosts: list[tuple[Lab, Vdsa]] = []
        self.tap_settings: dict[str, Any] = {}  # more [tap] settings of a1's tap
        ca = CertificateAuthority(root / "pki")
        self.ca = ca
        self.manager_a = Manager(root / "manager-a", "site-a", ca.issue("manager-a", ["127.0.0.1"]))
        self.manager_b = Manager(root / "manager-b", "site-b", ca.issue("manager-b", ["127.0.0.1"]))
        self.admin_a = self.manager_a.token("admin", "admin")
        self.admin_b = self.manager_b.token("admin", "admin")
        self.tap = Lab(root / "a1")
        self.tap.root.mkdir()
        self.disk = self.tap.add_disk("vm1-disk0", 32 * MiB)
        self.tap.write_config()
        self.vdsa_a = self._vdsa(root / "a1" / "vdsa", "a1", self.manager_a)
        self.vdsa_a.settings["tap_config"] = str(self.tap.config_path)
        self.vdsa_b = self._vdsa(root / "b1" / "vdsa", "b1", self.manager_b)
        self.vdsa_b.target_role = True
        datastore = root / "b1" / "ds1"
        datastore.mkdir(parents=True)
        self.vdsa_b.sections["datastore"] = [{"name": "ds1", "path": str(datastore)}]

    def add_source_host(self, name: str, exports: dict[str, Path]) -> tuple[Lab, Vdsa]:
        """Another host of site A, with its tap (serving these images) and its VDSA; the
        caller starts them (``start_host``) and stops them (``stop_host``)."""
        tap = Lab(self.root / name)
        tap.root.mkdir()
        tap.exports.update(exports)
        tap.write_config()
        vdsa = self._vdsa(self.root / name / "vdsa", name, self.manager_a)
        vdsa.settings["tap_config"] = str(tap.config_path)
        self.extra_hosts.append((tap, vdsa))
        return tap, vdsa

    def start_host(self, tap: Lab, vdsa: Vdsa) -> None:
        vdsa.start()
        tap.start_tap(vdsa_socket=str(vdsa.tap_socket))

    def _vdsa(self, root: Path, name: str, manager: Manager) -> Vdsa:
        return managed_vdsa(root, name, self.ca, manager)

    def start(self) -> None:
        self.manager_a.start()
        self.manager_b.start()
        self.vdsa_b.start()
        self.vdsa_a.start()
        self.tap.start_tap(vdsa_socket=str(self.vdsa_a.tap_socket), **self.tap_settings)

    def pair(self) -> None:
        pairing = self.manager_b.ok("POST", "/pairing-tokens", self.admin_b)
        self.manager_a.ok("POST", "/peers", self.admin_a, {
            "url": self.manager_b.url, "pairing_token": pairing["token"],
            "ca_pem": self.ca.path.read_text(),
        })  # fmt: skip

    def vpg(self, **settings: Any) -> dict[str, Any]:
        return {
            "name": "erp",
            "vms": [{"name": "vm1", "host": "a1", "disks": [{"export": "vm1-disk0"}]}],
            "targets": [{"site": "site-b", "host": "b1", "datastore": "ds1"}],
            "checkpoint_interval_seconds": 1,
            **settings,
        }

    def wait_state(self, name: str, state: str, timeout: float = 60) -> None:
        wait_for(
            lambda: self.manager_a.ok("GET", f"/vpgs/{name}", self.admin_a)["state"] == state,
            timeout, f"VPG {name} {state}",
        )  # fmt: skip

    def stop(self) -> None:
        for tap, vdsa in self.extra_hosts:
            tap.stop()
            vdsa.stop()
        self.tap.stop()
        for service in (self.vdsa_a, self.vdsa_b, self.manager_a, self.manager_b):
            service.stop()


def hashes(paths: dict[str, Path]) -> dict[str, str]:
    return {name: sha256_file(path) for name, path in paths.items()}


class RecoverySites(TwoSites):
    """Two sites whose VPG "erp" has two VMs: vm1 (vm1-disk0) and vm2 (vm2-disk0)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.disk2 = self.tap.add_disk("vm2-disk0", 16 * MiB)
        self.tap.write_config(exports_dir=str(self.tap.root / "exports.d"))
        self.vdsa_b.settings["vm_accel"] = "tcg"  # this machine's KVM cannot run the guest
        self.vdsa_a.target_role = True  # reverse protection comes back to it
        # Host b1 has a tap too: recovered disks are served through it once committed.
        self.tap_b = Lab(root / "b1" / "tap")
        self.tap_b.root.mkdir(parents=True)
        self.tap_b.write_config(exports_dir=str(self.tap_b.root / "exports.d"))
        self.vdsa_b.settings["tap_config"] = str(self.tap_b.config_path)

    def start(self) -> None:
        self.manager_a.start()
        self.manager_b.start()
        self.vdsa_b.start()
        self.vdsa_a.start()
        self.tap.start_tap(vdsa_socket=str(self.vdsa_a.tap_socket),
                           exports_dir=str(self.tap.root / "exports.d"))  # fmt: skip
        self.tap_b.start_tap(vdsa_socket=str(self.vdsa_b.tap_socket),
                             exports_dir=str(self.tap_b.root / "exports.d"))  # fmt: skip

    def stop(self) -> None:
        self.tap_b.stop()
        super().stop()

    def protect(self, boot: dict[str, dict[str, Any]] | None = None) -> None:
        vms = [
            {"name": vm, "host": "a1", "disks": [{"export": f"{vm}-disk0"}],
             **({"boot": boot[vm]} if boot else {})}
            for vm in ("vm1", "vm2")
        ]  # fmt: skip
        self.pair()
        self.manager_a.ok("POST", "/vpgs", self.admin_a, self.vpg(vms=vms))
        self.wait_state("erp", "protected")

    def api(self, method: str, path: str, json: Any = None) -> Any:
        return self.manager_a.ok(method, path, self.admin_a, json)

    def command(self, method: str, path: str, json: Any = None) -> Any:
        return self.manager_a.wait_command(self.api(method, path, json), self.admin_a)

    def checkpoint(self, tag: str) -> dict[str, Any]:
        return dict(self.api("POST", "/vpgs/erp/checkpoints", {"tag": tag}))

    def sources(self) -> dict[str, Path]:
        return dict(self.tap.exports)

    def mirrors(self) -> dict[str, Path]:
        found = {p.name: p for p in (self.tap.root.parent / "b1" / "ds1").rglob("disk*.raw")}
        return {"vm1-disk0": found["disk1.raw"], "vm2-disk0": found["disk2.raw"]}

    def in_sync(self) -> bool:
        """The mirrors equal the sources (after a checkpoint taken with the sources idle)."""
        return hashes(self.mirrors()) == hashes(self.sources())
