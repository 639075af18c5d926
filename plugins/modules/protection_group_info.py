#!/usr/bin/python
# Copyright: (c) 2025, hvds founding engineers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: protection_group_info
short_description: Read virtual protection groups (VPGs)
version_added: 0.1.0
description:
  - Returns the VPGs of the site (one, or all) with their settings, state and current RPO.
author:
  - hvds founding engineers (!UNKNOWN)
options:
  name:
    description: Only this VPG. The result is an empty list when there is no such VPG.
    type: str
extends_documentation_fragment:
  # First: where two fragments set the same attribute, the first one wins.
  - hvds.replication.connection.info_module
  - hvds.replication.connection
seealso:
  - module: hvds.replication.protection_group
"""

EXAMPLES = r"""
- name: Read one VPG
  hvds.replication.protection_group_info:
    url: https://manager-a.example.com:8443
    token: "{{ hvds_viewer_token }}"
    name: erp
  register: erp

- name: Fail when its recovery point is older than its alert
  ansible.builtin.assert:
    that: erp.protection_groups[0].rpo_seconds < erp.protection_groups[0].rpo_alert_seconds
"""

RETURN = r"""
protection_groups:
  description:
    - The VPGs, with the settings M(hvds.replication.protection_group) takes and C(state) (V(initializing),
      V(syncing), V(protected), V(testing) or V(error)), C(rpo_seconds) (age of the newest checkpoint
      every target holds, null before the first), C(created_at) and C(updated_at).
  returned: always
  type: list
  elements: dict
  sample:
    - {name: erp, vms: [{name: erp-db, host: host-a1, disks: [{export: erp-db-disk0}]}],
       targets: [{site: site-b, host: host-b1, datastore: ds1}], rpo_alert_seconds: 300,
       journal_history_hours: 1.0, journal_size_limit_bytes: 161061273600, checkpoint_interval_seconds: 5.0,
       priority: medium, compression: true, bandwidth_limit_bytes: 0, state: protected, rpo_seconds: 4.2,
       created_at: "2025-01-01T10:00:00Z", updated_at: "2025-01-01T10:00:00Z"}
"""

from ansible_collections.hvds.replication.plugins.module_utils.api import HvdsModule, read_items


def run(module):
    return dict(changed=False, protection_groups=read_items(module.client, "vpgs", module.params["name"]))


def main():
    module = HvdsModule(argument_spec=dict(name=dict(type="str")), supports_check_mode=True)
    module.run(run)


if __name__ == "__main__":
    main()
