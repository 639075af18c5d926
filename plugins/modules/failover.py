#!/usr/bin/python
# Copyright: (c) 2025, hvds founding engineers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: failover
short_description: Fail a protection group over to its recovery site, then commit or roll back
version_added: 0.1.0
description:
  - A live failover brings a VPG's VMs up at the recovery site from a checkpoint. The source
    site's disks are detached from their taps first, so that nothing there writes them any more.
    The VMs then write to scratch overlays until the failover is committed or rolled back.
  - V(failing_over) starts a failover, unless the VPG is already failing over or failed over
    (its state is V(failing_over) or V(failed_over)) or a failover is under way.
  - V(committed) commits the failover, unless it is committed already (the VPG is V(failed_over)).
    The recovery site's disks then hold the checkpoint plus the VMs' writes, and serve the VMs.
  - V(rolled_back) rolls the failover back, unless the VPG is not failing over. The VMs at the
    recovery site are stopped, their writes are thrown away and protection resumes where it
    stopped. A committed failover cannot be rolled back; the module fails on a VPG that is
    V(failed_over).
  - Each step is a tracked command on the site manager; by default the module waits for it and
    fails when it failed.
author:
  - hvds founding engineers (!UNKNOWN)
options:
  vpg:
    description: Name of the protection group.
    type: str
    required: true
  state:
    description:
      - V(failing_over) starts a live failover, V(committed) commits it, V(rolled_back) rolls it back.
      - A failover that is under way or done is left as it is, whatever checkpoint it is at; roll
        it back first to fail over to another checkpoint.
      - V(committed) and V(rolled_back) need a failover started before (V(failing_over)); a
        failover command still under way is waited for first.
    type: str
    choices: [failing_over, committed, rolled_back]
    default: failing_over
  checkpoint:
    description:
      - Id of the checkpoint to fail over to (see M(hvds.replication.checkpoint_info)). Default the latest.
      - Only used with O(state=failing_over).
    type: int
  tag:
    description:
      - Fail over to the newest checkpoint with this tag.
      - Only used with O(state=failing_over).
    type: str
  auto_commit_seconds:
    description:
      - Commit the failover on its own after this many seconds unless it was rolled back by then.
        Without it, the failover waits for O(state=committed) or O(state=rolled_back).
      - Only used with O(state=failing_over). With O(wait), the module returns once the VPG is
        V(failing_over); the command goes on until the commit.
    type: float
  wait:
    description: Wait for the command to end (see O(auto_commit_seconds)), and fail when it did not succeed.
    type: bool
    default: true
  wait_timeout:
    description: Seconds to wait with O(wait) before the module fails (the command goes on).
    type: int
    default: 600
extends_documentation_fragment:
  - hvds.replication.connection
seealso:
  - module: hvds.replication.failover_test
  - module: hvds.replication.move
  - module: hvds.replication.reverse_protection
  - module: hvds.replication.checkpoint_info
"""

EXAMPLES = r"""
- name: Fail the ERP VMs over to the checkpoint taken before the upgrade
  hvds.replication.failover:
    url: https://manager-a.example.com:8443
    token: "{{ hvds_admin_token }}"
    vpg: erp
    tag: before-upgrade-2025-01
  register: failover

- name: Show where the recovered disks are served
  ansible.builtin.debug:
    msg: "{{ failover.command.result.views }}"

- name: Keep it
  hvds.replication.failover:
    vpg: erp
    state: committed
  when: erp_checks_passed

- name: Or go back to protection, throwing the recovered VMs' writes away
  hvds.replication.failover:
    vpg: erp
    state: rolled_back
  when: not erp_checks_passed

- name: Fail over, to be committed in an hour unless rolled back by then
  hvds.replication.failover:
    vpg: crm
    auto_commit_seconds: 3600
"""

RETURN = r"""
command:
  description:
    - The tracked command that started, committed or rolled back the failover (as it ended with
      O(wait)); the one under way when the module found one; empty when nothing was to do or in
      check mode.
    - The result of a V(failover) command holds the checkpoint, the recovered disks (C(views),
      each with its NBD C(uri)) and the VMs booted; that of a V(failover_commit) the C(mirrors)
      and their C(uris); that of a V(failover_rollback) the C(discarded_bytes).
    - See M(hvds.replication.command_info) for its keys.
  returned: always
  type: dict
  sample:
    id: 14
    kind: failover
    vpg: erp
    status: succeeded
    progress: 100
    started_at: "2025-01-01T10:00:00Z"
    ended_at: "2025-01-01T10:00:04Z"
    result:
      checkpoint: {id: 1735725600000000000, tag: before-upgrade-2025-01}
      views: [{disk: erp-db-disk0, uri: "nbd://10.0.0.2:10810/erp-db-disk0"}]
      vms: []
    error: null
protection_group:
  description: The VPG as read after the command (before it, without O(wait) or in check mode).
  returned: always
  type: dict
  sample: {name: erp, state: failing_over}
diff:
  description: The VPG's state before and after (only with C(--diff)); empty when nothing changes.
  returned: when diff mode is on
  type: dict
  sample: {before: {state: protected}, after: {state: failing_over, tag: before-upgrade-2025-01}}
