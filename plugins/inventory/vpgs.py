# Copyright: (c) 2025, hvds founding engineers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: vpgs
short_description: The VMs a site manager protects, grouped by protection group
version_added: 0.1.0
description:
  - Reads the protection groups (VPGs) of a site manager through its REST API v1 and makes an
    inventory of the VMs they protect. Each VM is a host, in one group per VPG it is in.
  - A VPG's group (O(group_prefix) and the VPG's name, other characters than letters, digits and
    C(_) made C(_)) has the variables C(hvds_vpg) (its name), C(hvds_vpg_state), C(hvds_vpg_rpo_seconds)
    and C(hvds_site) (the site whose manager protects it).
  - Each VM has the variables C(hvds_site), C(hvds_hypervisor) (the host it runs on at that
    site) and C(hvds_vpgs), a dict of the VPGs it is in, each with its C(state),
    C(rpo_seconds), C(rpo_alert_seconds), C(reverse_site) and the sites of its C(targets). A VM
    is in at most three VPGs; per VPG values are best read from C(hvds_vpgs).
  - The inventory file's name must end in C(hvds.yml), C(hvds.yaml), C(hvds_vpgs.yml) or
    C(hvds_vpgs.yaml).
author:
  - hvds founding engineers (!UNKNOWN)
extends_documentation_fragment:
  - constructed
options:
  plugin:
    description: The name of this plugin, which makes the file one of its inventory sources.
    type: str
    required: true
    choices: [hvds.replication.vpgs]
  url:
    description:
      - Base URL of the site manager, for example V(https://manager-a.example.com:8443).
    type: str
    required: true
    env:
      - name: HVDS_URL
  token:
    description:
      - Bearer token for the site manager API; a C(viewer) token is enough.
      - Keep it out of the inventory file in the E(HVDS_TOKEN) environment variable, or vault it.
    type: str
    required: true
    env:
      - name: HVDS_TOKEN
  validate_certs:
    description: Whether to validate the site manager's TLS certificate.
    type: bool
    default: true
  ca_path:
    description: PEM file of the CA that signed the site manager's certificate, when it is not in the system's trust store.
    type: path
  timeout:
    description: Seconds to wait for one answer of the site manager.
    type: float
    default: 30
  group_prefix:
    description: Put before a VPG's name to make its group's name.
    type: str
    default: vpg_
seealso:
  - module: hvds.replication.protection_group_info
"""

EXAMPLES = r"""
# site-a.hvds.yml: every VM site A protects, in a group per VPG (vpg_erp, ...), and also in a group
# per hypervisor (hypervisor_a1, ...) and in rpo_late when one of its VPGs is over 300 s of RPO.
# The token comes from the HVDS_TOKEN environment variable.
plugin: hvds.replication.vpgs
url: https://manager-a.example.com:8443
ca_path: /etc/hvds/pki/ca.pem
keyed_groups:
  - key: hvds_hypervisor
    prefix: hypervisor
groups:
  rpo_late: hvds_vpgs.values() | selectattr('rpo_seconds') | selectattr('rpo_seconds', 'gt', 300) | list | length > 0
"""

from ansible.errors import AnsibleError
from ansible.inventory.group import to_safe_group_name
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.inventory import BaseInventoryPlugin, Constructable

from ansible_collections.hvds.replication.plugins.module_utils.api import ApiClient, HvdsApiError

FILE_ENDINGS = ("hvds.yml", "hvds.yaml", "hvds_vpgs.yml", "hvds_vpgs.yaml")


def group_name(prefix, vpg):
    """The VPG's group: the prefix and the name, with anything but letters, digits and _ made _."""
    return to_safe_group_name(prefix + vpg, force=True, silent=True)


def vpg_summary(vpg):
    """What a VM's `hvds_vpgs` keeps of a VPG."""
    return {
        "state": vpg.get("state"),
        "rpo_seconds": vpg.get("rpo_seconds"),
        "rpo_alert_seconds": vpg.get("rpo_alert_seconds"),
        "reverse_site": vpg.get("reverse_site"),
        "targets": [target.get("site") for target in vpg.get("targets") or []],
    }


def inventory_of(site, vpgs, prefix):
    """`(groups, hosts)`: each VPG's group and its variables and VMs, and each VM's variables."""
    groups = {}
    hosts = {}
    for vpg in sorted(vpgs, key=lambda item: item["name"]):
        name = group_name(prefix, vpg["name"])
        members = []
        for vm in vpg.get("vms") or []:
            host = hosts.setdefault(vm["name"], {"hvds_site": site, "hvds_hypervisor": vm.get("host"),
                                                 "hvds_vpgs": {}})
            host["hvds_vpgs"][vpg["name"]] = vpg_summary(vpg)
            members.append(vm["name"])
        groups[name] = {
            "vars": {"hvds_vpg": vpg["name"], "hvds_vpg_state": vpg.get("state"),
                     "hvds_vpg_rpo_seconds": vpg.get("rpo_seconds"), "hvds_site": site},
            "hosts": members,
        }
    return groups, hosts


class InventoryModule(BaseInventoryPlugin, Constructable):
    NAME = "hvds.replication.vpgs"

    def verify_file(self, path):
        return super().verify_file(path) and to_text(path).endswith(FILE_ENDINGS)

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        client = ApiClient(
            to_text(self.get_option("url")), to_text(self.get_option("token")),
            validate_certs=self.get_option("validate_certs"), ca_path=self.get_option("ca_path"),
            timeout=self.get_option("timeout"),
        )
        try:
            site = client.get("site")["name"]
            vpgs = client.get_all("vpgs")
        except HvdsApiError as exc:
            raise AnsibleError("hvds.replication.vpgs: %s" % exc.msg)
        groups, hosts = inventory_of(site, vpgs, self.get_option("group_prefix"))
        for name, hostvars in hosts.items():
            self.inventory.add_host(name)
            for key, value in hostvars.items():
                self.inventory.set_variable(name, key, value)
        for name, group in groups.items():
            self.inventory.add_group(name)
            for key, value in group["vars"].items():
                self.inventory.set_variable(name, key, value)
            for host in group["hosts"]:
                self.inventory.add_child(name, host)
        strict = self.get_option("strict")
        for name, hostvars in hosts.items():
            self._set_composite_vars(self.get_option("compose"), hostvars, name, strict=strict)
            self._add_host_to_composed_groups(self.get_option("groups"), hostvars, name, strict=strict)
            self._add_host_to_keyed_groups(self.get_option("keyed_groups"), hostvars, name, strict=strict)
