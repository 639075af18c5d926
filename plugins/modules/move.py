#!/usr/bin/python
# Copyright: (c) 2025, hvds founding engineers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: move
short_description: Move a protection group to its recovery site (a planned failover)
version_added: 0.1.0
description:
  - A planned move, with both sites up. The site manager takes a last checkpoint, fails the VPG
    over to it and commits. Stop the VMs first, so that nothing is written after that checkpoint.
  - Nothing is done when the VPG is failed over already (its state is V(failed_over)) or a move of
    it is under way, so a play can be run again. The module fails when the VPG is neither
    V(protected) nor failed over, for example while it syncs or is failing over (see
    M(hvds.replication.failover) to commit or roll back a failover).
  - After a move, M(hvds.replication.reverse_protection) protects the VMs back to this site; a
    move at the recovery site's manager then brings them back (failback).
  - The move is a tracked command on the site manager; by default the module waits for it and
    fails when it failed.
author:
  - hvds founding engineers (!UNKNOWN)
options:
  vpg:
    description: Name of the protection group.
    type: str
    required: true
  wait:
    description: Wait for the move to end, and fail when it did not succeed.
    type: bool
    default: true
  wait_timeout:
    description: Seconds to wait with O(wait) before the module fails (the move goes on).
    type: int
    default: 600
extends_documentation_fragment:
  - hvds.replication.connection
seealso:
  - module: hvds.replication.failover
  - module: hvds.replication.reverse_protection
"""

EXAMPLES = r"""
- name: Move the ERP VMs to site B for the maintenance of site A (the VMs are stopped)
  hvds.replication.move:
    url: https://manager-a.example.com:8443
    token: "{{ hvds_admin_token }}"
    vpg: erp
  register: moved

- name: Show the last checkpoint and the disks now served at site B
  ansible.builtin.debug:
    msg: "{{ moved.command.result.checkpoint.tag }}: {{ moved.command.result.uris }}"
"""

RETURN = r"""
command:
  description:
    - The tracked command V(move) (as it ended with O(wait)); the one under way when the module
      found one; empty when nothing was to do or in check mode.
    - Its result holds the last C(checkpoint) and, as a commit's, the C(mirrors) and the C(uris)
      that serve them at the recovery site.
    - See M(hvds.replication.command_info) for its keys.
  returned: always
  type: dict
  sample:
    id: 15
    kind: move
    vpg: erp
    status: succeeded
    progress: 100
    started_at: "2025-01-01T10:00:00Z"
    ended_at: "2025-01-01T10:00:09Z"
    result:
      checkpoint: {id: 1735725600000000000, tag: move-20250101T100000}
      state: committed
      uris: {erp-db-disk0: "nbd://10.0.0.2:10809/erp-db-disk0"}
    error: null
protection_group:
  description: The VPG as read after the move (before it, without O(wait) or in check mode).
  returned: always
  type: dict
  sample: {name: erp, state: failed_over}
diff:
  description: The VPG's state before and after (only with C(--diff)); empty when nothing changes.
  returned: when diff mode is on
  type: dict
  sample: {before: {state: protected}, after: {state: failed_over}}
"""

from ansible_collections.hvds.replication.plugins.module_utils.api import (
    HvdsApiError,
    HvdsModule,
    finish_command,
    pending_command,
)

# Recovery commands that a move cannot go along with.
CONFLICTING = ("failover", "failover_commit", "failover_rollback", "failover_test_start", "failover_test_stop")


def plan(name, vpg_state):
    """Whether a VPG in `vpg_state` is to be moved (True), is moved already (False); raises
    when it cannot be moved now."""
    if vpg_state == "failed_over":
        return False
    if vpg_state == "protected":
        return True
    if vpg_state == "failing_over":
        raise HvdsApiError("protection group %s is failing_over: commit or roll back that failover first "
                           "(hvds.replication.failover)" % name)
    raise HvdsApiError("protection group %s is %s: a move needs it protected" % (name, vpg_state))


def run(module):
    client = module.client
    params = module.params
    name = params["vpg"]
    vpg = client.get("vpgs", name)
    commands = client.get_all("commands", vpg=name)
    under_way = pending_command(commands, name, "move")
    if under_way is not None:
        command = under_way
        if params["wait"] and not module.check_mode:
            command = finish_command(client, under_way, True, params["wait_timeout"])
            vpg = client.get("vpgs", name)
        return dict(changed=False, command=command, protection_group=vpg, diff={"before": {}, "after": {}})
    conflict = pending_command(commands, name, CONFLICTING)
    if conflict is not None:
        raise HvdsApiError("a %s of protection group %s is under way (command %s): run again once it ended"
                           % (conflict["kind"], name, conflict["id"]), detail=conflict)
    if not plan(name, vpg.get("state")):
        return dict(changed=False, command={}, protection_group=vpg, diff={"before": {}, "after": {}})
    diff = {"before": {"state": vpg.get("state")}, "after": {"state": "failed_over"}}
    if module.check_mode:
        return dict(changed=True, command={}, protection_group=vpg, diff=diff)
    command = client.post(("vpgs", name, "move"))
    command = finish_command(client, command, params["wait"], params["wait_timeout"])
    if params["wait"]:
        vpg = client.get("vpgs", name)
    return dict(changed=True, command=command, protection_group=vpg, diff=diff)


def main():
    module = HvdsModule(
        argument_spec=dict(
            vpg=dict(type="str", required=True),
            wait=dict(type="bool", default=True),
            wait_timeout=dict(type="int", default=600),
        ),
        supports_check_mode=True,
    )
    module.run(run)


if __name__ == "__main__":
    main()
