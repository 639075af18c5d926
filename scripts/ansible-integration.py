"""Runs the collection's integration target (tests/integration/targets/site_manager) against real
site managers: two sites as the agent's tests start them (agent/tests/sites.py: at site A an
hvds-manager, host a1's VDSA and a tap serving vm1-disk0; at site B an hvds-manager and host b1's
VDSA with datastore ds1), all real processes with TLS from a lab CA: the agent's recovery tests'
RecoverySites, where host b1 has a tap too (a committed failover's disks are served through it)
and host a1's VDSA takes the target role (reverse protection comes back to it), so that failover,
commit, reverse protection and a failback move run end to end.

It writes tests/integration/integration_config.yml of the built tree (make ansible-integration
builds it first) with the managers' URLs, admin tokens and CA, then runs
`ansible-test integration --allow-unsupported site_manager` there: every module through
ansible-playbook, with check mode and diff mode.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TREE = REPO / "build" / "ansible_collections" / "hvds" / "replication"
sys.path.insert(0, str(REPO / "agent" / "tests"))

from sites import RecoverySites  # noqa: E402  (agent/tests is on the path only now)


def main() -> int:
    if not TREE.is_dir():
        print(f"ansible-integration: no {TREE}; run `scripts/ansible-check.sh tree` first", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="hvds-ansible-") as tmp:
        sites = RecoverySites(Path(tmp))
        started = time.monotonic()
        try:
            sites.start()
            config = {
                "hvds_url": sites.manager_a.url,
                "hvds_token": sites.admin_a,
                "hvds_ca_path": str(sites.ca.path),
                "hvds_peer_url": sites.manager_b.url,
                "hvds_peer_token": sites.admin_b,
                "hvds_peer_site": "site-b",
                "hvds_datastore": "ds1",
                "hvds_export": "vm1-disk0",
            }
            path = TREE / "tests" / "integration" / "integration_config.yml"
            path.write_text(json.dumps(config, indent=2) + "\n")  # JSON is YAML
            print(f"ansible-integration: two sites up in {time.monotonic() - started:.1f} s", flush=True)
            argv = ["ansible-test", "integration", "--python", "3.11", "--venv", "--allow-unsupported",
                    "--color", "no", "site_manager"]
            status = subprocess.call(argv, cwd=TREE)
        finally:
            sites.stop()
        if status:
            # The services' logs tell what the managers did; the temporary directory goes away.
            logs = REPO / "build" / "ansible-integration-logs"
            shutil.rmtree(logs, ignore_errors=True)
            for log in Path(tmp).rglob("*.log"):
                target = logs / log.relative_to(tmp)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(log, target)
            print(f"ansible-integration: failed; the services' logs are in {logs}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
