# Copyright: (c) 2025, hvds founding engineers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import pytest

from ansible_collections.hvds.replication.plugins.module_utils.api import HvdsApiError
from ansible_collections.hvds.replication.plugins.modules import protection_group
from ansible_collections.hvds.replication.plugins.modules.protection_group import (
    desired_settings,
    plan_absent,
    plan_present,
    writable,
)

VMS = [{"name": "erp-db", "host": "host-a1", "disks": [{"export": "erp-db-disk0"}]}]
TARGETS = [{"site": "site-b", "host": "host-b1", "datastore": "ds1"}]
READ = {
    "name": "erp", "vms": VMS, "targets": TARGETS, "rpo_alert_seconds": 300, "journal_history_hours": 1.0,
    "journal_size_limit_bytes": 161061273600, "checkpoint_interval_seconds": 5.0, "priority": "medium",
    "compression": True, "bandwidth_limit_bytes": 0, "state": "protected", "rpo_seconds": 3.5,
    "created_at": "2025-01-01T10:00:00Z", "updated_at": "2025-01-01T10:00:00Z",
}


def params(**given):
    """Module params as AnsibleModule hands them: every setting, None where not given."""
    result = dict((key, None) for key in protection_group.SETTINGS)
    result.update(given)
    return result


# --- compare logic ----------------------------------------------------------------------------


def test_create_sends_only_what_is_given():
    action, body, diff = plan_present("erp", None, desired_settings(params(vms=VMS, targets=TARGETS, priority="high")))
    assert action == "create"
    assert body == {"name": "erp", "vms": VMS, "targets": TARGETS, "priority": "high"}
    assert diff == {"before": {}, "after": body}


def test_create_without_vms_or_targets_is_refused_before_any_request():
    with pytest.raises(HvdsApiError) as caught:
        plan_present("erp", None, desired_settings(params(priority="high")))
    assert caught.value.msg == "protection group erp does not exist; to create it, give vms and targets"


def test_same_settings_plan_nothing():
    action, body, diff = plan_present("erp", READ, desired_settings(params(vms=VMS, targets=TARGETS, rpo_alert_seconds=300)))
    assert (action, body, diff) == (None, None, {"before": {}, "after": {}})


def test_an_int_given_for_a_float_setting_is_no_change():
    assert plan_present("erp", READ, desired_settings(params(journal_history_hours=1)))[0] is None


def test_update_sends_the_whole_writable_vpg_and_diffs_only_what_changes():
    action, body, diff = plan_present("erp", READ, desired_settings(params(priority="high", compression=True)))
    assert action == "update"
    assert diff == {"before": {"priority": "medium"}, "after": {"priority": "high"}}
    expected = writable(READ)
    expected["priority"] = "high"
    assert body == expected
    assert "state" not in body and "rpo_seconds" not in body and "created_at" not in body


def test_a_changed_vm_list_is_replaced_whole():
    vms = VMS + [{"name": "erp-app", "host": "host-a2", "disks": [{"export": "erp-app-disk0"}]}]
    action, body, diff = plan_present("erp", READ, desired_settings(params(vms=vms)))
    assert action == "update"
    assert body["vms"] == vms
    assert diff == {"before": {"vms": VMS}, "after": {"vms": vms}}


def test_writable_cuts_nested_keys_the_api_would_refuse():
    read = dict(READ, vms=[{"name": "erp-db", "host": "host-a1", "disks": [{"export": "d0", "size": 1}], "os": "linux"}],
                targets=[{"site": "site-b", "host": "host-b1", "datastore": "ds1", "lag": 2}])
    body = writable(read)
    assert body["vms"] == [{"name": "erp-db", "host": "host-a1", "disks": [{"export": "d0"}]}]
    assert body["targets"] == TARGETS
    assert set(body) == {"name"} | set(protection_group.SETTINGS)


BOOT = {"memory_mb": 1024, "cpus": 2, "kernel": "", "initrd": "", "append": "", "order": 0, "delay_seconds": 0.0}


def test_a_vm_listed_without_boot_settings_keeps_them():
    read = dict(READ, vms=[dict(VMS[0], boot=BOOT)])
    assert plan_present("erp", read, desired_settings(params(vms=VMS)))[0] is None
    vms = VMS + [{"name": "erp-app", "host": "host-a2", "disks": [{"export": "erp-app-disk0"}]}]
    action, body, diff = plan_present("erp", read, desired_settings(params(vms=vms)))
    assert action == "update"
    assert body["vms"] == [dict(VMS[0], boot=BOOT), vms[1]]
    assert diff["after"]["vms"] == body["vms"]


def test_boot_settings_given_change_only_those():
    read = dict(READ, vms=[dict(VMS[0], boot=BOOT)])
    same = [dict(VMS[0], boot={"memory_mb": 1024})]
    assert plan_present("erp", read, desired_settings(params(vms=same)))[0] is None
    more = [dict(VMS[0], boot={"memory_mb": 4096, "cpus": None})]
    action, body, diff = plan_present("erp", read, desired_settings(params(vms=more)))
    assert action == "update"
    assert body["vms"][0]["boot"] == dict(BOOT, memory_mb=4096)
    assert diff["before"]["vms"][0]["boot"]["memory_mb"] == 1024


