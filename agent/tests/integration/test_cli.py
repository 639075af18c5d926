"""The `hvds` command against two real sites: tables by default, the API's JSON with --json,
progress bars that follow a command to its end, errors as exit statuses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from harness import wait_for
from sites import TwoSites

pytestmark = pytest.mark.slow

HVDS = shutil.which("hvds") or "hvds"


class Cli:
    def __init__(self, sites: TwoSites, token: str) -> None:
        self.env = {
            **os.environ, "HVDS_URL": sites.manager_a.url, "HVDS_TOKEN": token,
            "HVDS_CA": str(sites.ca.path), "COLUMNS": "200",
        }  # fmt: skip

    def run(self, *args: str, stdin: str = "", status: int = 0) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [HVDS, *args], input=stdin, capture_output=True, text=True, env=self.env, timeout=120,
            check=False,
        )  # fmt: skip
        assert done.returncode == status, (args, done.returncode, done.stdout, done.stderr)
        return done

    def json(self, *args: str) -> Any:
        return json.loads(self.run("--json", *args).stdout)


def test_the_hvds_command_on_a_real_site(sites: TwoSites, tmp_path: Path) -> None:
    a = sites.manager_a
    cli = Cli(sites, sites.admin_a)
    wait_for(lambda: a.ok("GET", "/hosts", sites.admin_a), what="host a1 registered")
    sites.pair()

    site = cli.json("site")
    assert site == a.ok("GET", "/site", sites.admin_a)
    assert "site site-a" in cli.run("site").stdout
    hosts = cli.run("hosts").stdout
    assert "a1" in hosts and "up" in hosts and "NAME" in hosts

    spec = tmp_path / "erp.json"
    spec.write_text(json.dumps(sites.vpg()))
    created = cli.json("vpgs", "create", "-f", str(spec))
    assert created["name"] == "erp" and created["state"] in ("initializing", "syncing")
    (sync,) = a.ok("GET", "/commands?vpg=erp", sites.admin_a)
    # watch follows the initial sync to its end: the bar (on stderr) ends at 100%.
    watched = cli.run("commands", "watch", str(sync["id"]))
    assert "initial_sync erp" in watched.stderr and "100%" in watched.stderr
    assert "succeeded" in watched.stdout
    assert cli.json("commands", "get", str(sync["id"]))["status"] == "succeeded"

    # The list (served from the stored rows) and the get (through the model) say the same;
    # the RPO is the one value that moves between two reads.
    listed = [{**vpg, "rpo_seconds": 0} for vpg in cli.json("vpgs", "list")]
    got = cli.json("vpgs", "get", "erp")
    assert listed == [{**got, "rpo_seconds": 0}], {
        key: (listed[0].get(key), got.get(key)) for key in {*listed[0], *got}
        if listed[0].get(key) != got.get(key)
    }  # fmt: skip
    table = cli.run("vpgs", "list").stdout
    assert "erp" in table and "protected" in table and "site-b/b1/ds1" in table
    shown = cli.run("vpgs", "get", "erp").stdout
    assert "vm1-disk0" in shown and "checkpoint_interval_seconds" in shown

    cli.run("checkpoints", "create", "erp", "--tag", "from-cli", "--description", "by hvds")
    checkpoints = cli.json("checkpoints", "list", "erp")
    assert [c["description"] for c in checkpoints if c["tag"] == "from-cli"] == ["by hvds"]
    assert "from-cli" in cli.run("checkpoints", "list", "erp").stdout

    test = cli.run("test", "start", "erp", "--tag", "from-cli")
    assert "failover_test_start erp" in test.stderr and "succeeded" in test.stdout
    assert a.ok("GET", "/vpgs/erp", sites.admin_a)["state"] == "testing"
    assert "failover_test_stop" in cli.run("test", "stop", "erp").stdout
    wait_for(lambda: a.ok("GET", "/vpgs/erp", sites.admin_a)["state"] == "protected",
             what="erp protected again")  # fmt: skip
    failed_over = cli.run("failover", "start", "erp", "--tag", "from-cli")
    assert "failover erp" in failed_over.stderr and "succeeded" in failed_over.stdout
    assert a.ok("GET", "/vpgs/erp", sites.admin_a)["state"] == "failing_over"
    assert "failover_rollback" in cli.run("failover", "rollback", "erp").stdout
    restored = cli.json("restore", "erp", "vm1-disk0", "--datastore", "ds1", "--name", "cli",
                        "--tag", "from-cli")  # fmt: skip
    assert restored["status"] == "succeeded"
    assert restored["result"]["path"].endswith("restores/cli.raw")
    # Three commands or more by now: --all follows the pages (here of one command each).
    every = cli.json("commands", "list", "--all", "--page-size", "1")
    assert [c["id"] for c in every] == [c["id"] for c in a.ok("GET", "/commands", sites.admin_a)]
    assert len(every) >= 3
    assert len(cli.json("commands", "list", "--page-size", "1")) == 1

    # Errors: the API's reason and status 1; a manager not reached, status 2.
    missing = cli.run("vpgs", "get", "nope", status=1)
    assert "HTTP 404" in missing.stderr and "no VPG nope" in missing.stderr
    viewer = Cli(sites, a.token("auditor", "viewer"))
    refused = viewer.run("vpgs", "delete", "erp", status=1)
    assert "HTTP 403" in refused.stderr
    wrong = Cli(sites, "hvds_not-a-token-of-this-site")
    assert "HTTP 401" in wrong.run("site", status=1).stderr
    wrong.env["HVDS_URL"] = "https://127.0.0.1:1"
    assert "cannot reach" in wrong.run("site", status=2).stderr

    wait_for(lambda: a.ok("GET", "/vpgs/erp", sites.admin_a)["state"] != "testing",
             what="the test stopped")  # fmt: skip
    assert "VPG erp deleted" in cli.run("vpgs", "delete", "erp").stdout
    assert cli.json("vpgs", "list") == []
