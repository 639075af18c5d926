# Copyright: (c) 2025, hvds founding engineers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import pytest

from ansible_collections.hvds.replication.plugins.module_utils.api import HvdsApiError
from ansible_collections.hvds.replication.plugins.modules import failover, move, reverse_protection
from ansible_collections.hvds.replication.plugins.modules.reverse_protection import reversed_to


def add_vpg(manager, state="protected"):
    manager.vpgs["erp"] = {"name": "erp", "state": state,
                           "vms": [{"name": "vm1", "host": "host-a1", "disks": [{"export": "erp-db-disk0"}]}],
                           "targets": [{"site": "site-b", "host": "host-b1", "datastore": "ds1"}],
                           "reverse_site": None}
    manager.checkpoints["erp"] = []


# --- move -------------------------------------------------------------------------------------


def test_move_plan():
    assert move.plan("erp", "protected") is True
    assert move.plan("erp", "failed_over") is False
    for state, message in (("failing_over", "protection group erp is failing_over: commit or roll back"),
                           ("syncing", "protection group erp is syncing: a move needs it protected")):
        with pytest.raises(HvdsApiError) as caught:
            move.plan("erp", state)
        assert caught.value.msg.startswith(message)


def test_a_vpg_is_moved_once(manager, run_module):
    add_vpg(manager)
    checked = run_module(move, dict(vpg="erp"), check=True, diff=True)
    assert checked["changed"] is True
    assert checked["diff"] == {"before": {"state": "protected"}, "after": {"state": "failed_over"}}
    assert manager.commands == []

    moved = run_module(move, dict(vpg="erp"), diff=True)
    assert moved["changed"] is True
    assert moved["command"]["kind"] == "move"
    assert moved["command"]["result"]["checkpoint"]["tag"].startswith("move-")
    assert moved["protection_group"]["state"] == "failed_over"
    assert manager.changes() == [("POST", "/api/v1/vpgs/erp/move")]

    again = run_module(move, dict(vpg="erp"), diff=True)
    assert again["changed"] is False
    assert again["diff"] == {"before": {}, "after": {}}
    assert run_module(move, dict(vpg="erp"), check=True)["changed"] is False
    assert len(manager.commands) == 1


def test_a_move_under_way_is_followed(manager, run_module):
    add_vpg(manager)
    manager.command_polls = 3
    first = run_module(move, dict(vpg="erp", wait=False))
    assert first["command"]["status"] == "running"
    second = run_module(move, dict(vpg="erp"))
    assert second["changed"] is False
    assert second["command"]["status"] == "succeeded"
    assert second["protection_group"]["state"] == "failed_over"
    # a failover under way: start nothing, follow the move
    assert run_module(failover, dict(vpg="erp"))["changed"] is False
    assert len(manager.commands) == 1


def test_a_move_during_a_failover_fails_without_a_change(manager, run_module):
    add_vpg(manager)
    manager.command_polls = 3
    run_module(failover, dict(vpg="erp", wait=False))
    result = run_module(move, dict(vpg="erp"))
    assert result["failed"] is True
    assert result["msg"] == "a failover of protection group erp is under way (command 1): run again once it ended"
    manager.vpgs["erp"]["state"] = "syncing"
    manager.commands = []
    result = run_module(move, dict(vpg="erp"), check=True)
    assert result["failed"] is True
    assert result["msg"] == "protection group erp is syncing: a move needs it protected"


# --- reverse protection -----------------------------------------------------------------------


def test_reversed_to_reads_reverse_site_or_else_the_commands_since_the_last_commit():
    assert reversed_to({"reverse_site": "site-b"}, []) == "site-b"
    assert reversed_to({"reverse_site": None}, [{"kind": "reverse_protection", "status": "succeeded",
                                                 "result": {"site": "site-b"}}]) is None
    older = [
        {"kind": "reverse_protection", "status": "failed", "result": None},
        {"kind": "reverse_protection", "status": "succeeded", "result": {"site": "site-c"}},
        {"kind": "failover_commit", "status": "succeeded"},
        {"kind": "reverse_protection", "status": "succeeded", "result": {"site": "site-b"}},
    ]
    assert reversed_to({}, older) == "site-c"
    assert reversed_to({}, older[2:]) is None
    assert reversed_to({}, []) is None


def test_reverse_protection_once_after_a_commit(manager, run_module):
    add_vpg(manager)
    refused = run_module(reverse_protection, dict(vpg="erp"))
    assert refused["failed"] is True
    assert refused["msg"] == ("protection group erp is protected: reverse protection needs a committed failover "
                              "or a move (state failed_over)")
    run_module(failover, dict(vpg="erp"))
    run_module(failover, dict(vpg="erp", state="committed"))

    checked = run_module(reverse_protection, dict(vpg="erp"), check=True, diff=True)
    assert checked["changed"] is True
    assert checked["reverse_site"] == "site-b"
    assert checked["diff"] == {"before": {"reverse_site": None}, "after": {"reverse_site": "site-b"}}
    assert manager.vpgs["erp"]["reverse_site"] is None

    reversed_ = run_module(reverse_protection, dict(vpg="erp"), diff=True)
    assert reversed_["changed"] is True
    assert reversed_["command"]["kind"] == "reverse_protection"
    assert reversed_["command"]["result"] == {"vpg": "erp", "site": "site-b", "state": "initializing"}
    assert reversed_["reverse_site"] == "site-b"
    assert reversed_["protection_group"]["reverse_site"] == "site-b"

    again = run_module(reverse_protection, dict(vpg="erp"), diff=True)
    assert again["changed"] is False
    assert again["reverse_site"] == "site-b"
    assert again["diff"] == {"before": {}, "after": {}}
    assert run_module(reverse_protection, dict(vpg="erp"), check=True)["changed"] is False
    assert [command["kind"] for command in manager.commands] == ["reverse_protection", "failover_commit", "failover"]


def test_reverse_protection_with_a_manager_that_has_no_reverse_site(manager, run_module):
    add_vpg(manager, "failed_over")
    del manager.vpgs["erp"]["reverse_site"]
    assert run_module(reverse_protection, dict(vpg="erp"))["changed"] is True
    del manager.vpgs["erp"]["reverse_site"]  # as such a manager shows it
    again = run_module(reverse_protection, dict(vpg="erp"))
    assert again["changed"] is False
    assert again["reverse_site"] == "site-b"
    assert len(manager.commands) == 1
