# Copyright: (c) 2025, hvds founding engineers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

from ansible_collections.hvds.replication.plugins.modules import checkpoint, checkpoint_info
from ansible_collections.hvds.replication.plugins.modules.checkpoint import find_by_tag


def test_find_by_tag_takes_the_newest_with_the_tag():
    checkpoints = [{"id": 1, "tag": "a"}, {"id": 2, "tag": "b"}, {"id": 3, "tag": "a"}]
    assert find_by_tag(checkpoints, "a")["id"] == 3
    assert find_by_tag(checkpoints, "b")["id"] == 2
    assert find_by_tag(checkpoints, "c") is None
    assert find_by_tag([], "a") is None


def add_vpg(manager):
    manager.vpgs["erp"] = {"name": "erp", "state": "protected"}
    manager.checkpoints["erp"] = [{"id": 7, "time": "2025-01-01T09:00:00Z", "tag": "", "description": ""}]


def test_a_tagged_checkpoint_is_taken_once(manager, run_module):
    add_vpg(manager)
    args = dict(vpg="erp", tag="before-upgrade", description="ERP 7.4 to 7.5")

    checked = run_module(checkpoint, args, check=True, diff=True)
    assert checked["changed"] is True
    assert checked["checkpoint"] == {"tag": "before-upgrade", "description": "ERP 7.4 to 7.5"}
    assert len(manager.checkpoints["erp"]) == 1

    taken = run_module(checkpoint, args, diff=True)
    assert taken["changed"] is True
    assert taken["diff"] == {"before": {}, "after": {"tag": "before-upgrade", "description": "ERP 7.4 to 7.5"}}
    assert taken["checkpoint"]["id"] == manager.checkpoints["erp"][-1]["id"]

    again = run_module(checkpoint, dict(args, description="another text"), diff=True)
    assert again["changed"] is False
    assert again["checkpoint"] == taken["checkpoint"]
    assert len(manager.checkpoints["erp"]) == 2
    assert run_module(checkpoint, args, check=True)["changed"] is False


def test_a_checkpoint_of_a_missing_vpg_fails(manager, run_module):
    result = run_module(checkpoint, dict(vpg="nope", tag="t"))
    assert result["failed"] is True
    assert result["msg"] == "hvds API GET /api/v1/vpgs/nope/checkpoints?limit=1000: HTTP 404 not found: no VPG named nope"


def test_checkpoint_info_filters_by_tag(manager, run_module):
    add_vpg(manager)
    run_module(checkpoint, dict(vpg="erp", tag="t1"))
    run_module(checkpoint, dict(vpg="erp", tag="t2"))
    everything = run_module(checkpoint_info, dict(vpg="erp"), check=True)
    assert everything["changed"] is False
    assert [cp["tag"] for cp in everything["checkpoints"]] == ["", "t1", "t2"]
    assert [cp["tag"] for cp in run_module(checkpoint_info, dict(vpg="erp", tag="t2"))["checkpoints"]] == ["t2"]
