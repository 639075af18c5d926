# Copyright: (c) 2025, hvds founding engineers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import pytest

from ansible_collections.hvds.replication.plugins.module_utils.api import HvdsApiError
from ansible_collections.hvds.replication.plugins.modules import site_info, site_pair
from ansible_collections.hvds.replication.plugins.modules.site_pair import find_peer, same_url

PAIRING_TOKEN = "pairing-token-0123456789"  # what the `manager` fixture accepts, once
PEER_URL = "https://manager-b.example.com:8443"


def test_same_url():
    assert same_url("https://Manager-B.example.com:8443/", "https://manager-b.example.com:8443")
    assert same_url("HTTPS://m:1/api", "https://m:1/api/")
    assert not same_url("https://m:1/API", "https://m:1/api")
    assert not same_url("https://m:1", "https://m:2")


def test_find_peer_by_name_then_url():
    peers = [{"name": "site-b", "url": PEER_URL}, {"name": "site-c", "url": "https://c"}]
    assert find_peer(peers, name="site-c")["url"] == "https://c"
    assert find_peer(peers, url=PEER_URL + "/")["name"] == "site-b"
    assert find_peer(peers, name="site-d", url="https://c")["name"] == "site-c"
    assert find_peer(peers, name="site-d") is None
    with pytest.raises(HvdsApiError) as caught:
        find_peer(peers, name="site-b", url="https://elsewhere")
    assert caught.value.msg == ("site site-b is paired at %s, not https://elsewhere; unpair it first (state=absent)"
                                % PEER_URL)


def test_pair_once_then_unpair(manager, run_module):
    args = dict(name="site-b", peer_url=PEER_URL, pairing_token=PAIRING_TOKEN)
    checked = run_module(site_pair, args, check=True, diff=True)
    assert checked["changed"] is True
    assert checked["diff"] == {"before": {}, "after": {"name": "site-b", "url": PEER_URL}}
    assert manager.peers == []

    paired = run_module(site_pair, args)
    assert paired["changed"] is True
    assert paired["peer"]["name"] == "site-b"
    assert PAIRING_TOKEN not in repr(paired)

    # The one-time token is used up; a second run must not need it.
    again = run_module(site_pair, args)
    assert again["changed"] is False
    assert [peer["name"] for peer in run_module(site_info, {})["peers"]] == ["site-b"]

    unpaired = run_module(site_pair, dict(name="site-b", state="absent"), diff=True)
    assert unpaired["changed"] is True
    assert unpaired["diff"] == {"before": {"name": "site-b", "url": PEER_URL}, "after": {}}
    assert manager.peers == []
    assert run_module(site_pair, dict(name="site-b", state="absent"))["changed"] is False


def test_a_peer_whose_name_differs_is_paired_with_a_warning(manager, run_module):
    paired = run_module(site_pair, dict(name="site-x", peer_url=PEER_URL, pairing_token=PAIRING_TOKEN))
    assert paired["changed"] is True
    assert len(paired["warnings"]) == 1
    # ansible-core 2.19 returns warnings as structured events; the text is in them.
    assert "paired with the site at %s, whose name is site-b, not site-x" % PEER_URL in repr(paired["warnings"])


def test_pairing_needs_url_and_token(manager, run_module):
    result = run_module(site_pair, dict(name="site-b"))
    assert result["failed"] is True
    assert "peer_url" in result["msg"] and "pairing_token" in result["msg"]
    assert manager.requests == []


def test_a_wrong_pairing_token_fails_with_the_detail(manager, run_module):
    result = run_module(site_pair, dict(peer_url=PEER_URL, pairing_token="wrong-token-000"))
    assert result["failed"] is True
    assert result["msg"] == "hvds API POST /api/v1/peers: HTTP 400 invalid request: the pairing token is wrong or used"
