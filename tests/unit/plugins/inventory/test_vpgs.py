# Copyright: (c) 2025, hvds founding engineers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import pytest

from ansible.errors import AnsibleError
from ansible.inventory.data import InventoryData
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import inventory_loader

from ansible_collections.hvds.replication.plugins.inventory.vpgs import InventoryModule, group_name, inventory_of

TOKEN = "admin-token-0123456789"  # what the `manager` fixture of conftest.py accepts


def vpg(name, vms, state="protected", rpo=2.5, targets=("site-b",)):
    return {"name": name, "state": state, "rpo_seconds": rpo, "rpo_alert_seconds": 300, "reverse_site": None,
            "vms": [{"name": vm, "host": host, "disks": []} for vm, host in vms],
            "targets": [{"site": site, "host": "b1", "datastore": "ds1"} for site in targets]}


def test_group_names_keep_only_safe_characters():
    assert group_name("vpg_", "erp") == "vpg_erp"
    assert group_name("vpg_", "erp-db.v2") == "vpg_erp_db_v2"
    assert group_name("", "crm") == "crm"


def test_a_vm_in_two_vpgs_is_in_both_groups_with_each_vpg_in_its_vars():
    groups, hosts = inventory_of("site-a", [
        vpg("erp", [("erp-db", "a1"), ("erp-app", "a2")]),
        vpg("backup-set", [("erp-db", "a1")], state="syncing", rpo=None, targets=("site-b", "site-c")),
    ], "vpg_")
    assert sorted(groups) == ["vpg_backup_set", "vpg_erp"]
    assert groups["vpg_erp"] == {
        "vars": {"hvds_vpg": "erp", "hvds_vpg_state": "protected", "hvds_vpg_rpo_seconds": 2.5, "hvds_site": "site-a"},
        "hosts": ["erp-db", "erp-app"]}
    assert groups["vpg_backup_set"]["hosts"] == ["erp-db"]
    assert hosts["erp-app"] == {"hvds_site": "site-a", "hvds_hypervisor": "a2", "hvds_vpgs": {
        "erp": {"state": "protected", "rpo_seconds": 2.5, "rpo_alert_seconds": 300, "reverse_site": None,
                "targets": ["site-b"]}}}
    assert sorted(hosts["erp-db"]["hvds_vpgs"]) == ["backup-set", "erp"]
    assert hosts["erp-db"]["hvds_vpgs"]["backup-set"]["targets"] == ["site-b", "site-c"]


def load_plugin():
    """The plugin as Ansible loads it by its name, its options' definitions (with the constructed
    fragment's) known to the configuration manager."""
    plugin = inventory_loader.get("hvds.replication.vpgs")
    assert plugin is not None
    return plugin


def parse(manager, tmp_path, text, name="site-a.hvds.yml"):
    path = tmp_path / name
    path.write_text(text)
    inventory = InventoryData()
    plugin = load_plugin()
    assert plugin.verify_file(str(path))
    plugin.parse(inventory, DataLoader(), str(path), cache=False)
    return inventory


def config(manager, extra=""):
    return "plugin: hvds.replication.vpgs\nurl: %s\ntoken: %s\n%s" % (manager.url, TOKEN, extra)


def test_the_inventory_of_a_site_manager(manager, tmp_path):
    manager.page_size = 1  # the plugin reads every page
    manager.vpgs["erp"] = vpg("erp", [("erp-db", "host-a1"), ("erp-app", "host-a1")])
    manager.vpgs["crm"] = vpg("crm", [("crm-1", "host-a2")], state="failed_over", rpo=None)
    extra = ("keyed_groups:\n  - key: hvds_hypervisor\n    prefix: hypervisor\n"
             "compose:\n  erp_state: hvds_vpgs.erp.state | default('none')\n")
    inventory = parse(manager, tmp_path, config(manager, extra))
    assert sorted(host.name for host in inventory.groups["vpg_erp"].get_hosts()) == ["erp-app", "erp-db"]
    assert [host.name for host in inventory.groups["vpg_crm"].get_hosts()] == ["crm-1"]
    assert inventory.groups["vpg_crm"].get_vars() == {
        "hvds_vpg": "crm", "hvds_vpg_state": "failed_over", "hvds_vpg_rpo_seconds": None, "hvds_site": "site-a"}
    db = inventory.get_host("erp-db").get_vars()
    assert db["hvds_site"] == "site-a"
    assert db["hvds_hypervisor"] == "host-a1"
    assert db["hvds_vpgs"]["erp"]["rpo_seconds"] == 2.5
    assert db["erp_state"] == "protected"
    assert inventory.get_host("crm-1").get_vars()["erp_state"] == "none"
    assert sorted(host.name for host in inventory.groups["hypervisor_host_a1"].get_hosts()) == ["erp-app", "erp-db"]


def test_the_file_name_says_whose_file_it_is(manager, tmp_path):
    plugin = InventoryModule()
    for name in ("hvds.yml", "site-a.hvds.yaml", "x_hvds_vpgs.yml"):
        (tmp_path / name).write_text("plugin: hvds.replication.vpgs\n")
        assert plugin.verify_file(str(tmp_path / name))
    (tmp_path / "inventory.yml").write_text("plugin: hvds.replication.vpgs\n")
    assert not plugin.verify_file(str(tmp_path / "inventory.yml"))


def test_an_api_error_is_an_ansible_error(manager, tmp_path):
    with pytest.raises(AnsibleError) as caught:
        parse(manager, tmp_path, config(manager).replace(TOKEN, "wrong"))
    assert "hvds.replication.vpgs: hvds API GET /api/v1/site: HTTP 401" in str(caught.value)
