#!/usr/bin/python
# Copyright: (c) 2025, hvds founding engineers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: command_info
short_description: Read the site manager's tracked commands, or wait for one to end
version_added: 0.1.0
description:
  - Long operations (initial sync, failover test start and stop, ...) run on the site manager as
    tracked commands. This module returns them, newest first, and can wait for one to end.
author:
  - hvds founding engineers (!UNKNOWN)
options:
  id:
    description: Only this command. The result is an empty list when there is no such command.
    type: int
  vpg:
    description: Only the commands of this protection group.
    type: str
  kind:
    description: Only the commands of this kind, for example V(failover_test_start).
    type: str
  wait:
    description:
      - With O(id), wait until the command has ended (V(succeeded), V(failed) or V(cancelled)).
      - The module does not fail when the command failed; check RV(commands[].status).
    type: bool
    default: false
  wait_timeout:
    description: Seconds to wait with O(wait) before the module fails.
    type: int
    default: 600
extends_documentation_fragment:
  # First: where two fragments set the same attribute, the first one wins.
  - hvds.replication.connection.info_module
  - hvds.replication.connection
"""

EXAMPLES = r"""
- name: The commands of a VPG
  hvds.replication.command_info:
    url: https://manager-a.example.com:8443
    token: "{{ hvds_viewer_token }}"
    vpg: erp
  register: cmds

- name: Wait for a command that an earlier task started without waiting
  hvds.replication.command_info:
    id: "{{ started.command.id }}"
    wait: true
    wait_timeout: 1800
  register: done
  failed_when: done.commands[0].status != 'succeeded'
"""

RETURN = r"""
commands:
  description: The commands, newest first.
  returned: always
  type: list
  elements: dict
  contains:
    id:
      description: Identifier of the command.
      type: int
      sample: 12
    kind:
      description: What the command does.
      type: str
      sample: failover_test_start
    vpg:
      description: The protection group it acts on, if any.
      type: str
      sample: erp
    status:
      description: V(queued), V(running), V(succeeded), V(failed) or V(cancelled).
      type: str
      sample: succeeded
    progress:
      description: Percent done.
      type: int
      sample: 100
    started_at:
      description: When it started (RFC 3339, UTC).
      type: str
      sample: "2025-01-01T10:00:00Z"
    ended_at:
      description: When it ended, null while it runs.
      type: str
      sample: "2025-01-01T10:00:05Z"
    result:
      description: What it produced, depending on its kind.
      type: dict
      sample: {}
    error:
      description: Why it failed, null unless it failed.
      type: str
      sample: null
"""

from ansible_collections.hvds.replication.plugins.module_utils.api import HvdsModule, read_items


def select(commands, vpg=None, kind=None):
    """The commands of the VPG and kind given (None matches any)."""
    return [
        command
        for command in commands
        if (vpg is None or command.get("vpg") == vpg) and (kind is None or command.get("kind") == kind)
    ]


def run(module):
    params = module.params
    found = read_items(module.client, "commands", params["id"], vpg=params["vpg"])
    commands = select(found, params["vpg"], params["kind"])
    if params["wait"] and params["id"] is not None and commands:
        commands = [module.client.wait_command(commands[0], params["wait_timeout"])]
    return dict(changed=False, commands=commands)


def main():
    module = HvdsModule(
        argument_spec=dict(
            id=dict(type="int"),
            vpg=dict(type="str"),
            kind=dict(type="str"),
            wait=dict(type="bool", default=False),
            wait_timeout=dict(type="int", default=600),
        ),
        required_if=[("wait", True, ["id"])],
        supports_check_mode=True,
    )
    module.run(run)


if __name__ == "__main__":
    main()
