"""schemathesis against a real site manager: every operation of its OpenAPI document, with the
document's own schemas as the oracle. No 5xx (but a 502 where the manager had to call a host's
VDSA or a peer site, which is what 502 means in docs/api.md) and no response that breaks its
declared schema.

Two sites as real processes, paired, with a VPG ``erp`` and its ``initial_sync`` command, so
that the operations on a VPG and a command reach their logic and not only a 404."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from sites import TwoSites

pytestmark = pytest.mark.slow

SCHEMATHESIS = str(Path(shutil.which("schemathesis") or "schemathesis"))
# Where the manager calls out (a peer site's manager, a host's VDSA): 502 is its documented
# answer when that other side cannot be reached or refuses.
CALLS_OUT = r"^/api/v1/(peers|vpgs|replicas)"
# What only a paired site's manager may call (with the client certificate pairing gave it).
PEER_ONLY = r"^/api/v1/(replicas|pairing|topology)($|/)"


def fuzz_config(
    sites: TwoSites, token: str | Path, ids: dict[str, int], reports: Path
) -> dict[str, Any]:
    """``token``: a bearer token, or the file of a peer's client key and certificate."""
    auth: dict[str, Any] = (
        {"request-cert": str(token)} if isinstance(token, Path)
        else {"headers": {"Authorization": f"Bearer {token}"}}
    )  # fmt: skip
    return {
        "seed": 20240611,
        "workers": 1,
        **auth,
        "tls-verify": str(sites.ca.path),
        "request-timeout": 60,
        "generation": {"max-examples": 6},
        "checks": {
            "enabled": False,
            "not_a_server_error": {"enabled": True},
            "response_schema_conformance": {"enabled": True},
        },
        "reports": {"json": {"enabled": True, "path": str(reports / "run.json")}},
        "parameters": {"path.command_id": ids["sync"]},
        "operations": [
            {
                "include-path-regex": CALLS_OUT,
                "checks": {
                    "not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "502"]}
                },
            },
            # The VPG that exists, so that get, update, checkpoints and tests reach their logic
            # (its deletion is the test's last step: deleted first, it would leave only 404s).
            {
                "include-name-regex": r"^(GET|PUT) /api/v1/vpgs/\{name\}$|/vpgs/\{name\}/",
                "parameters": {"path.name": "erp"},
            },
            # A log collection, so that its bundle is there to download.
            {
                "include-name": "GET /api/v1/commands/{command_id}/bundle",
                "parameters": {"path.command_id": ids["logs"]},
            },
        ],
    }


def run_schemathesis(
    sites: TwoSites, token: str | Path, ids: dict[str, int], root: Path, *filters: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    root.mkdir()
    config = root / "schemathesis.toml"
    config.write_text(tomli_w.dumps(fuzz_config(sites, token, ids, root)))
    argv = [SCHEMATHESIS, "--config-file", str(config), "--no-color", "run", *filters]
    argv.append(f"{sites.manager_a.url}/openapi.json")
    done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=240, cwd=root)
    (root / "output.txt").write_text(done.stdout + done.stderr)
    return done, json.loads((root / "run.json").read_text())


def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    sites: TwoSites, tmp_path: Path
) -> None:
    a = sites.manager_a
    sites.pair()
    a.ok("POST", "/vpgs", sites.admin_a, sites.vpg())
    (sync,) = a.ok("GET", "/commands?vpg=erp", sites.admin_a)
    logs = a.wait_command(a.ok("POST", "/logs", sites.admin_a), sites.admin_a)
    ids = {"sync": sync["id"], "logs": logs["id"]}
    # Site B's manager, as A knows it: by the client certificate A signed for it at pairing.
    peer = sites.manager_b.root / "state" / "pairing" / "peers" / "site-a.pem"
    # The deletions of the VPG and of the pairing go last: the stateful phase finds "erp" and
    # "site-b" in the lists and would delete them first, leaving the other operations 404s.
    deletions = ["DELETE /api/v1/vpgs/{name}", "DELETE /api/v1/peers/{name}"]
    runs = {
        "admin": run_schemathesis(
            sites, sites.admin_a, ids, tmp_path / "admin",
            "--exclude-path-regex", PEER_ONLY,
            *(arg for name in deletions for arg in ("--exclude-name", name)),
        ),
        # What only a peer site may call, but DELETE /pairing: it ends the pairing.
        "peer": run_schemathesis(
            sites, peer, ids, tmp_path / "peer",
            "--include-path-regex", PEER_ONLY, "--exclude-name", "DELETE /api/v1/pairing",
        ),
        "deletions": run_schemathesis(
            sites, sites.admin_a, ids, tmp_path / "deletions",
            *(arg for name in deletions for arg in ("--include-name", name)),
        ),
    }  # fmt: skip
    for label, (done, report) in runs.items():
        assert done.returncode == 0, done.stdout[-6000:]
        assert report["complete"] and report["exit_code"] == 0
        assert report["operations"]["tested"] == report["operations"]["selected"] > 1
        assert report["test_cases"]["generated"] > 5 * report["operations"]["tested"]
        assert report["failures"] == [] and report["errors"] == []
        assert report["warnings"]["missing_auth"] == [], (label, report["warnings"])
    # Between them, the runs tested every operation of the document but DELETE /pairing.
    total = runs["admin"][1]["operations"]["total"]
    assert sum(report["operations"]["tested"] for _, report in runs.values()) == total - 1
    # Every operation on the VPG and on the command reached them (404s would test nothing).
    assert runs["admin"][1]["warnings"]["missing_test_data"] == []
    # The deletions, by hand, of the VPG (unless the fuzzing left a recovery of it under way,
    # as it may: failover, commit and move are operations of the document too) and the pairing.
    state = a.ok("GET", "/vpgs/erp", sites.admin_a)["state"]
    deleted = a.api("DELETE", "/vpgs/erp", sites.admin_a)
    if state in ("testing", "failing_over", "failed_over"):
        assert deleted.status_code == 409 and "recovery of erp is under way" in deleted.text
    else:
        assert deleted.status_code == 204, (state, deleted.text)
    assert a.api("DELETE", "/peers/site-b", sites.admin_a).status_code == 204
    assert a.ok("GET", "/peers", sites.admin_a) == []
    assert sites.manager_b.ok("GET", "/peers", sites.admin_b) == []
