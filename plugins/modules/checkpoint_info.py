#!/usr/bin/python
# Copyright: (c) 2025, hvds founding engineers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: checkpoint_info
short_description: Read the checkpoints a protection group can be recovered to
version_added: 0.1.0
description:
  - Returns the checkpoints in the journal of a VPG, oldest first.
author:
  - hvds founding engineers (!UNKNOWN)
options:
  vpg:
    description: Name of the protection group.
    type: str
    required: true
  tag:
    description: Only the checkpoints with this tag.
    type: str
extends_documentation_fragment:
  # First: where two fragments set the same attribute, the first one wins.
  - hvds.replication.connection.info_module
  - hvds.replication.connection
seealso:
  - module: hvds.replication.checkpoint
"""

EXAMPLES = r"""
- name: Read the checkpoints of a VPG
  hvds.replication.checkpoint_info:
    url: https://manager-a.example.com:8443
    token: "{{ hvds_viewer_token }}"
    vpg: erp
  register: cps

- name: The oldest point the VPG can be recovered to
  ansible.builtin.debug:
    msg: "{{ cps.checkpoints | first }}"
"""

RETURN = r"""
checkpoints:
  description: The checkpoints, oldest first.
  returned: always
  type: list
  elements: dict
  sample:
    - id: 1735725600000000000
      time: "2025-01-01T10:00:00Z"
      tag: before-upgrade-2025-01
      description: ERP 7.4 to 7.5
"""

from ansible_collections.hvds.replication.plugins.module_utils.api import HvdsModule


def run(module):
    checkpoints = module.client.get_all("vpgs", module.params["vpg"], "checkpoints")
    tag = module.params["tag"]
    if tag is not None:
        checkpoints = [checkpoint for checkpoint in checkpoints if checkpoint.get("tag") == tag]
    return dict(changed=False, checkpoints=checkpoints)


def main():
    module = HvdsModule(
        argument_spec=dict(vpg=dict(type="str", required=True), tag=dict(type="str")),
        supports_check_mode=True,
    )
    module.run(run)


if __name__ == "__main__":
    main()
