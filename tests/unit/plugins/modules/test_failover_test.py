# Copyright: (c) 2025, hvds founding engineers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

from ansible_collections.hvds.replication.plugins.modules import command_info, failover_test
from ansible_collections.hvds.replication.plugins.modules.failover_test import needs_change, pending_command


def test_needs_change():
    assert needs_change({"state": "protected"}, "started")
    assert not needs_change({"state": "testing"}, "started")
    assert needs_change({"state": "testing"}, "stopped")
    assert not needs_change({"state": "syncing"}, "stopped")


def test_pending_command_is_the_newest_unended_one_of_the_vpg_and_kind():
    commands = [
        {"id": 4, "vpg": "crm", "kind": "failover_test_start", "status": "running"},
        {"id": 3, "vpg": "erp", "kind": "failover_test_stop", "status": "queued"},
        {"id": 2, "vpg": "erp", "kind": "failover_test_start", "status": "running"},
        {"id": 1, "vpg": "erp", "kind": "failover_test_start", "status": "failed"},
    ]
    assert pending_command(commands, "erp", "failover_test_start")["id"] == 2
    assert pending_command(commands, "erp", "failover_test_stop")["id"] == 3
    assert pending_command(commands[2:], "crm", "failover_test_start") is None
    assert pending_command(commands[3:], "erp", "failover_test_start") is None


def add_vpg(manager):
    manager.vpgs["erp"] = {"name": "erp", "state": "protected"}
    manager.checkpoints["erp"] = []


def test_start_waits_then_is_idempotent_then_stop(manager, run_module):
    add_vpg(manager)
    checked = run_module(failover_test, dict(vpg="erp"), check=True, diff=True)
    assert checked["changed"] is True
    assert checked["diff"] == {"before": {"failover_test": "stopped"}, "after": {"failover_test": "started"}}
    assert manager.commands == []

    started = run_module(failover_test, dict(vpg="erp", tag="before-upgrade"), diff=True)
    assert started["changed"] is True
    assert started["command"]["status"] == "succeeded"
    assert started["command"]["kind"] == "failover_test_start"
    assert started["protection_group"]["state"] == "testing"
    assert manager.changes() == [("POST", "/api/v1/vpgs/erp/failover-test")]
    assert ("POST", "/api/v1/vpgs/erp/failover-test", {"tag": "before-upgrade"}) in manager.requests

    again = run_module(failover_test, dict(vpg="erp"), diff=True)
    assert again["changed"] is False
    assert again["diff"] == {"before": {}, "after": {}}
    assert len(manager.commands) == 1

    stopped = run_module(failover_test, dict(vpg="erp", state="stopped"))
    assert stopped["changed"] is True
    assert stopped["command"]["kind"] == "failover_test_stop"
    assert manager.vpgs["erp"]["state"] == "protected"
    assert run_module(failover_test, dict(vpg="erp", state="stopped"))["changed"] is False


def test_without_wait_a_start_under_way_is_not_started_again(manager, run_module):
    add_vpg(manager)
    manager.command_polls = 5
    first = run_module(failover_test, dict(vpg="erp", wait=False))
    assert first["changed"] is True
    assert first["command"]["status"] == "running"
    assert manager.vpgs["erp"]["state"] == "protected"

    second = run_module(failover_test, dict(vpg="erp", wait=False))
    assert second["changed"] is False
    assert second["command"]["id"] == first["command"]["id"]
    assert len(manager.commands) == 1

    waited = run_module(command_info, dict(id=first["command"]["id"], wait=True))
    assert waited["commands"][0]["status"] == "succeeded"
    assert manager.vpgs["erp"]["state"] == "testing"


def test_stop_while_a_start_is_under_way_waits_for_it_then_stops(manager, run_module):
    add_vpg(manager)
    run_module(failover_test, dict(vpg="erp", wait=False))
    stopped = run_module(failover_test, dict(vpg="erp", state="stopped"))
    assert stopped["changed"] is True
    assert [command["kind"] for command in manager.commands] == ["failover_test_stop", "failover_test_start"]
    assert manager.vpgs["erp"]["state"] == "protected"


def test_a_failed_command_fails_the_module(manager, run_module):
    add_vpg(manager)
    manager.failing_command = "failover_test_start"
    result = run_module(failover_test, dict(vpg="erp"))
    assert result["failed"] is True
    assert result["msg"] == "hvds command 1 (failover_test_start) failed: no target answered"


def test_wait_timeout(manager, run_module):
    add_vpg(manager)
    manager.command_polls = 10 ** 6
    result = run_module(failover_test, dict(vpg="erp", wait_timeout=0))
    assert result["failed"] is True
    assert result["msg"] == "hvds command 1 (failover_test_start) is still running (progress 0%) after 0 seconds"


def test_checkpoint_and_tag_are_mutually_exclusive(manager, run_module):
    add_vpg(manager)
    result = run_module(failover_test, dict(vpg="erp", checkpoint=3, tag="t"))
    assert result["failed"] is True
    assert "mutually exclusive" in result["msg"]
    assert manager.requests == []
