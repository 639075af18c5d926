# Copyright: (c) 2025, hvds founding engineers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

from ansible_collections.hvds.replication.plugins.modules import restore
from ansible_collections.hvds.replication.plugins.modules.restore import image_name, restored

ARGS = dict(vpg="erp", disk="erp-db-disk0", tag="v1", datastore="ds1", name="erp-db-at-v1")


def test_image_name():
    assert image_name("/srv/ds1/restores/erp-db-at-v1.raw") == "erp-db-at-v1"
    assert image_name("/srv/ds1/restores/a.b.raw") == "a.b"
    assert image_name("/srv/ds1/erp-db-at-v1.raw") is None
    assert image_name("/srv/ds1/restores/erp-db-at-v1.qcow2") is None
    assert image_name(None) is None


def test_restored_is_the_succeeded_restore_of_the_vpg_with_the_name():
    def command(vpg, status, path, kind="restore_disk"):
        return {"vpg": vpg, "kind": kind, "status": status, "result": {"path": path} if path else None}

    commands = [
        command("erp", "failed", None),
        command("crm", "succeeded", "/srv/ds1/restores/x.raw"),
        command("erp", "succeeded", "/srv/ds1/restores/y.raw"),
        command("erp", "succeeded", "/srv/ds2/restores/x.raw"),
    ]
    assert restored(commands, "erp", "x") is commands[3]
    assert restored(commands, "erp", "y") is commands[2]
    assert restored(commands, "crm", "y") is None
    assert restored(commands, "erp", "z") is None


def add_vpg(manager):
    manager.vpgs["erp"] = {"name": "erp", "state": "protected"}
    manager.checkpoints["erp"] = []


def test_a_disk_is_restored_once_under_a_name(manager, run_module):
    add_vpg(manager)
    checked = run_module(restore, ARGS, check=True, diff=True)
    assert checked["changed"] is True
    assert checked["diff"] == {"before": {}, "after": {"disk": "erp-db-disk0", "tag": "v1", "datastore": "ds1",
                                                       "name": "erp-db-at-v1"}}
    assert manager.commands == []

    made = run_module(restore, ARGS, diff=True)
    assert made["changed"] is True
    assert made["command"]["kind"] == "restore_disk"
    assert made["image"]["path"] == "/srv/ds1/restores/erp-db-at-v1.raw"
    assert ("POST", "/api/v1/vpgs/erp/restore", {"disk": "erp-db-disk0", "tag": "v1", "datastore": "ds1",
                                                 "name": "erp-db-at-v1"}) in manager.requests

    again = run_module(restore, dict(ARGS, tag="v2"), diff=True)  # the name says which restore
    assert again["changed"] is False
    assert again["diff"] == {"before": {}, "after": {}}
    assert again["command"]["id"] == made["command"]["id"]
    assert again["image"] == made["image"]
    assert run_module(restore, ARGS, check=True)["changed"] is False
    assert len(manager.commands) == 1

    args = dict((key, value) for key, value in ARGS.items() if key not in ("name", "tag"))
    other = run_module(restore, dict(args, image="erp-db-at-v2", checkpoint=7))
    assert other["changed"] is True
    assert other["image"]["path"] == "/srv/ds1/restores/erp-db-at-v2.raw"


def test_a_restore_under_way_is_waited_for_before_deciding(manager, run_module):
    add_vpg(manager)
    manager.command_polls = 3
    first = run_module(restore, dict(ARGS, wait=False))
    assert first["changed"] is True
    assert first["command"]["status"] == "running"
    assert first["image"] == {}
    assert run_module(restore, ARGS, check=True)["changed"] is True  # not known yet in check mode
    second = run_module(restore, ARGS)
    assert second["changed"] is False
    assert second["image"]["path"] == "/srv/ds1/restores/erp-db-at-v1.raw"
    assert len(manager.commands) == 1


def test_an_image_the_manager_did_not_make_fails_the_module(manager, run_module):
    add_vpg(manager)
    manager.images.append("/srv/ds1/restores/erp-db-at-v1.raw")
    result = run_module(restore, ARGS)
    assert result["failed"] is True
    assert result["msg"] == ("hvds command 1 (restore_disk) failed: /srv/ds1/restores/erp-db-at-v1.raw exists: "
                             "restore under another name")


def test_checkpoint_and_tag_are_mutually_exclusive_and_the_vpg_must_exist(manager, run_module):
    add_vpg(manager)
    result = run_module(restore, dict(ARGS, checkpoint=3))
    assert result["failed"] is True
    assert "mutually exclusive" in result["msg"]
    missing = run_module(restore, dict(ARGS, vpg="nope"))
    assert missing["msg"] == "hvds API GET /api/v1/vpgs/nope: HTTP 404 not found: no VPG named nope"
    assert manager.changes() == []
