"""Log bundles from a real site: what they hold, and that no secret the test knows is in them."""

from __future__ import annotations

import json
import sqlite3
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import wait_for
from sites import TwoSites
from test_cli import Cli

from hvds.manager.auth import digest

pytestmark = pytest.mark.slow


@pytest.fixture
def sites(tmp_path: Path) -> Iterator[TwoSites]:
    """Host a1's tap and VDSA also write their logs to files (as without systemd)."""
    sites = TwoSites(tmp_path)
    sites.vdsa_a.settings["log_file"] = str(tmp_path / "a1" / "log" / "vdsa.log")
    sites.tap_settings["log_file"] = str(tmp_path / "a1" / "log" / "tap.log")
    try:
        sites.start()
        yield sites
    finally:
        sites.stop()


def secrets_of(sites: TwoSites) -> dict[str, str]:
    """Every secret of both sites the test can find: API tokens, host tokens, token digests,
    private keys (TLS, each pairing CA's, the keys the peers call each other with)."""
    a, b = sites.manager_a, sites.manager_b
    found = {"admin a": sites.admin_a, "admin b": sites.admin_b}
    for vdsa in (sites.vdsa_a, sites.vdsa_b):
        found[f"host token {vdsa.name}"] = (vdsa.root / "manager.token").read_text().strip()
    for manager in (a, b):
        pairing = manager.root / "state" / "pairing"
        for key in [pairing / "ca.key", *sorted((pairing / "peers").glob("*.pem"))]:
            found[f"{manager.site}'s key {key.name}"] = key.read_text().splitlines()[1]
        with sqlite3.connect(manager.root / "state" / "manager.db") as db:
            for name, token_digest in db.execute("SELECT name, digest FROM tokens"):
                found[f"digest of {manager.site}'s token {name}"] = token_digest
        found[f"{manager.site} TLS key"] = Path(manager.tls.key).read_text().splitlines()[1]
    for vdsa in (sites.vdsa_a, sites.vdsa_b):
        found[f"{vdsa.name} TLS key"] = Path(vdsa.tls.key).read_text().splitlines()[1]
    return found


def test_a_log_bundle_holds_the_state_and_no_secret(sites: TwoSites, tmp_path: Path) -> None:
    a = sites.manager_a
    wait_for(lambda: a.ok("GET", "/hosts", sites.admin_a), what="host a1 registered")
    pairing = sites.manager_b.ok("POST", "/pairing-tokens", sites.admin_b)
    sites.pair()
    a.ok("POST", "/vpgs", sites.admin_a, sites.vpg())
    sites.wait_state("erp", "protected")
    viewer = a.token("auditor", "viewer")
    secrets = {**secrets_of(sites), "viewer": viewer, "unused pairing token": pairing["token"]}
    assert len(secrets) >= 14, sorted(secrets)
    # A leak in a host's log, as a careless line would make it: the host's token and its TLS
    # key. The bundle carries the line, and neither of them.
    log_dir = sites.root / "a1" / "log"
    with (log_dir / "vdsa.log").open("a") as f:
        f.write(f"leak: token {secrets['host token a1']} key "
                f"{Path(sites.vdsa_a.tls.key).read_text()}\n")  # fmt: skip

    started = a.ok("POST", "/logs", sites.admin_a)
    assert started["kind"] == "log_collection" and started["status"] == "running"
    done = a.wait_command(started, sites.admin_a)
    assert done["result"]["hosts"] == ["a1"]
    # A viewer may not take the bundle; a running or unknown command has none.
    assert a.api("GET", f"/commands/{done['id']}/bundle", viewer).status_code == 403
    assert a.api("GET", "/commands/999999/bundle", sites.admin_a).status_code == 404

    # Downloaded through the CLI, which starts a collection, follows it and saves the tar.gz.
    saved = tmp_path / "bundle.tar.gz"
    collected = Cli(sites, sites.admin_a).run("logs", "collect", "-o", str(saved))
    assert "log_collection" in collected.stderr and f"written to {saved}" in collected.stderr
    with tarfile.open(saved) as tar:
        members = {m.name.split("/", 1)[1]: tar.extractfile(m) for m in tar if m.isfile()}
        files = {name: f.read().decode() for name, f in members.items() if f is not None}

    expected = {"manifest.json", "manager/log.txt", "manager/config.json",
                "manager/db/vpgs.json", "manager/db/peers.json", "manager/db/tokens.json",
                "manager/db/hosts.json", "manager/db/commands.json", "manager/db/audit.json",
                "hosts/a1/status.json", "hosts/a1/tap.log", "hosts/a1/vdsa.log"}  # fmt: skip
    assert expected <= set(files), sorted(set(files))
    manifest = json.loads(files["manifest.json"])
    assert manifest["site"] == "site-a" and sorted(manifest["files"]) == sorted(
        set(files) - {"manifest.json"}
    )
    assert "erp" in json.loads(files["hosts/a1/status.json"])["sources"]
    assert [v["name"] for v in json.loads(files["manager/db/vpgs.json"])] == ["erp"]
    (peer,) = json.loads(files["manager/db/peers.json"])
    assert peer["name"] == "site-b" and len(peer["fingerprint"]) == 64
    tokens = json.loads(files["manager/db/tokens.json"])
    assert {t["name"] for t in tokens} >= {"admin", "a1", "auditor"}
    assert {t["digest"] for t in tokens} == {"<redacted>"}
    assert "hvds.manager" in files["manager/log.txt"]
    assert json.loads(files["manager/config.json"])["manager"]["site"] == "site-a"
    # The hosts' logs: lines their processes really logged, read from the files they write.
    assert manifest["host_logs"] == {"a1": {"tap": f"file:{log_dir / 'tap.log'}",
                                            "vdsa": f"file:{log_dir / 'vdsa.log'}"}}  # fmt: skip
    logged = {"tap": "hvds.tap.link INFO connected to VDSA at ",
              "vdsa": "hvds.vdsa.service INFO source role: taps connect to "}  # fmt: skip
    for service, line in logged.items():
        bundled = files[f"hosts/a1/{service}.log"].splitlines()
        assert any(line in entry for entry in bundled), (service, bundled[:20])
        written = (log_dir / f"{service}.log").read_text().splitlines()
        assert set(bundled) - set(written) <= {"leak: token <redacted> key <redacted>"}
    assert "leak: token <redacted> key <redacted>" in files["hosts/a1/vdsa.log"]

    everything = "\n".join(files.values())
    leaked = [what for what, secret in secrets.items() if secret in everything]
    assert leaked == []
    # Nor the digest of any of them (the digests are redacted too).
    assert [w for w, s in secrets.items() if digest(s) in everything] == []
