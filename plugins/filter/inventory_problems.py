# Copyright: (c) 2025, hvds founding engineers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The filter hvds.replication.inventory_problems: what is wrong with an hvds inventory as a
whole (documentation: inventory_problems.yml beside this file).

Written in Python rather than as Jinja in a playbook: the checks cross hosts and groups (a VPG's
target names a site, whose manager, hypervisor and datastore must exist), which reads and tests
far better here. Addresses are checked with the standard library's ipaddress module.
"""

from __future__ import annotations

import ipaddress
import re

SITE_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
VPG_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
DNS_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


def _is_address(value):
    """An IP address, or a DNS name (whose last label is not all digits: 10.0.0.300 is no name)."""
    if not isinstance(value, str) or not value:
        return False
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        pass
    labels = value.rstrip(".").split(".")
    return (
        len(value) <= 253
        and all(DNS_LABEL.match(label) for label in labels)
        and not labels[-1].isdigit()
    )


def _names(items, key="name"):
    return [item.get(key) for item in items or [] if isinstance(item, dict)]


def _hosts_and_sites(hostvars, managers, hypervisors, problems):
    seen_addresses = {}
    for host in managers + hypervisors:
        values = hostvars.get(host, {})
        site = values.get("hvds_site")
        if site is None:
            problems.append(f"{host}: hvds_site is not set")
        elif not isinstance(site, str) or not SITE_NAME.match(site):
            problems.append(f"{host}: hvds_site {site} is not a name (a-z, 0-9, -; 63 at most)")
        address = values.get("hvds_address")
        if address is None:
            problems.append(f"{host}: hvds_address is not set")
        elif not _is_address(address):
            problems.append(f"{host}: hvds_address {address} is neither an IP address nor a DNS name")
        elif address in seen_addresses and seen_addresses[address] != host:
            problems.append(f"hvds_address {address} is given to more than one host")
        else:
            seen_addresses[address] = host

    site_managers = {}
    for host in managers:
        site_managers.setdefault(hostvars.get(host, {}).get("hvds_site"), []).append(host)
    for site, hosts in sorted(site_managers.items(), key=lambda item: str(item[0])):
        if len(hosts) > 1:
            problems.append(f"site {site} has more than one manager in hvds_managers")
    for host in hypervisors:
        site = hostvars.get(host, {}).get("hvds_site")
        if site not in site_managers:
            problems.append(f"{host}: no host of hvds_managers is the manager of its site {site}")
    for host in managers:
        own = hostvars.get(host, {}).get("hvds_site")
        for peer in hostvars.get(host, {}).get("hvds_replication_link_peers") or []:
            if peer == own:
                problems.append(f"{host}: hvds_replication_link_peers names its own site {peer}")
            elif peer not in site_managers:
                problems.append(
                    f"{host}: hvds_replication_link_peers names {peer}, a site no manager of the"
                    " inventory runs"
                )
    return {site: hosts[0] for site, hosts in site_managers.items()}


def _vms(where, site, vpg, hostvars, hypervisors, problems):
    if not vpg.get("vms"):
        problems.append(f"{where}: no vms")
    for vm in vpg.get("vms") or []:
        about = f"{where}, VM {vm.get('name', '?')}"
        host = vm.get("host")
        if host not in hypervisors:
            problems.append(f"{about}: host {host or '(not set)'} is not in hvds_hypervisors")
            continue
        host_site = hostvars[host].get("hvds_site")
        if host_site != site:
            problems.append(
                f"{about}: host {host} is at site {host_site}, not at {site} where the VPG is"
                " declared"
            )
            continue
        exports = _names(hostvars[host].get("hvds_agent_exports"))
        for disk in vm.get("disks") or []:
            export = disk.get("export") if isinstance(disk, dict) else None
            if export not in exports:
                problems.append(
                    f"{about}: disk {export or '(no export)'} is not an export of {host}"
                    f" (hvds_agent_exports: {', '.join(map(str, exports))})"
                )


def _targets(where, manager, site, vpg, hostvars, hypervisors, managers_of, problems):
    if not vpg.get("targets"):
        problems.append(f"{where}: no targets")
    peers = hostvars[manager].get("hvds_replication_link_peers") or []
    for target in vpg.get("targets") or []:
        target_site = target.get("site")
        host = target.get("host")
        if target_site not in managers_of:
            problems.append(
                f"{where}: target site {target_site or '(not set)'} has no manager in the inventory"
            )
        elif target_site == site:
            problems.append(f"{where}: target site {site} is the VPG's own site")
        elif target_site not in peers and site not in (
            hostvars[managers_of[target_site]].get("hvds_replication_link_peers") or []
        ):
            problems.append(
                f"{where}: target site {target_site} is not paired with {site}"
                " (hvds_replication_link_peers of either manager)"
            )
        elif host not in hypervisors or hostvars[host].get("hvds_site") != target_site:
            problems.append(
                f"{where}: target host {host or '(not set)'} is not a hypervisor of site {target_site}"
            )
        elif target.get("datastore") not in _names(hostvars[host].get("hvds_agent_datastores")):
            problems.append(
                f"{where}: target datastore {target.get('datastore') or '(not set)'} is not in"
                f" hvds_agent_datastores of {host}"
            )


def inventory_problems(hostvars, groups):
    """Every problem of the inventory, as sentences; empty when it is consistent."""
    managers = list(groups.get("hvds_managers") or [])
    hypervisors = list(groups.get("hvds_hypervisors") or [])
    problems = []
    if not managers:
        problems.append("the group hvds_managers is empty: one site manager per site is needed")
    managers_of = _hosts_and_sites(hostvars, managers, hypervisors, problems)
    seen = set()
    for manager in managers:
        site = hostvars[manager].get("hvds_site")
        for vpg in hostvars[manager].get("hvds_protection_groups") or []:
            name = vpg.get("name")
            where = f"{manager}: VPG {name if name is not None else '?'}"
            if not isinstance(name, str) or not VPG_NAME.match(name):
                problems.append(f"{where}: a name ([A-Za-z0-9._-], 63 at most) is needed")
            elif name in seen:
                problems.append(f"{where}: the name is used by another VPG")
            seen.add(name)
            if vpg.get("state", "present") == "absent":
                continue
            _vms(where, site, vpg, hostvars, hypervisors, problems)
            _targets(where, manager, site, vpg, hostvars, hypervisors, managers_of, problems)
    return problems


class FilterModule:
    def filters(self):
        return {"inventory_problems": inventory_problems}
