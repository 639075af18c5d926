#!/usr/bin/python
# Copyright: (c) 2025, hvds founding engineers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: restore
short_description: Restore a protected disk as it was at a checkpoint into an image
version_added: 0.1.0
description:
  - Copies one disk of a VPG, as it was at a checkpoint, to a raw image
    C(<datastore>/restores/<name>.raw) at the VPG's recovery host. Protection goes on meanwhile;
    the VMs and their disks are not touched.
  - The image's O(name) identifies the restore. When a restore of the VPG into an image of that
    name has succeeded already (a C(restore_disk) command the site manager lists), nothing is
    done and the module reports no change, whatever disk or checkpoint it was of. Use a new name
    for a new image.
  - An image of that name that the manager did not make for this VPG (the recovery host refuses
    to overwrite any image) fails the module, as does a restore that fails.
  - A restore of the VPG still under way is waited for first, since its image's name is only
    known when it ends (not in check mode).
  - The restore is a tracked command on the site manager; by default the module waits for it and
    fails when it failed.
author:
  - hvds founding engineers (!UNKNOWN)
options:
  vpg:
    description: Name of the protection group.
    type: str
    required: true
  disk:
    description: The disk to restore, by its export name at the source host (as in the VPG's C(vms[].disks[].export)).
    type: str
    required: true
  checkpoint:
    description: Id of the checkpoint (see M(hvds.replication.checkpoint_info)). Default the latest.
    type: int
  tag:
    description: Restore the disk as it was at the newest checkpoint with this tag.
    type: str
  datastore:
    description: The datastore of the recovery host that is to hold the image.
    type: str
    required: true
  name:
    description:
      - Name of the image, C([A-Za-z0-9][A-Za-z0-9._-]{0,127}); the file is C(restores/<name>.raw)
        in the datastore.
    type: str
    required: true
    aliases: [image]
  wait:
    description: Wait for the restore to end, and fail when it did not succeed.
    type: bool
    default: true
  wait_timeout:
    description: Seconds to wait with O(wait) before the module fails (the restore goes on).
    type: int
    default: 1800
extends_documentation_fragment:
  - hvds.replication.connection
seealso:
  - module: hvds.replication.checkpoint
  - module: hvds.replication.checkpoint_info
"""

EXAMPLES = r"""
- name: Restore the ERP database disk as it was before the upgrade
  hvds.replication.restore:
    url: https://manager-a.example.com:8443
    token: "{{ hvds_admin_token }}"
    vpg: erp
    disk: erp-db-disk0
    tag: before-upgrade-2025-01
    datastore: ds1
    name: erp-db-before-upgrade
  register: restored

- name: Show where the image is
  ansible.builtin.debug:
    msg: "{{ restored.image.path }} ({{ restored.image.size }} bytes)"
"""

RETURN = r"""
command:
  description:
    - The tracked command V(restore_disk) that made the image (as it ended with O(wait)); the one
      that made it before when nothing was to do; empty in check mode.
    - See M(hvds.replication.command_info) for its keys.
  returned: always
  type: dict
  sample:
    id: 17
    kind: restore_disk
    vpg: erp
    status: succeeded
    progress: 100
    started_at: "2025-01-01T10:00:00Z"
    ended_at: "2025-01-01T10:01:30Z"
    result: {path: /srv/ds1/restores/erp-db-before-upgrade.raw, size: 21474836480, checkpoint: 1735725600000000000}
    error: null
image:
  description: The restored image, as the recovery host reports it (empty in check mode or without O(wait)).
  returned: always
  type: dict
  contains:
    path:
      description: The image's path at the recovery host.
      type: str
      sample: /srv/ds1/restores/erp-db-before-upgrade.raw
    size:
      description: Its size in bytes (the disk's size; zero blocks are left as holes).
      type: int
      sample: 21474836480
    checkpoint:
      description: The recovery host journal's id of the checkpoint restored.
      type: int
      sample: 1735725600000000000
diff:
  description: The restore asked (only with C(--diff)); empty when nothing changes.
  returned: when diff mode is on
  type: dict
  sample: {before: {}, after: {disk: erp-db-disk0, tag: before-upgrade-2025-01, datastore: ds1, name: erp-db-before-upgrade}}
"""

from ansible_collections.hvds.replication.plugins.module_utils.api import (
    HvdsModule,
    finish_command,
    pending_command,
)

KIND = "restore_disk"


def image_name(path):
    """`name` of an image `.../restores/<name>.raw`, or None for another path."""
    parts = (path or "").replace("\\", "/").split("/")
    if len(parts) < 2 or parts[-2] != "restores" or not parts[-1].endswith(".raw"):
        return None
    return parts[-1][:-len(".raw")]


def restored(commands, vpg, name):
    """The newest succeeded restore of the VPG into an image named `name`, or None."""
    for command in commands:
        if (command.get("vpg") == vpg and command.get("kind") == KIND and command.get("status") == "succeeded"
                and image_name((command.get("result") or {}).get("path")) == name):
            return command
    return None


def run(module):
    client = module.client
    params = module.params
    vpg, name = params["vpg"], params["name"]
    client.get("vpgs", vpg)  # a clear error for a VPG that does not exist
    commands = client.get_all("commands", vpg=vpg)
    if not module.check_mode:
        waited = False
        while True:  # each restore under way could be this one
            under_way = pending_command(commands, vpg, KIND)
            if under_way is None:
                break
            client.wait_command(under_way, params["wait_timeout"])
            waited = True
            commands = [c for c in commands if c.get("id") != under_way["id"]]
        if waited:
            commands = client.get_all("commands", vpg=vpg)
    done = restored(commands, vpg, name)
    if done is not None:
        return dict(changed=False, command=done, image=done.get("result") or {}, diff={"before": {}, "after": {}})
    body = dict((key, params[key]) for key in ("disk", "checkpoint", "tag", "datastore", "name")
                if params[key] is not None)
    diff = {"before": {}, "after": body}
    if module.check_mode:
        return dict(changed=True, command={}, image={}, diff=diff)
    command = client.post(("vpgs", vpg, "restore"), body)
    command = finish_command(client, command, params["wait"], params["wait_timeout"])
    image = (command.get("result") or {}) if command.get("status") == "succeeded" else {}
    return dict(changed=True, command=command, image=image, diff=diff)


def main():
    module = HvdsModule(
        argument_spec=dict(
            vpg=dict(type="str", required=True),
            disk=dict(type="str", required=True),
            checkpoint=dict(type="int"),
            tag=dict(type="str"),
            datastore=dict(type="str", required=True),
            name=dict(type="str", required=True, aliases=["image"]),
            wait=dict(type="bool", default=True),
            wait_timeout=dict(type="int", default=1800),
        ),
        mutually_exclusive=[("checkpoint", "tag")],
        supports_check_mode=True,
    )
    module.run(run)


if __name__ == "__main__":
    main()
