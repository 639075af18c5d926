#!/usr/bin/python
# Copyright: (c) 2025, hvds founding engineers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: site_info
short_description: Read a site manager's site, health and paired peer sites
version_added: 0.1.0
description:
  - Returns the site's name, version and health (hosts up and down, alerts) and the peer sites it
    is paired with.
  - Optionally also each peer's topology (its hosts and their datastores), as a source site needs
    it to choose replication targets.
author:
  - hvds founding engineers (!UNKNOWN)
options:
  peer_topology:
    description: Also read each peer's hosts and datastores, through this site's manager.
    type: bool
    default: false
extends_documentation_fragment:
  # First: where two fragments set the same attribute, the first one wins.
  - hvds.replication.connection.info_module
  - hvds.replication.connection
seealso:
  - module: hvds.replication.site_pair
"""

EXAMPLES = r"""
- name: Read the site
  hvds.replication.site_info:
    url: https://manager-a.example.com:8443
    token: "{{ hvds_viewer_token }}"
  register: site

- name: Stop when a host is down
  ansible.builtin.assert:
    that: site.site.health.hosts_down == 0
    fail_msg: "{{ site.site.health.alerts | map(attribute='message') | join('; ') }}"
"""

RETURN = r"""
site:
  description: The site as its manager reports it.
  returned: always
  type: dict
  contains:
    name:
      description: Name of the site.
      type: str
      sample: site-a
    version:
      description: Version of hvds-manager.
      type: str
      sample: 0.1.0
    health:
      description: C(status) (V(ok) or V(degraded)), C(hosts_up), C(hosts_down) and C(alerts).
      type: dict
      sample: {status: ok, hosts_up: 2, hosts_down: 0, alerts: []}
peers:
  description: The paired peer sites.
  returned: always
  type: list
  elements: dict
  sample:
    - name: site-b
      url: https://manager-b.example.com:8443
      paired_at: "2025-01-01T10:00:00Z"
      topology: {site: site-b, hosts: [{name: host-b1, state: up, datastores: [{name: ds1, free_bytes: 1099511627776}]}]}
"""

from ansible_collections.hvds.replication.plugins.module_utils.api import HvdsModule


def run(module):
    client = module.client
    peers = client.get_all("peers")
    if module.params["peer_topology"]:
        for peer in peers:
            peer["topology"] = client.get("peers", peer["name"], "topology")
    return dict(changed=False, site=client.get("site"), peers=peers)


def main():
    module = HvdsModule(
        argument_spec=dict(peer_topology=dict(type="bool", default=False)),
        supports_check_mode=True,
    )
    module.run(run)


if __name__ == "__main__":
    main()
