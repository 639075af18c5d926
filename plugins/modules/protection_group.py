#!/usr/bin/python
# Copyright: (c) 2025, hvds founding engineers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: protection_group
short_description: Create, change or remove a virtual protection group (VPG)
version_added: 0.1.0
description:
  - Makes a virtual protection group on a site manager look as the task says.
  - A VPG groups VMs and their disks that are replicated and recovered together, with write order
    kept across all of them, to one or more targets (a peer site, a host there and a datastore).
  - Reads the VPG, compares it with the options given, and only then creates it (C(POST)),
    replaces its settings (C(PUT)) or removes it (C(DELETE)). Options that are not given keep
    their current value (on creation, the site manager's default).
  - Creating a VPG starts its initial sync as a tracked command; see M(hvds.replication.command_info).
author:
  - hvds founding engineers (!UNKNOWN)
options:
  name:
    description:
      - Name of the VPG; letters, digits, C(.), C(_) and C(-), at most 63 characters.
    type: str
    required: true
  state:
    description:
      - V(present) creates the VPG or brings its settings in line; V(absent) stops protecting it
        and removes it.
    type: str
    choices: [present, absent]
    default: present
  vms:
    description:
      - The VMs of the VPG and the disks of each that are replicated. Required to create a VPG.
      - A VM can be in at most three VPGs. Each disk must be an export of the VM's host.
    type: list
    elements: dict
    suboptions:
      name:
        description: Name of the VM.
        type: str
        required: true
      host:
        description: The hypervisor (site manager host) the VM runs on.
        type: str
        required: true
      disks:
        description: The VM's disks to replicate.
        type: list
        elements: dict
        required: true
        suboptions:
          export:
            description: Name of the disk's export on the host's tap.
            type: str
            required: true
      boot:
        description:
          - How the VM boots at the recovery site (failover test, failover, move). Without it the
            VM's disks are recovered but the VM is not booted.
          - Suboptions not given keep their current value; on a VM new to the VPG, the site
            manager's default.
        type: dict
        suboptions:
          memory_mb:
            description: Memory of the VM in MiB (site manager default 512).
            type: int
          cpus:
            description: Virtual CPUs (default 1).
            type: int
          kernel:
            description: Kernel for a direct kernel boot, a path at the recovery host; default the first disk's boot loader.
            type: str
          initrd:
            description: Initial RAM disk for a direct kernel boot.
            type: str
          append:
            description: Kernel command line for a direct kernel boot.
            type: str
          order:
            description: Boot order among the VPG's VMs; lower boots first (default 0).
            type: int
          delay_seconds:
            description: Seconds to wait after booting this VM before the next (default 0).
            type: float
  targets:
    description:
      - Where the VPG is replicated to. Required to create a VPG. One target per site.
      - A target the VPG has already keeps the C(in_place) mirrors that reverse protection gave it.
    type: list
    elements: dict
    suboptions:
      site:
        description: A peer site of this site (see M(hvds.replication.site_pair)).
        type: str
        required: true
      host:
        description: The recovery host at that site.
        type: str
        required: true
      datastore:
        description: The datastore on that host for the replica disks and the journal.
        type: str
        required: true
  rpo_alert_seconds:
    description: Raise an alert when the recovery point is older than this (60 to 864200).
    type: int
  journal_history_hours:
    description: How far back the journal lets the VPG be recovered, in hours.
    type: float
  journal_size_limit_bytes:
    description: The most the journal may take on the target's datastore.
    type: int
  checkpoint_interval_seconds:
    description: How often a checkpoint is taken across the VPG's disks.
    type: float
  priority:
    description: Share of the link the VPG gets when VPGs compete for it.
    type: str
    choices: [low, medium, high]
  compression:
    description: Whether writes are compressed on the wire.
    type: bool
  bandwidth_limit_bytes:
    description: Most bytes per second the VPG sends; V(0) is no limit.
    type: int
extends_documentation_fragment:
  - hvds.replication.connection
seealso:
  - module: hvds.replication.protection_group_info
  - module: hvds.replication.checkpoint
"""

EXAMPLES = r"""
- name: Protect the ERP VMs to site B
  hvds.replication.protection_group:
    url: https://manager-a.example.com:8443
    token: "{{ hvds_admin_token }}"
    name: erp
    vms:
      - name: erp-db
        host: host-a1
        disks:
          - export: erp-db-disk0
      - name: erp-app
        host: host-a2
        disks:
          - export: erp-app-disk0
    targets:
      - site: site-b
        host: host-b1
        datastore: ds1
    rpo_alert_seconds: 120
    priority: high

- name: Change one setting; the others stay as they are
  hvds.replication.protection_group:
    name: erp
    journal_history_hours: 24

- name: Stop protecting it
  hvds.replication.protection_group:
    name: erp
    state: absent
"""

RETURN = r"""
protection_group:
  description:
    - The VPG as the site manager holds it after the task (in check mode, as it would be).
    - Empty after V(state=absent).
  returned: always
  type: dict
  sample:
    name: erp
    vms: [{name: erp-db, host: host-a1, disks: [{export: erp-db-disk0}]}]
    targets: [{site: site-b, host: host-b1, datastore: ds1}]
    rpo_alert_seconds: 300
    journal_history_hours: 1.0
    journal_size_limit_bytes: 161061273600
    checkpoint_interval_seconds: 5.0
    priority: medium
    compression: true
    bandwidth_limit_bytes: 0
    state: protected
    rpo_seconds: 4.2
    created_at: "2025-01-01T10:00:00Z"
    updated_at: "2025-01-01T10:00:00Z"
diff:
  description: The settings that change, before and after (only with C(--diff)).
  returned: when diff mode is on
  type: dict
  sample: {before: {priority: medium}, after: {priority: high}}
"""

from ansible_collections.hvds.replication.plugins.module_utils.api import (
    HvdsApiError,
    HvdsModule,
    drop_none,
    minimal_diff,
)

SETTINGS = (
    "vms",
    "targets",
    "rpo_alert_seconds",
    "journal_history_hours",
    "journal_size_limit_bytes",
    "checkpoint_interval_seconds",
    "priority",
    "compression",
    "bandwidth_limit_bytes",
)


def desired_settings(params):
    """The settings the task gives (None where it gives none), without empty sub-options."""
    return dict((key, drop_none(params.get(key))) for key in SETTINGS)


VM_KEYS = ("name", "host", "disks", "boot")
BOOT_KEYS = ("memory_mb", "cpus", "kernel", "initrd", "append", "order", "delay_seconds")
TARGET_KEYS = ("site", "host", "datastore", "in_place")
# Nested settings a VM or target keeps when the task lists it without them: (list, key, setting).
KEPT = (("vms", "name", "boot"), ("targets", "site", "in_place"))


def project(item, keys):
    """`item` with only `keys`, those that are set."""
    return dict((key, item[key]) for key in keys if item.get(key) is not None)


def writable(vpg):
    """The part of a VPG as read that may be sent back: its name and settings, nested values cut
    to the keys the API accepts (it refuses unknown keys)."""
    body = dict((key, vpg[key]) for key in ("name",) + SETTINGS if key in vpg)
    if "vms" in body:
        vms = []
        for vm in body["vms"]:
            vm = project(vm, VM_KEYS)
            vm["disks"] = [{"export": disk["export"]} for disk in vm["disks"]]
            if "boot" in vm:
                vm["boot"] = project(vm["boot"], BOOT_KEYS)
            vms.append(vm)
        body["vms"] = vms
    if "targets" in body:
        body["targets"] = [project(target, TARGET_KEYS) for target in body["targets"]]
    return body


def keep_unset(current, given):
    """`given` where each VM and target that the VPG has already (the same VM name, the same target
    site) keeps what the task leaves out of a nested setting: a VM's boot settings, a target's
    in_place mirrors (which reverse protection sets)."""
    given = dict(given)
    for key, ident, kept in KEPT:
        if key not in given:
            continue
        have = dict((item[ident], item) for item in current.get(key) or [])
        items = []
        for item in given[key]:
            old = have.get(item[ident]) or {}
            if old.get(kept):
                item = dict(item)
                item[kept] = dict(old[kept], **item.get(kept, {}))
            items.append(item)
        given[key] = items
    return given


def plan_present(name, current, desired):
    """What `state=present` does: `(action, body, diff)`, action one of None, "create", "update"."""
    given = dict((key, value) for key, value in desired.items() if value is not None)
    if current is None:
        missing = [key for key in ("vms", "targets") if not given.get(key)]
        if missing:
            raise HvdsApiError("protection group %s does not exist; to create it, give %s"
                               % (name, " and ".join(missing)))
        body = {"name": name}
        body.update(given)
        return "create", body, {"before": {}, "after": body}
    body = writable(current)
    diff = minimal_diff(current, keep_unset(body, given))
    if not diff["after"]:
        return None, None, diff
    body["name"] = name
    body.update(diff["after"])
    return "update", body, diff


def plan_absent(current):
    """What `state=absent` does: `(action, diff)`."""
    if current is None:
        return None, {"before": {}, "after": {}}
    return "delete", {"before": writable(current), "after": {}}


def run(module):
    client = module.client
    name = module.params["name"]
    current = client.get_or_none("vpgs", name)
    if module.params["state"] == "absent":
        action, diff = plan_absent(current)
        if action and not module.check_mode:
            client.delete("vpgs", name)
        return dict(changed=action is not None, protection_group={}, diff=diff)

    action, body, diff = plan_present(name, current, desired_settings(module.params))
    if action is None:
        result = current
    elif module.check_mode:
        result = dict(current or {}, **body)
    elif action == "create":
        result = client.post(("vpgs",), body)
    else:
        result = client.put(("vpgs", name), body)
    return dict(changed=action is not None, protection_group=result, diff=diff)


def main():
    disk = dict(export=dict(type="str", required=True))
    boot = dict(
        memory_mb=dict(type="int"),
        cpus=dict(type="int"),
        kernel=dict(type="str"),
        initrd=dict(type="str"),
        append=dict(type="str"),
        order=dict(type="int"),
        delay_seconds=dict(type="float"),
    )
    vm = dict(
        name=dict(type="str", required=True),
        host=dict(type="str", required=True),
        disks=dict(type="list", elements="dict", required=True, options=disk),
        boot=dict(type="dict", options=boot),
    )
    target = dict(
        site=dict(type="str", required=True),
        host=dict(type="str", required=True),
        datastore=dict(type="str", required=True),
    )
    module = HvdsModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            vms=dict(type="list", elements="dict", options=vm),
            targets=dict(type="list", elements="dict", options=target),
            rpo_alert_seconds=dict(type="int"),
            journal_history_hours=dict(type="float"),
            journal_size_limit_bytes=dict(type="int"),
            checkpoint_interval_seconds=dict(type="float"),
            priority=dict(type="str", choices=["low", "medium", "high"]),
            compression=dict(type="bool"),
            bandwidth_limit_bytes=dict(type="int"),
        ),
        supports_check_mode=True,
    )
    module.run(run)


if __name__ == "__main__":
    main()