def test_a_target_keeps_the_in_place_mirrors_of_reverse_protection():
    in_place = {"erp-db-disk0": "/var/lib/hvds/images/erp-db-disk0.raw"}
    read = dict(READ, targets=[dict(TARGETS[0], in_place=in_place)])
    assert plan_present("erp", read, desired_settings(params(targets=TARGETS)))[0] is None
    action, body, _diff = plan_present("erp", read, desired_settings(params(priority="low")))
    assert action == "update"
    assert body["targets"] == [dict(TARGETS[0], in_place=in_place)]


def test_absent_plans():
    assert plan_absent(None) == (None, {"before": {}, "after": {}})
    action, diff = plan_absent(READ)
    assert action == "delete"
    assert diff == {"before": writable(READ), "after": {}}


# --- the module against a site manager --------------------------------------------------------


def test_create_then_unchanged_then_update_then_delete(manager, run_module):
    args = dict(name="erp", vms=VMS, targets=TARGETS, priority="high")

    checked = run_module(protection_group, args, check=True, diff=True)
    assert checked["changed"] is True
    assert checked["diff"]["after"]["priority"] == "high"
    assert manager.vpgs == {} and manager.changes() == []

    created = run_module(protection_group, args, diff=True)
    assert created["changed"] is True
    assert created["protection_group"]["state"] == "protected"
    assert manager.vpgs["erp"]["priority"] == "high"
    assert manager.vpgs["erp"]["rpo_alert_seconds"] == 300  # the manager's default

    again = run_module(protection_group, args, diff=True)
    assert again["changed"] is False
    assert again["diff"] == {"before": {}, "after": {}}
    assert manager.changes() == [("POST", "/api/v1/vpgs")]

    update = dict(name="erp", journal_history_hours=24, bandwidth_limit_bytes=10 << 20)
    checked = run_module(protection_group, update, check=True, diff=True)
    assert checked["changed"] is True
    assert manager.vpgs["erp"]["journal_history_hours"] == 1.0

    updated = run_module(protection_group, update, diff=True)
    assert updated["diff"] == {"before": {"journal_history_hours": 1.0, "bandwidth_limit_bytes": 0},
                               "after": {"journal_history_hours": 24.0, "bandwidth_limit_bytes": 10 << 20}}
    assert manager.vpgs["erp"]["journal_history_hours"] == 24.0
    assert manager.vpgs["erp"]["priority"] == "high"  # not given: kept
    assert manager.vpgs["erp"]["vms"] == VMS
    assert run_module(protection_group, update)["changed"] is False

    removed = run_module(protection_group, dict(name="erp", state="absent"), diff=True)
    assert removed["changed"] is True
    assert removed["diff"]["before"]["name"] == "erp"
    assert manager.vpgs == {}
    assert run_module(protection_group, dict(name="erp", state="absent"))["changed"] is False


def test_no_diff_key_without_diff_mode(manager, run_module):
    result = run_module(protection_group, dict(name="erp", vms=VMS, targets=TARGETS))
    assert result["changed"] is True
    assert "diff" not in result


def test_check_mode_delete_changes_nothing(manager, run_module):
    run_module(protection_group, dict(name="erp", vms=VMS, targets=TARGETS))
    result = run_module(protection_group, dict(name="erp", state="absent"), check=True)
    assert result["changed"] is True
    assert "erp" in manager.vpgs


def test_an_api_error_fails_the_module_with_its_detail(manager, run_module):
    manager.replies = [(404, {"detail": "no VPG named erp"}, {}),
                       (400, {"detail": "site-c is not a peer of this site"}, {})]
    result = run_module(protection_group, dict(name="erp", vms=VMS, targets=[dict(TARGETS[0], site="site-c")]))
    assert result["failed"] is True
    assert result["msg"] == "hvds API POST /api/v1/vpgs: HTTP 400 invalid request: site-c is not a peer of this site"
    assert result["status"] == 400
    assert result["detail"] == "site-c is not a peer of this site"


def test_the_token_never_appears_in_the_result(manager, run_module):
    result = run_module(protection_group, dict(name="erp", vms=VMS, targets=TARGETS))
    assert "admin-token-0123456789" not in repr(result)
    assert result["invocation"]["module_args"]["token"] == "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"


def test_url_and_token_from_the_environment(manager, run_module, monkeypatch):
    monkeypatch.setenv("HVDS_URL", manager.url)
    monkeypatch.setenv("HVDS_TOKEN", "admin-token-0123456789")
    result = run_module(protection_group, dict(name="erp", vms=VMS, targets=TARGETS), connect=False)
    assert result["changed"] is True
    assert "erp" in manager.vpgs


def test_without_url_or_token_the_module_says_which_is_missing(manager, run_module, monkeypatch):
    monkeypatch.delenv("HVDS_URL", raising=False)
    monkeypatch.delenv("HVDS_TOKEN", raising=False)
    result = run_module(protection_group, dict(name="erp"), connect=False)
    assert result["failed"] is True
    assert result["msg"] == "missing required arguments: token, url"
    assert manager.requests == []
