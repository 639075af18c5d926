# Copyright: (c) 2025, hvds founding engineers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import pytest

from ansible_collections.hvds.replication.plugins.module_utils.api import HvdsApiError
from ansible_collections.hvds.replication.plugins.modules import failover
from ansible_collections.hvds.replication.plugins.modules.failover import diff_for, plan


@pytest.mark.parametrize(("state", "vpg_state", "action"), [
    ("failing_over", "protected", "failover"),
    ("failing_over", "syncing", "failover"),
    ("failing_over", "failing_over", None),
    ("failing_over", "failed_over", None),
    ("committed", "failing_over", "commit"),
    ("committed", "failed_over", None),
    ("rolled_back", "failing_over", "rollback"),
    ("rolled_back", "protected", None),
    ("rolled_back", "syncing", None),
    ("rolled_back", "testing", None),
])
def test_plan(state, vpg_state, action):
    assert plan("erp", state, vpg_state) == action


@pytest.mark.parametrize(("state", "vpg_state", "message"), [
    ("failing_over", "testing", "protection group erp is testing: a failover needs it syncing or protected"),
    ("failing_over", "initializing", "protection group erp is initializing: a failover needs it syncing or protected"),
    ("committed", "protected", "protection group erp is protected: there is no failover to commit"),
    ("rolled_back", "failed_over", "protection group erp is failed_over: a committed failover cannot be rolled back"),
])
def test_plan_refuses_what_cannot_be_done(state, vpg_state, message):
    with pytest.raises(HvdsApiError) as caught:
        plan("erp", state, vpg_state)
    assert caught.value.msg.startswith(message)


def test_diff_shows_the_state_and_the_checkpoint_chosen():
    assert diff_for("protected", None, {"tag": "t"}) == {"before": {}, "after": {}}
    assert diff_for("protected", "failover", {"tag": "t"}) == {
        "before": {"state": "protected"}, "after": {"state": "failing_over", "tag": "t"}}
    assert diff_for("failing_over", "commit", {"tag": "t"}) == {
        "before": {"state": "failing_over"}, "after": {"state": "failed_over"}}
    assert diff_for("failing_over", "rollback", {}) == {
        "before": {"state": "failing_over"}, "after": {"state": "syncing"}}


def warning_text(warning):
    """A warning as the module's result carries it: text, or (ansible-core 2.19) an event."""
    return warning["event"]["msg"] if isinstance(warning, dict) else warning


def add_vpg(manager, state="protected"):
    manager.vpgs["erp"] = {"name": "erp", "state": state,
                           "vms": [{"name": "vm1", "host": "host-a1", "disks": [{"export": "erp-db-disk0"}]}],
                           "targets": [{"site": "site-b", "host": "host-b1", "datastore": "ds1"}]}
    manager.checkpoints["erp"] = []


def test_failover_then_rollback_each_once_with_check_and_diff(manager, run_module):
    add_vpg(manager)
    checked = run_module(failover, dict(vpg="erp", tag="c1"), check=True, diff=True)
    assert checked["changed"] is True
    assert checked["diff"] == {"before": {"state": "protected"}, "after": {"state": "failing_over", "tag": "c1"}}
    assert manager.commands == []

    started = run_module(failover, dict(vpg="erp", tag="c1"), diff=True)
    assert started["changed"] is True
    assert started["command"]["kind"] == "failover"
    assert started["command"]["status"] == "succeeded"
    assert started["command"]["result"]["views"][0]["disk"] == "erp-db-disk0"
    assert started["protection_group"]["state"] == "failing_over"
    assert ("POST", "/api/v1/vpgs/erp/failover", {"tag": "c1"}) in manager.requests

    again = run_module(failover, dict(vpg="erp", tag="c1"), diff=True)
    assert again["changed"] is False
    assert again["diff"] == {"before": {}, "after": {}}
    assert run_module(failover, dict(vpg="erp", tag="c1"), check=True)["changed"] is False

    rollback_checked = run_module(failover, dict(vpg="erp", state="rolled_back"), check=True, diff=True)
    assert rollback_checked["changed"] is True
    assert rollback_checked["diff"]["after"] == {"state": "syncing"}
    assert manager.vpgs["erp"]["state"] == "failing_over"

    rolled = run_module(failover, dict(vpg="erp", state="rolled_back"))
    assert rolled["changed"] is True
    assert rolled["command"]["kind"] == "failover_rollback"
    assert rolled["command"]["result"]["discarded_bytes"] == 65536
    assert rolled["protection_group"]["state"] == "syncing"
    assert run_module(failover, dict(vpg="erp", state="rolled_back"))["changed"] is False
    assert [command["kind"] for command in manager.commands] == ["failover_rollback", "failover"]


