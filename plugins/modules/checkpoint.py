#!/usr/bin/python
# Copyright: (c) 2025, hvds founding engineers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: checkpoint
short_description: Take a tagged checkpoint of a protection group
version_added: 0.1.0
description:
  - Takes a checkpoint across every disk of a VPG on every host (a consistent cut), with a tag and
    a description, for example before an upgrade of the protected VMs.
  - The tag identifies the checkpoint for this module. When the VPG's journal already holds a
    checkpoint with the tag, nothing is done and the module reports no change, so a play can be run
    again. Use a new tag for a new checkpoint.
author:
  - hvds founding engineers (!UNKNOWN)
options:
  vpg:
    description: Name of the protection group.
    type: str
    required: true
  tag:
    description: Tag of the checkpoint.
    type: str
    required: true
  description:
    description:
      - Free text kept with the checkpoint.
      - Only used when the checkpoint is taken; an existing checkpoint keeps its description.
    type: str
extends_documentation_fragment:
  - hvds.replication.connection
seealso:
  - module: hvds.replication.checkpoint_info
  - module: hvds.replication.failover_test
"""

EXAMPLES = r"""
- name: Checkpoint before the upgrade
  hvds.replication.checkpoint:
    url: https://manager-a.example.com:8443
    token: "{{ hvds_admin_token }}"
    vpg: erp
    tag: before-upgrade-2025-01
    description: ERP 7.4 to 7.5
  register: cp

- name: Test a failover to it
  hvds.replication.failover_test:
    vpg: erp
    checkpoint: "{{ cp.checkpoint.id }}"
"""

RETURN = r"""
checkpoint:
  description: The checkpoint with the tag (taken now, or found); in check mode, as it would be.
  returned: always
  type: dict
  contains:
    id:
      description: Identifier of the checkpoint (its time in nanoseconds since the epoch). Not
        returned in check mode when the checkpoint would be taken.
      type: int
      sample: 1735725600000000000
    time:
      description: Time of the checkpoint (RFC 3339, UTC).
      type: str
      sample: "2025-01-01T10:00:00Z"
    tag:
      description: The tag.
      type: str
      sample: before-upgrade-2025-01
    description:
      description: The description.
      type: str
      sample: ERP 7.4 to 7.5
diff:
  description: An empty before and the checkpoint taken after (only with C(--diff)).
  returned: when diff mode is on
  type: dict
  sample: {before: {}, after: {tag: before-upgrade-2025-01, description: ERP 7.4 to 7.5}}
"""

from ansible_collections.hvds.replication.plugins.module_utils.api import HvdsModule


def find_by_tag(checkpoints, tag):
    """The newest checkpoint with the tag (the list is oldest first), or None."""
    for checkpoint in reversed(checkpoints):
        if checkpoint.get("tag") == tag:
            return checkpoint
    return None


def run(module):
    client = module.client
    vpg = module.params["vpg"]
    existing = find_by_tag(client.get_all("vpgs", vpg, "checkpoints"), module.params["tag"])
    if existing is not None:
        return dict(changed=False, checkpoint=existing, diff={"before": {}, "after": {}})
    body = {"tag": module.params["tag"]}
    if module.params["description"] is not None:
        body["description"] = module.params["description"]
    taken = dict(body) if module.check_mode else client.post(("vpgs", vpg, "checkpoints"), body)
    return dict(changed=True, checkpoint=taken, diff={"before": {}, "after": body})


def main():
    module = HvdsModule(
        argument_spec=dict(
            vpg=dict(type="str", required=True),
            tag=dict(type="str", required=True),
            description=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    module.run(run)


if __name__ == "__main__":
    main()
