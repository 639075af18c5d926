#!/usr/bin/python
# Copyright: (c) 2025, hvds founding engineers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: host_info
short_description: Read the hypervisor hosts a site manager tracks
version_added: 0.1.0
description:
  - Returns the hosts of the site (one, or all), each with its state, the exports of its tap,
    its datastores and its VDSA's replication state per protection group.
author:
  - hvds founding engineers (!UNKNOWN)
options:
  name:
    description: Only this host. The result is an empty list when there is no such host.
    type: str
extends_documentation_fragment:
  # First: where two fragments set the same attribute, the first one wins.
  - hvds.replication.connection.info_module
  - hvds.replication.connection
"""

EXAMPLES = r"""
- name: Read every host of the site
  hvds.replication.host_info:
    url: https://manager-a.example.com:8443
    token: "{{ hvds_viewer_token }}"
  register: hosts

- name: The hosts that are down
  ansible.builtin.debug:
    msg: "{{ hosts.hosts | selectattr('state', 'equalto', 'down') | map(attribute='name') }}"
"""

RETURN = r"""
hosts:
  description: The hosts.
  returned: always
  type: list
  elements: dict
  sample:
    - name: host-a1
      state: up
      version: 0.1.0
      last_seen: "2025-01-01T10:00:00Z"
      exports: [{name: erp-db-disk0, size: 10737418240}]
      datastores: [{name: ds1, path: /var/lib/hvds/ds1, total_bytes: 2199023255552, free_bytes: 1099511627776}]
      vpgs: {}
"""

from ansible_collections.hvds.replication.plugins.module_utils.api import HvdsModule, read_items


def run(module):
    return dict(changed=False, hosts=read_items(module.client, "hosts", module.params["name"]))


def main():
    module = HvdsModule(argument_spec=dict(name=dict(type="str")), supports_check_mode=True)
    module.run(run)


if __name__ == "__main__":
    main()
