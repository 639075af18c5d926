# Copyright: (c) 2025, hvds founding engineers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The inventory checks of the filter inventory_problems, case by case (the broken inventory of
tests/inventories is checked end to end by scripts/ansible-check.sh)."""

from __future__ import annotations

import copy

import pytest

from ansible_collections.hvds.replication.plugins.filter.inventory_problems import (
    FilterModule,
    inventory_problems,
)

GROUPS = {"hvds_managers": ["mgr-a", "mgr-b"], "hvds_hypervisors": ["hv-a1", "hv-b1"]}
VPG = {
    "name": "erp",
    "vms": [{"name": "vm1", "host": "hv-a1", "disks": [{"export": "vm1-disk0"}]}],
    "targets": [{"site": "site-b", "host": "hv-b1", "datastore": "ds1"}],
}
HOSTVARS = {
    "mgr-a": {"hvds_site": "site-a", "hvds_address": "10.0.0.10",
              "hvds_replication_link_peers": ["site-b"], "hvds_protection_groups": [VPG]},
    "mgr-b": {"hvds_site": "site-b", "hvds_address": "mgr-b.example.com"},
    "hv-a1": {"hvds_site": "site-a", "hvds_address": "2001:db8::11",
              "hvds_agent_exports": [{"name": "vm1-disk0", "path": "/srv/vm1.raw"}]},
    "hv-b1": {"hvds_site": "site-b", "hvds_address": "10.0.1.21",
              "hvds_agent_datastores": [{"name": "ds1", "path": "/srv/ds1"}]},
}  # fmt: skip


def problems_after(change):
    hostvars = copy.deepcopy(HOSTVARS)
    change(hostvars)
    return inventory_problems(hostvars, GROUPS)


def test_a_consistent_inventory_has_no_problem():
    assert inventory_problems(HOSTVARS, GROUPS) == []
    assert FilterModule().filters()["inventory_problems"] is inventory_problems


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda h: h["hv-a1"].update(hvds_address="10.0.0.256"),
         "hv-a1: hvds_address 10.0.0.256 is neither an IP address nor a DNS name"),
        (lambda h: h["hv-a1"].update(hvds_address="bad_name.example.com"),
         "hv-a1: hvds_address bad_name.example.com is neither an IP address nor a DNS name"),
        (lambda h: h["hv-b1"].update(hvds_address="10.0.0.10"),
         "hvds_address 10.0.0.10 is given to more than one host"),
        (lambda h: h["hv-b1"].pop("hvds_site"), "hv-b1: hvds_site is not set"),
        (lambda h: h["mgr-b"].update(hvds_site="Site B"),
         "mgr-b: hvds_site Site B is not a name (a-z, 0-9, -; 63 at most)"),
        (lambda h: h["mgr-a"].update(hvds_replication_link_peers=[]),
         "mgr-a: VPG erp: target site site-b is not paired with site-a"
         " (hvds_replication_link_peers of either manager)"),
        (lambda h: h["hv-a1"].update(hvds_agent_exports=[]),
         "mgr-a: VPG erp, VM vm1: disk vm1-disk0 is not an export of hv-a1 (hvds_agent_exports: )"),
        (lambda h: h["hv-b1"].update(hvds_agent_datastores=[{"name": "other", "path": "/x"}]),
         "mgr-a: VPG erp: target datastore ds1 is not in hvds_agent_datastores of hv-b1"),
    ],
)  # fmt: skip
def test_each_mistake_is_named(change, problem):
    # The first problem named is the mistake itself (a site missing also leaves its hosts unmanaged).
    assert problems_after(change)[0] == problem


def test_a_vpg_being_removed_needs_no_vms():
    def remove(hostvars):
        hostvars["mgr-a"]["hvds_protection_groups"] = [{"name": "erp", "state": "absent"}]

    assert problems_after(remove) == []


def test_no_manager_at_all_is_said_first():
    assert inventory_problems({}, {"hvds_managers": [], "hvds_hypervisors": []}) == [
        "the group hvds_managers is empty: one site manager per site is needed"
    ]
