# Copyright: (c) 2025, hvds founding engineers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

from ansible_collections.hvds.replication.plugins.module_utils import api
from ansible_collections.hvds.replication.plugins.modules import (
    command_info,
    host_info,
    protection_group_info,
    site_info,
)
from ansible_collections.hvds.replication.plugins.modules.command_info import select


def test_site_info_with_peer_topology(manager, run_module):
    manager.peers.append({"name": "site-b", "url": "https://b", "paired_at": "2025-01-01T10:00:00Z"})
    result = run_module(site_info, dict(peer_topology=True), check=True)
    assert result["changed"] is False
    assert result["site"]["health"] == {"status": "ok", "hosts_up": 1, "hosts_down": 0, "alerts": []}
    assert result["peers"][0]["topology"]["hosts"][0]["name"] == "host-b1"
    assert "topology" not in run_module(site_info, {})["peers"][0]


def test_host_info_one_all_and_missing(manager, run_module):
    assert [host["name"] for host in run_module(host_info, {})["hosts"]] == ["host-a1"]
    assert run_module(host_info, dict(name="host-a1"))["hosts"][0]["datastores"][0]["name"] == "ds1"
    missing = run_module(host_info, dict(name="host-zz"))
    assert missing["changed"] is False
    assert missing["hosts"] == []


def test_protection_group_info(manager, run_module):
    manager.vpgs["erp"] = {"name": "erp", "state": "protected"}
    assert run_module(protection_group_info, {})["protection_groups"] == [{"name": "erp", "state": "protected"}]
    assert run_module(protection_group_info, dict(name="crm"))["protection_groups"] == []


def test_command_select():
    commands = [{"id": 2, "vpg": "erp", "kind": "a"}, {"id": 1, "vpg": "crm", "kind": "b"}]
    assert select(commands) == commands
    assert select(commands, vpg="crm") == [commands[1]]
    assert select(commands, kind="a") == [commands[0]]
    assert select(commands, vpg="erp", kind="b") == []


def test_command_info_wait_needs_an_id(manager, run_module):
    result = run_module(command_info, dict(wait=True))
    assert result["failed"] is True
    assert "wait is True but all of the following are missing: id" in result["msg"]


def test_an_info_module_fails_clearly_with_a_viewer_limit(manager, run_module):
    manager.replies = [(401, {"detail": "token expired"}, {})]
    result = run_module(site_info, {})
    assert result["failed"] is True
    assert result["msg"] == "hvds API GET /api/v1/peers?limit=1000: HTTP 401 not authenticated (missing or wrong token): token expired"


def test_protection_group_info_reads_every_page(manager, run_module, monkeypatch):
    for number in range(250):
        manager.vpgs["vpg-%03d" % number] = {"name": "vpg-%03d" % number, "state": "protected"}
    monkeypatch.setattr(api.ApiClient, "page_size", 100)
    result = run_module(protection_group_info, {})
    assert len(result["protection_groups"]) == 250
    assert result["protection_groups"][-1]["name"] == "vpg-249"
    assert len(manager.requests) == 3


def test_command_info_asks_the_manager_for_the_vpg_commands(manager, run_module):
    manager.commands = [{"id": 2, "vpg": "crm", "kind": "failover_test_start", "status": "succeeded"},
                        {"id": 1, "vpg": "erp", "kind": "initial_sync", "status": "succeeded"}]
    result = run_module(command_info, dict(vpg="erp"))
    assert [command["id"] for command in result["commands"]] == [1]
    assert manager.requests[-1][1] == "/api/v1/commands?limit=1000&vpg=erp"
    assert run_module(command_info, dict(kind="failover_test_start"))["commands"][0]["id"] == 2
