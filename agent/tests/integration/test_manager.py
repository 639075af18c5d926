"""The site managers end to end: two sites, each a manager with its host's VDSA (and, at site A,
a tap) as real processes, driven only through the API."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from harness import qemu_io, sha256_file, wait_for
from sites import TwoSites

pytestmark = pytest.mark.slow


def nbd_to_file(uri: str, path: Path) -> str:
    subprocess.run(["nbdcopy", uri, str(path)], check=True, capture_output=True)
    return sha256_file(path)


def test_pair_protect_checkpoint_and_failover_test_through_the_api(
    sites: TwoSites, tmp_path: Path
) -> None:
    a, b = sites.manager_a, sites.manager_b
    wait_for(lambda: any(h["name"] == "a1" and h["state"] == "up"
                         and h["exports"] for h in a.ok("GET", "/hosts", sites.admin_a)),
             what="host a1 registered with its disk")  # fmt: skip
    wait_for(lambda: [h["name"] for h in b.ok("GET", "/hosts", sites.admin_b)] == ["b1"],
             what="host b1 registered")  # fmt: skip

    sites.pair()
    assert [p["name"] for p in a.ok("GET", "/peers", sites.admin_a)] == ["site-b"]
    assert [p["name"] for p in b.ok("GET", "/peers", sites.admin_b)] == ["site-a"]
    topology = a.ok("GET", "/peers/site-b/topology", sites.admin_a)
    assert topology["hosts"][0]["datastores"][0]["name"] == "ds1"

    qemu_io(sites.tap.uri("vm1-disk0"), "write -P 0x11 0 4M")  # before protection: synced
    created = a.ok("POST", "/vpgs", sites.admin_a, sites.vpg())
    assert created["state"] in ("initializing", "syncing")
    sites.wait_state("erp", "protected")
    sync = a.ok("GET", "/commands?vpg=erp", sites.admin_a)[0]
    assert sync["kind"] == "initial_sync"
    assert a.wait_command(sync, sites.admin_a)["progress"] == 100

    qemu_io(sites.tap.uri("vm1-disk0"), "write -P 0x22 8M 2M")
    at_checkpoint = sha256_file(sites.disk)
    checkpoint = a.ok("POST", "/vpgs/erp/checkpoints", sites.admin_a,
                      {"tag": "before-upgrade", "description": "by the test"})  # fmt: skip
    listed = a.ok("GET", "/vpgs/erp/checkpoints", sites.admin_a)
    assert checkpoint in listed and checkpoint["tag"] == "before-upgrade"
    qemu_io(sites.tap.uri("vm1-disk0"), "write -P 0x33 0 1M")  # after the checkpoint
    assert sha256_file(sites.disk) != at_checkpoint

    started = a.ok("POST", "/vpgs/erp/failover-test", sites.admin_a, {"tag": "before-upgrade"})
    test = a.wait_command(started, sites.admin_a)["result"]
    assert a.ok("GET", "/vpgs/erp", sites.admin_a)["state"] == "testing"
    assert test["checkpoint"]["id"] == checkpoint["id"]
    (view,) = test["views"]
    assert nbd_to_file(view["uri"], tmp_path / "view.raw") == at_checkpoint
    # The test's writes go to scratch; replication goes on meanwhile.
    qemu_io(view["uri"], "write -P 0x44 0 1M")
    qemu_io(sites.tap.uri("vm1-disk0"), "write -P 0x55 16M 1M")
    stopped = a.wait_command(a.ok("DELETE", "/vpgs/erp/failover-test", sites.admin_a),
                             sites.admin_a)  # fmt: skip
    report = stopped["result"]["report"]
    assert report["disks"] == ["vm1-disk0"] and report["checkpoint"]["tag"] == "before-upgrade"
    sites.wait_state("erp", "protected")
    final = a.ok("POST", "/vpgs/erp/checkpoints", sites.admin_a, {"tag": "after-test"})
    mirrors = list((tmp_path / "b1" / "ds1").rglob("*.raw"))
    assert len(mirrors) == 1
    wait_for(lambda: sha256_file(mirrors[0]) == sha256_file(sites.disk),
             what="the mirror equal to the source at the last checkpoint")  # fmt: skip
    assert final["id"] > checkpoint["id"]


def test_tokens_roles_and_a_restart_that_loses_nothing(sites: TwoSites) -> None:
    a = sites.manager_a
    assert a.api("GET", "/vpgs", "").status_code == 401
    assert a.api("GET", "/vpgs", "hvds_not-a-real-token-at-all").status_code == 401
    viewer = a.token("auditor", "viewer")
    assert a.api("GET", "/vpgs", viewer).status_code == 200
    refused = a.api("POST", "/vpgs", viewer, sites.vpg())
    assert refused.status_code == 403
    host_token = (sites.vdsa_a.root / "manager.token").read_text().strip()
    assert a.api("GET", "/vpgs", host_token).status_code == 403
    # Invalid settings are refused with the reason, and nothing is stored.
    bad = a.api("POST", "/vpgs", sites.admin_a, sites.vpg(priority="urgent"))
    assert bad.status_code == 422 and "priority" in bad.text
    unknown_disk = sites.vpg(vms=[{"name": "vm1", "host": "a1", "disks": [{"export": "nope"}]}])
    wait_for(lambda: a.ok("GET", "/hosts", sites.admin_a), what="host a1 registered")
    answer = a.api("POST", "/vpgs", sites.admin_a, unknown_disk)
    assert answer.status_code == 400 and "serves no disk nope" in answer.text
    not_paired = a.api("POST", "/vpgs", sites.admin_a, sites.vpg())
    assert not_paired.status_code == 400 and "not paired" in not_paired.text

    sites.pair()
    a.ok("POST", "/vpgs", sites.admin_a, sites.vpg())
    sites.wait_state("erp", "protected")
    before = a.ok("GET", "/vpgs/erp", sites.admin_a)
    assert a.service is not None and a.service.proc is not None
    os.kill(a.service.proc.pid, 9)
    a.service.proc.wait()
    a.start()
    after = a.ok("GET", "/vpgs/erp", sites.admin_a)
    for key in ("vms", "targets", "created_at", "checkpoint_interval_seconds"):
        assert after[key] == before[key]
    assert [p["name"] for p in a.ok("GET", "/peers", sites.admin_a)] == ["site-b"]
    sites.wait_state("erp", "protected")
