#!/usr/bin/python
# Copyright: (c) 2025, hvds founding engineers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: reverse_protection
short_description: Protect a failed-over protection group back to its old site
version_added: 0.1.0
description:
  - After a committed failover or a move, the VMs run at the recovery site. Reverse protection
    makes the recovery site protect them back to this site, into their old disks, so that only
    the blocks that differ are sent. A move at the recovery site's manager then brings the VMs
    back (failback).
  - Runs against the manager of the VPG's old (source) site, as the other modules. Nothing is
    done when the recovery site protects the VPG back already (the VPG's C(reverse_site) is set)
    or reverse protection is under way, so a play can be run again. The module fails when the
    VPG is not failed over (its state is not V(failed_over)).
  - It is a tracked command on the site manager; by default the module waits for it and fails
    when it failed. The command ends when the recovery site has taken the VPG; its first sync
    goes on there (see M(hvds.replication.protection_group_info) at that site).
author:
  - hvds founding engineers (!UNKNOWN)
options:
  vpg:
    description: Name of the protection group.
    type: str
    required: true
  wait:
    description: Wait for the command to end, and fail when it did not succeed.
    type: bool
    default: true
  wait_timeout:
    description: Seconds to wait with O(wait) before the module fails (the command goes on).
    type: int
    default: 600
extends_documentation_fragment:
  - hvds.replication.connection
seealso:
  - module: hvds.replication.failover
  - module: hvds.replication.move
"""

EXAMPLES = r"""
- name: Commit the failover of the ERP VMs
  hvds.replication.failover:
    url: https://manager-a.example.com:8443
    token: "{{ hvds_admin_token }}"
    vpg: erp
    state: committed

- name: Protect them back to site A
  hvds.replication.reverse_protection:
    url: https://manager-a.example.com:8443
    token: "{{ hvds_admin_token }}"
    vpg: erp
  register: reverse

- name: Fail back once the reverse VPG is protected at site B
  hvds.replication.move:
    url: https://manager-b.example.com:8443
    token: "{{ hvds_admin_token_b }}"
    vpg: erp
"""

RETURN = r"""
command:
  description:
    - The tracked command V(reverse_protection) (as it ended with O(wait)); the one under way when
      the module found one; empty when nothing was to do or in check mode.
    - Its result names the reverse VPG, its site and its state there.
    - See M(hvds.replication.command_info) for its keys.
  returned: always
  type: dict
  sample:
    id: 16
    kind: reverse_protection
    vpg: erp
    status: succeeded
    progress: 100
    started_at: "2025-01-01T11:00:00Z"
    ended_at: "2025-01-01T11:00:02Z"
    result: {vpg: erp, site: site-b, state: initializing}
    error: null
protection_group:
  description: The VPG as read after the command (before it, without O(wait) or in check mode).
  returned: always
  type: dict
  sample: {name: erp, state: failed_over, reverse_site: site-b}
reverse_site:
  description:
    - The site that protects the VPG back to this one; in check mode, the site it would be (the
      VPG's first target); null without O(wait) while the command runs.
  returned: always
  type: str
  sample: site-b
diff:
  description: The VPG's C(reverse_site) before and after (only with C(--diff)); empty when nothing changes.
  returned: when diff mode is on
  type: dict
  sample: {before: {reverse_site: null}, after: {reverse_site: site-b}}
"""

from ansible_collections.hvds.replication.plugins.module_utils.api import (
    HvdsApiError,
    HvdsModule,
    finish_command,
    pending_command,
)

KIND = "reverse_protection"


def reversed_to(vpg, commands):
    """The site that protects the VPG back already, or None.

    The manager says it as the VPG's `reverse_site`. A manager from before that field: the site
    of a reverse_protection command that succeeded since the VPG's last commit (commands newest
    first).
    """
    if "reverse_site" in vpg:
        return vpg["reverse_site"]
    for command in commands:
        if command.get("status") != "succeeded":
            continue
        if command.get("kind") == KIND:
            return (command.get("result") or {}).get("site")
        if command.get("kind") in ("failover_commit", "move"):
            return None
    return None


def plan(name, vpg, commands):
    """Whether reverse protection is to be asked (True) or is there (False); raises when the VPG
    cannot be protected back."""
    if reversed_to(vpg, commands):
        return False
    if vpg.get("state") == "failed_over":
        return True
    raise HvdsApiError("protection group %s is %s: reverse protection needs a committed failover or a move "
                       "(state failed_over)" % (name, vpg.get("state")))


def recovery_site(vpg):
    """Where the failover went: the VPG's first target's site (the manager fails over there)."""
    targets = vpg.get("targets") or [{}]
    return targets[0].get("site")


def run(module):
    client = module.client
    params = module.params
    name = params["vpg"]
    vpg = client.get("vpgs", name)
    commands = client.get_all("commands", vpg=name)
    unchanged = {"before": {}, "after": {}}
    under_way = pending_command(commands, name, KIND)
    if under_way is not None:
        command = under_way
        if params["wait"] and not module.check_mode:
            command = finish_command(client, under_way, True, params["wait_timeout"])
            vpg = client.get("vpgs", name)
        return dict(changed=False, command=command, protection_group=vpg,
                    reverse_site=reversed_to(vpg, [command]), diff=unchanged)
    if not plan(name, vpg, commands):
        return dict(changed=False, command={}, protection_group=vpg, reverse_site=reversed_to(vpg, commands),
                    diff=unchanged)
    diff = {"before": {"reverse_site": None}, "after": {"reverse_site": recovery_site(vpg)}}
    if module.check_mode:
        return dict(changed=True, command={}, protection_group=vpg, reverse_site=recovery_site(vpg), diff=diff)
    command = client.post(("vpgs", name, "reverse-protection"))
    command = finish_command(client, command, params["wait"], params["wait_timeout"])
    site = None
    if params["wait"]:
        vpg = client.get("vpgs", name)
        site = reversed_to(vpg, [command])
        diff["after"]["reverse_site"] = site
    return dict(changed=True, command=command, protection_group=vpg, reverse_site=site, diff=diff)


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
