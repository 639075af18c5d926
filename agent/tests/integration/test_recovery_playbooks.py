"""The collection's recovery playbooks (playbooks/failover_test.yml, move.yml, failback.yml,
through the role hvds.replication.recovery) run by ansible-playbook against two real sites: the
managers, VDSAs and taps of RecoverySites as real processes. The inventory names both managers,
as a site's inventory does; each playbook must act at the one site where the VPG runs now.
Checked by the VPGs' states at both sites and by the content of the disks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from harness import qemu_io, readable, wait_for
from sites import RecoverySites, hashes

REPO = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.slow


def playbook(sites: RecoverySites, tmp_path: Path, name: str, **extra: object) -> str:
    """Run playbooks/<name>.yml of this checkout as the collection hvds.replication; its output.
    Fails the test when the playbook fails."""
    collections = tmp_path / "collections" / "ansible_collections" / "hvds"
    collections.mkdir(parents=True, exist_ok=True)
    if not (collections / "replication").exists():
        (collections / "replication").symlink_to(REPO)
    managers = {
        f"manager-{site}": {
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
            "hvds_site": f"site-{site}",
            "hvds_recovery_manager_url": manager.url,
            "hvds_recovery_token": token,
            "hvds_recovery_ca_path": str(sites.ca.path),
        }
        for site, manager, token in (("a", sites.manager_a, sites.admin_a),
                                     ("b", sites.manager_b, sites.admin_b))
    }  # fmt: skip
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps({"hvds_managers": {"hosts": managers}}))
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(tmp_path / "collections"),
           "ANSIBLE_NOCOLOR": "1", "ANSIBLE_STDOUT_CALLBACK": "default"}  # fmt: skip
    argv = ["ansible-playbook", "-i", str(inventory), str(REPO / "playbooks" / f"{name}.yml"),
            "-e", json.dumps(extra)]  # fmt: skip
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise AssertionError(f"{name}.yml failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done.stdout


def vpg_at(sites: RecoverySites, site: str) -> dict[str, object]:
    if site == "a":
        return dict(sites.manager_a.ok("GET", "/vpgs/erp", sites.admin_a))
    return dict(sites.manager_b.ok("GET", "/vpgs/erp", sites.admin_b))


def test_failover_test_move_and_failback_playbooks_act_where_the_vpg_runs(
    recovery_sites: RecoverySites, tmp_path: Path
) -> None:
    sites = recovery_sites
    sites.protect()
    vm1 = sites.tap.uri("vm1-disk0")

    # A failover test held for a second, then stopped by the same run.
    out = playbook(sites, tmp_path, "failover_test", hvds_vpg="erp", hvds_test_hold_seconds=1)
    assert vpg_at(sites, "a")["state"] == "protected"
    tests = {c["kind"]: c["status"] for c in sites.api("GET", "/commands")
             if c["kind"].startswith("failover_test")}  # fmt: skip
    assert tests == {"failover_test_start": "succeeded", "failover_test_stop": "succeeded"}, out

    # Data written before a planned move must be at site B after it, and back after failback.
    qemu_io(vm1, "write -P 0x5a 1M 2M", "flush")
    sources = hashes(sites.sources())
    playbook(sites, tmp_path, "move", hvds_vpg="erp")
    at_a = vpg_at(sites, "a")
    assert (at_a["state"], at_a["reverse_site"]) == ("failed_over", "site-b")
    wait_for(lambda: vpg_at(sites, "b")["state"] == "protected", 120, "site B protects back")
    assert not readable(vm1)  # the old disk is detached at site A
    assert hashes(sites.mirrors()) == sources

    playbook(sites, tmp_path, "failback", hvds_vpg="erp")
    at_b = vpg_at(sites, "b")
    assert at_b["state"] == "failed_over"
    wait_for(lambda: readable(vm1), 60, "site A's disk served again")
    assert hashes(sites.sources()) == sources  # site A's disks hold exactly what was moved

    again = playbook(sites, tmp_path, "failback", hvds_vpg="erp")  # nothing left to do
    assert "changed=0" in again.split("PLAY RECAP")[1].split("manager-b")[1].splitlines()[0]


def test_a_recovery_playbook_refuses_a_vpg_no_site_runs(
    recovery_sites: RecoverySites, tmp_path: Path
) -> None:
    sites = recovery_sites
    with pytest.raises(AssertionError, match=r"No site manager of this play .* runs the VPG nope"):
        playbook(sites, tmp_path, "failover", hvds_vpg="nope")
    with pytest.raises(AssertionError, match="hvds_recovery_vpg must name a VPG"):
        playbook(sites, tmp_path, "failover_test", hvds_vpg="bad name")