def test_failover_then_commit(manager, run_module):
    add_vpg(manager)
    run_module(failover, dict(vpg="erp"))
    assert run_module(failover, dict(vpg="erp", state="committed"), check=True)["changed"] is True
    committed = run_module(failover, dict(vpg="erp", state="committed"), diff=True)
    assert committed["changed"] is True
    assert committed["command"]["kind"] == "failover_commit"
    assert committed["diff"] == {"before": {"state": "failing_over"}, "after": {"state": "failed_over"}}
    assert committed["protection_group"]["state"] == "failed_over"
    assert run_module(failover, dict(vpg="erp", state="committed"))["changed"] is False
    assert run_module(failover, dict(vpg="erp"))["changed"] is False  # failed over already
    refused = run_module(failover, dict(vpg="erp", state="rolled_back"))
    assert refused["failed"] is True
    assert "a committed failover cannot be rolled back" in refused["msg"]
    assert len(manager.commands) == 2


def test_commit_without_a_failover_fails_and_changes_nothing(manager, run_module):
    add_vpg(manager)
    result = run_module(failover, dict(vpg="erp", state="committed"), check=True)
    assert result["failed"] is True
    assert result["msg"] == ("protection group erp is protected: there is no failover to commit "
                             "(state=failing_over starts one)")
    assert manager.changes() == []


def test_commit_while_the_failover_is_under_way_waits_for_it(manager, run_module):
    add_vpg(manager)
    manager.command_polls = 3
    first = run_module(failover, dict(vpg="erp", wait=False))
    assert first["command"]["status"] == "running"
    assert manager.vpgs["erp"]["state"] == "protected"
    # A second start follows the one under way.
    second = run_module(failover, dict(vpg="erp", wait=False))
    assert second["changed"] is False
    assert second["command"]["id"] == first["command"]["id"]

    committed = run_module(failover, dict(vpg="erp", state="committed"))
    assert committed["changed"] is True
    assert [command["kind"] for command in manager.commands] == ["failover_commit", "failover"]
    assert manager.vpgs["erp"]["state"] == "failed_over"


def test_auto_commit_returns_once_live_and_rollback_stops_it(manager, run_module):
    add_vpg(manager)
    manager.command_polls = 50
    started = run_module(failover, dict(vpg="erp", auto_commit_seconds=3600))
    assert started["changed"] is True
    assert started["command"]["status"] == "running"  # it commits later
    assert started["protection_group"]["state"] == "failing_over"
    assert ("POST", "/api/v1/vpgs/erp/failover", {"auto_commit_seconds": 3600.0}) in manager.requests
    assert run_module(failover, dict(vpg="erp", auto_commit_seconds=3600))["changed"] is False

    rolled = run_module(failover, dict(vpg="erp", state="rolled_back", wait=False))
    assert rolled["changed"] is True
    assert rolled["command"]["kind"] == "failover_rollback"


def test_a_rollback_under_way_is_followed_and_blocks_a_commit(manager, run_module):
    add_vpg(manager, "failing_over")
    manager.command_polls = 5
    rolled = run_module(failover, dict(vpg="erp", state="rolled_back", wait=False))
    assert rolled["changed"] is True
    blocked = run_module(failover, dict(vpg="erp", state="committed"))
    assert blocked["failed"] is True
    assert blocked["msg"] == ("a failover_rollback of protection group erp is under way (command 1): "
                              "run again once it ended")
    followed = run_module(failover, dict(vpg="erp", state="rolled_back"))
    assert followed["changed"] is False
    assert followed["command"]["status"] == "succeeded"
    assert followed["protection_group"]["state"] == "syncing"
    assert len(manager.commands) == 1


def test_options_of_a_failover_warn_with_another_state(manager, run_module):
    add_vpg(manager, "failed_over")
    result = run_module(failover, dict(vpg="erp", state="committed", tag="c1"))
    assert result["changed"] is False
    assert [warning_text(warning) for warning in result["warnings"]] == ["tag: only used with state=failing_over"]


def test_a_failover_the_manager_refuses_fails_the_module(manager, run_module):
    add_vpg(manager)
    manager.failing_command = "failover"
    result = run_module(failover, dict(vpg="erp"))
    assert result["failed"] is True
    assert result["msg"] == "hvds command 1 (failover) failed: no target answered"
