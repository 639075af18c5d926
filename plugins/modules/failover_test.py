#!/usr/bin/python
# Copyright: (c) 2025, hvds founding engineers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: failover_test
short_description: Start or stop a failover test of a protection group
version_added: 0.1.0
description:
  - A failover test exposes the VPG's disks at a checkpoint, at the recovery site, on scratch
    overlays that are thrown away when the test stops. Replication goes on meanwhile.
  - V(started) starts a test unless the VPG is already in a test (its state is V(testing)) or a
    start is already under way; V(stopped) stops the test unless there is none.
  - Starting and stopping are tracked commands on the site manager; by default the module waits
    for the command to end and fails when it failed.
author:
  - hvds founding engineers (!UNKNOWN)
options:
  vpg:
    description: Name of the protection group.
    type: str
    required: true
  state:
    description:
      - V(started) brings a failover test up, V(stopped) takes it down.
      - A test that is already up is left as it is, whatever checkpoint it exposes; stop it first to
        test another checkpoint.
    type: str
    choices: [started, stopped]
    default: started
  checkpoint:
    description: Id of the checkpoint to test (see M(hvds.replication.checkpoint_info)). Default the latest.
    type: int
  tag:
    description: Test the newest checkpoint with this tag.
    type: str
  wait:
    description: Wait for the start or stop command to end, and fail when it did not succeed.
    type: bool
    default: true
  wait_timeout:
    description: Seconds to wait with O(wait) before the module fails (the command goes on).
    type: int
    default: 600
extends_documentation_fragment:
  - hvds.replication.connection
seealso:
  - module: hvds.replication.checkpoint
  - module: hvds.replication.command_info
"""

EXAMPLES = r"""
- name: Test a failover of the ERP VMs to the checkpoint taken before the upgrade
  hvds.replication.failover_test:
    url: https://manager-a.example.com:8443
    token: "{{ hvds_admin_token }}"
    vpg: erp
    tag: before-upgrade-2025-01
  register: test

- name: Show where the test disks are served
  ansible.builtin.debug:
    msg: "{{ test.command.result }}"

- name: Stop the test
  hvds.replication.failover_test:
    vpg: erp
    state: stopped
"""

RETURN = r"""
command:
  description:
    - The tracked command that starts or stops the test (as it ended with O(wait)); the one under
      way when the module found one; empty when nothing was to do or in check mode.
    - See M(hvds.replication.command_info) for its keys.
  returned: always
  type: dict
  sample:
    id: 12
    kind: failover_test_start
    vpg: erp
    status: succeeded
    progress: 100
    started_at: "2025-01-01T10:00:00Z"
    ended_at: "2025-01-01T10:00:03Z"
    result: {}
    error: null
protection_group:
  description: The VPG as read after the command (before it, without O(wait) or in check mode).
  returned: always
  type: dict
  sample: {name: erp, state: testing}
diff:
  description: Whether a test is up, before and after (only with C(--diff)).
  returned: when diff mode is on
  type: dict
  sample: {before: {failover_test: stopped}, after: {failover_test: started}}
"""

from ansible_collections.hvds.replication.plugins.module_utils.api import (
    HvdsModule,
    finish_command,
    pending_command,
)

KINDS = {"started": "failover_test_start", "stopped": "failover_test_stop"}


def is_testing(vpg):
    return vpg.get("state") == "testing"


def needs_change(vpg, state):
    """Whether the VPG must be brought to `state` (`started` or `stopped`)."""
    return is_testing(vpg) != (state == "started")


def diff_for(state, changed):
    if not changed:
        return {"before": {}, "after": {}}
    other = "stopped" if state == "started" else "started"
    return {"before": {"failover_test": other}, "after": {"failover_test": state}}


def run(module):
    client = module.client
    params = module.params
    name = params["vpg"]
    state = params["state"]
    vpg = client.get("vpgs", name)
    commands = client.get_all("commands", vpg=name)
    if state == "stopped":
        starting = pending_command(commands, name, KINDS["started"])
        if starting is not None and not module.check_mode:
            # A test coming up is stopped once it is up.
            finish_command(client, starting, True, params["wait_timeout"])
            vpg = client.get("vpgs", name)
    under_way = pending_command(commands, name, KINDS[state])
    if under_way is not None or not needs_change(vpg, state):
        command = under_way or {}
        if under_way is not None and params["wait"] and not module.check_mode:
            command = finish_command(client, under_way, True, params["wait_timeout"])
            vpg = client.get("vpgs", name)
        return dict(changed=False, command=command, protection_group=vpg, diff=diff_for(state, False))
    if module.check_mode:
        return dict(changed=True, command={}, protection_group=vpg, diff=diff_for(state, True))
    if state == "started":
        body = dict((key, params[key]) for key in ("checkpoint", "tag") if params[key] is not None)
        command = client.post(("vpgs", name, "failover-test"), body)
    else:
        command = client.delete("vpgs", name, "failover-test")
    command = finish_command(client, command, params["wait"], params["wait_timeout"])
    if params["wait"]:
        vpg = client.get("vpgs", name)
    return dict(changed=True, command=command, protection_group=vpg, diff=diff_for(state, True))


def main():
    module = HvdsModule(
        argument_spec=dict(
            vpg=dict(type="str", required=True),
            state=dict(type="str", choices=["started", "stopped"], default="started"),
            checkpoint=dict(type="int"),
            tag=dict(type="str"),
            wait=dict(type="bool", default=True),
            wait_timeout=dict(type="int", default=600),
        ),
        mutually_exclusive=[("checkpoint", "tag")],
        supports_check_mode=True,
    )
    module.run(run)


if __name__ == "__main__":
    main()
