#!/usr/bin/python
# Copyright: (c) 2025, hvds founding engineers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: site_pair
short_description: Pair a site with a peer site, or unpair them
version_added: 0.1.0
description:
  - Pairing lets two sites' managers talk (topology, replication targets, recovery). The peer's
    manager hands out a one-time pairing token (C(POST /api/v1/pairing-tokens) there); this
    module gives it to this site's manager, which pairs with the peer at O(peer_url).
  - In pairing the two managers exchange the token for mutual-TLS credentials, each signing a
    client certificate for the other with a pairing CA of its own; they call each other with
    those certificates from then on. Both managers must serve their API over TLS.
  - A peer is known by its site name, which pairing learns from the peer, and by its URL. With
    V(present), nothing is done when a peer with the same URL (or the O(name) given) is already
    paired, so the one-time token is not needed again.
  - With V(absent), the pair is removed on both sides when the peer answers.
author:
  - hvds founding engineers (!UNKNOWN)
options:
  name:
    description:
      - Site name of the peer.
      - With V(present) it is checked against what the peer says its name is; with V(absent) it
        (or O(peer_url)) says which peer to unpair.
    type: str
  peer_url:
    description:
      - URL of the peer's site manager, for example V(https://manager-b.example.com:8443).
      - Required to pair. (O(url) is this site's manager, as in every module.)
    type: str
  pairing_token:
    description: The one-time pairing token the peer's manager handed out. Required to pair.
    type: str
  ca_pem:
    description: PEM of the CA that signed the peer manager's certificate, when this site does not trust it yet.
    type: str
  state:
    description: V(present) pairs, V(absent) unpairs.
    type: str
    choices: [present, absent]
    default: present
extends_documentation_fragment:
  - hvds.replication.connection
seealso:
  - module: hvds.replication.site_info
"""

EXAMPLES = r"""
- name: Get a pairing token from site B
  ansible.builtin.uri:
    url: https://manager-b.example.com:8443/api/v1/pairing-tokens
    method: POST
    headers:
      Authorization: "Bearer {{ hvds_admin_token_b }}"
    status_code: 200
  register: pairing
  no_log: true

- name: Pair site A with site B
  hvds.replication.site_pair:
    url: https://manager-a.example.com:8443
    token: "{{ hvds_admin_token_a }}"
    name: site-b
    peer_url: https://manager-b.example.com:8443
    pairing_token: "{{ pairing.json.token }}"

- name: Unpair them
  hvds.replication.site_pair:
    name: site-b
    state: absent
"""

RETURN = r"""
peer:
  description: The peer as this site's manager lists it; empty after V(state=absent).
  returned: always
  type: dict
  contains:
    name:
      description: Site name of the peer.
      type: str
      sample: site-b
    url:
      description: URL of its manager.
      type: str
      sample: https://manager-b.example.com:8443
    paired_at:
      description: When the sites were paired (RFC 3339, UTC).
      type: str
      sample: "2025-01-01T10:00:00Z"
diff:
  description: The pair before and after (only with C(--diff)).
  returned: when diff mode is on
  type: dict
  sample: {before: {}, after: {name: site-b, url: https://manager-b.example.com:8443}}
"""

from ansible_collections.hvds.replication.plugins.module_utils.api import HvdsApiError, HvdsModule


def same_url(left, right):
    """URLs equal but for a trailing slash and the case of scheme and host."""
    def norm(url):
        scheme, sep, rest = url.rstrip("/").partition("://")
        host, slash, path = rest.partition("/")
        return scheme.lower() + sep + host.lower() + slash + path
    return norm(left) == norm(right)


def find_peer(peers, name=None, url=None):
    """The paired peer with this name, else with this URL; raises when the name is paired at
    another URL (unpair it first)."""
    for peer in peers:
        if name is not None and peer["name"] == name:
            if url is not None and not same_url(peer["url"], url):
                raise HvdsApiError("site %s is paired at %s, not %s; unpair it first (state=absent)"
                                   % (name, peer["url"], url))
            return peer
    for peer in peers:
        if url is not None and same_url(peer["url"], url):
            return peer
    return None


def shown(peer):
    return dict((key, peer[key]) for key in ("name", "url") if peer.get(key) is not None)


def run(module):
    client = module.client
    params = module.params
    name = params["name"]
    url = params["peer_url"]
    current = find_peer(client.get("peers"), name, url)
    if params["state"] == "absent":
        if current is None:
            return dict(changed=False, peer={}, diff={"before": {}, "after": {}})
        if not module.check_mode:
            client.delete("peers", current["name"])
        return dict(changed=True, peer={}, diff={"before": shown(current), "after": {}})
    if current is not None:
        return dict(changed=False, peer=current, diff={"before": {}, "after": {}})
    wanted = {"name": name, "url": url}
    if module.check_mode:
        peer = shown(wanted)
    else:
        body = {"url": url, "pairing_token": params["pairing_token"]}
        if params["ca_pem"]:
            body["ca_pem"] = params["ca_pem"]
        peer = client.post(("peers",), body)
        if name is not None and peer.get("name") != name:
            module.warn("paired with the site at %s, whose name is %s, not %s" % (url, peer.get("name"), name))
    return dict(changed=True, peer=peer, diff={"before": {}, "after": shown(dict(wanted, **peer))})


def main():
    module = HvdsModule(
        argument_spec=dict(
            name=dict(type="str"),
            peer_url=dict(type="str"),
            pairing_token=dict(type="str", no_log=True),
            ca_pem=dict(type="str"),
            state=dict(type="str", choices=["present", "absent"], default="present"),
        ),
        required_if=[
            ("state", "present", ["peer_url", "pairing_token"]),
            ("state", "absent", ["name", "peer_url"], True),
        ],
        supports_check_mode=True,
    )
    module.run(run)


if __name__ == "__main__":
    main()