"""

from ansible_collections.hvds.replication.plugins.module_utils.api import (
    HvdsApiError,
    HvdsModule,
    finish_command,
    pending_command,
)

# The VPG's states once failed over (committed or not).
LIVE = ("failing_over", "failed_over")
# The commands that bring a VPG where `state` asks: one under way is followed, not started again.
FOLLOWED = {
    "failing_over": ("failover", "move"),
    "committed": ("failover_commit", "move"),
    "rolled_back": ("failover_rollback",),
}
# The commands under way that `state` cannot go along with.
CONFLICTING = {
    "failing_over": ("failover_rollback",),
    "committed": ("failover_rollback",),
    "rolled_back": ("failover_commit", "move"),
}
# The state the VPG has after each request.
AFTER = {"failover": "failing_over", "commit": "failed_over", "rollback": "syncing"}
PATHS = {"failover": ("failover",), "commit": ("failover", "commit"), "rollback": ("failover", "rollback")}


def is_live(vpg):
    return vpg.get("state") in LIVE


def plan(name, state, vpg_state):
    """The request that brings a VPG in `vpg_state` to `state` when no command of it is under
    way: None (it is there), "failover", "commit" or "rollback"; raises when it cannot get there."""
    if state == "failing_over":
        if vpg_state in LIVE:
            return None
        if vpg_state in ("syncing", "protected"):
            return "failover"
        raise HvdsApiError("protection group %s is %s: a failover needs it syncing or protected"
                           % (name, vpg_state))
    if state == "committed":
        if vpg_state == "failed_over":
            return None
        if vpg_state == "failing_over":
            return "commit"
        raise HvdsApiError("protection group %s is %s: there is no failover to commit (state=failing_over starts one)"
                           % (name, vpg_state))
    if vpg_state == "failing_over":
        return "rollback"
    if vpg_state == "failed_over":
        raise HvdsApiError("protection group %s is failed_over: a committed failover cannot be rolled back "
                           "(hvds.replication.reverse_protection, then a move at the recovery site, brings it back)"
                           % name)
    return None


def diff_for(vpg_state, action, choice):
    if action is None:
        return {"before": {}, "after": {}}
    after = {"state": AFTER[action]}
    if action == "failover":
        after.update(choice)
    return {"before": {"state": vpg_state}, "after": after}


def run(module):
    client = module.client
    params = module.params
    name = params["vpg"]
    state = params["state"]
    wait, timeout = params["wait"], params["wait_timeout"]
    if state != "failing_over":
        given = [key for key in ("checkpoint", "tag", "auto_commit_seconds") if params[key] is not None]
        if given:
            module.warn("%s: only used with state=failing_over" % ", ".join(given))

    def vpg_live(_command):
        return is_live(client.get("vpgs", name))

    vpg = client.get("vpgs", name)
    commands = client.get_all("commands", vpg=name)
    conflict = pending_command(commands, name, CONFLICTING[state])
    if conflict is not None:
        raise HvdsApiError("a %s of protection group %s is under way (command %s): run again once it ended"
                           % (conflict["kind"], name, conflict["id"]), detail=conflict)
    under_way = pending_command(commands, name, FOLLOWED[state])
    if under_way is not None:
        command = under_way
        if wait and not module.check_mode:
            until = vpg_live if under_way["kind"] == "failover" else None
            command = finish_command(client, under_way, True, timeout, until=until)
            vpg = client.get("vpgs", name)
        return dict(changed=False, command=command, protection_group=vpg, diff=diff_for(None, None, {}))

    vpg_state = vpg.get("state")
    starting = pending_command(commands, name, "failover")
    if starting is not None:
        # Committed or rolled back once it is live.
        if module.check_mode:
            vpg_state = "failing_over"
        else:
            finish_command(client, starting, True, timeout, until=vpg_live)
            vpg = client.get("vpgs", name)
            vpg_state = vpg.get("state")
    action = plan(name, state, vpg_state)
    choice = dict((key, params[key]) for key in ("checkpoint", "tag") if params[key] is not None)
    diff = diff_for(vpg_state, action, choice)
    if action is None:
        return dict(changed=False, command={}, protection_group=vpg, diff=diff)
    if module.check_mode:
        return dict(changed=True, command={}, protection_group=vpg, diff=diff)
    body = {}
    if action == "failover":
        body = dict(choice)
        if params["auto_commit_seconds"] is not None:
            body["auto_commit_seconds"] = params["auto_commit_seconds"]
    command = client.post(("vpgs", name) + PATHS[action], body)
    until = vpg_live if action == "failover" and "auto_commit_seconds" in body else None
    command = finish_command(client, command, wait, timeout, until=until)
    if wait:
        vpg = client.get("vpgs", name)
    return dict(changed=True, command=command, protection_group=vpg, diff=diff)


def main():
    module = HvdsModule(
        argument_spec=dict(
            vpg=dict(type="str", required=True),
            state=dict(type="str", choices=["failing_over", "committed", "rolled_back"], default="failing_over"),
            checkpoint=dict(type="int"),
            tag=dict(type="str"),
            auto_commit_seconds=dict(type="float"),
            wait=dict(type="bool", default=True),
            wait_timeout=dict(type="int", default=600),
        ),
        mutually_exclusive=[("checkpoint", "tag")],
        supports_check_mode=True,
    )
    module.run(run)


if __name__ == "__main__":
    main()
