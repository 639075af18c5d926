# Copyright: (c) 2025, hvds founding engineers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import io
import socket
import ssl
from urllib.error import URLError

import pytest

from ansible_collections.hvds.replication.plugins.module_utils import api
from ansible_collections.hvds.replication.plugins.module_utils.api import (
    ApiClient,
    HvdsApiError,
    backoff_delay,
    connection_error_is_retryable,
    equal_values,
    error_message,
    finish_command,
    minimal_diff,
    parse_error_body,
    pending_command,
    status_is_retryable,
)

TOKEN = "admin-token-0123456789"  # what the `manager` fixture of conftest.py accepts


# --- compare and diff ------------------------------------------------------------------------


def test_minimal_diff_holds_only_the_keys_that_differ():
    current = {"name": "erp", "priority": "medium", "compression": True, "rpo_alert_seconds": 300}
    desired = {"priority": "high", "compression": True, "rpo_alert_seconds": None}
    assert minimal_diff(current, desired) == {"before": {"priority": "medium"}, "after": {"priority": "high"}}


def test_minimal_diff_is_empty_when_nothing_changes_and_for_a_key_the_manager_lacks():
    assert minimal_diff({"a": 1}, {"a": 1}) == {"before": {}, "after": {}}
    assert minimal_diff({}, {"a": 1}) == {"before": {"a": None}, "after": {"a": 1}}
    assert minimal_diff(None, {"a": 1}) == {"before": {"a": None}, "after": {"a": 1}}


def test_numbers_compare_by_value_but_bools_only_equal_bools():
    assert equal_values(1.0, 1)
    assert equal_values(5, 5.0)
    assert not equal_values(1, True)
    assert not equal_values(True, 1)
    assert not equal_values(0, False)
    assert equal_values(False, False)
    assert not equal_values("1", 1)


def test_nested_values_ignore_keys_the_manager_adds_but_not_order_or_length():
    current = [{"name": "erp-db", "host": "host-a1", "disks": [{"export": "d0", "size": 10}]}]
    assert equal_values(current, [{"name": "erp-db", "host": "host-a1", "disks": [{"export": "d0"}]}])
    assert not equal_values(current, [{"name": "erp-db", "host": "host-a2", "disks": [{"export": "d0"}]}])
    assert not equal_values(current, current + current)
    two = [{"export": "d0"}, {"export": "d1"}]
    assert not equal_values(two, list(reversed(two)))
    assert not equal_values(None, [])
    assert not equal_values("x", {"a": 1})


def test_drop_none_removes_unset_suboptions_recursively():
    given = [{"name": "vm", "host": "h", "disks": [{"export": "d", "extra": None}], "note": None}]
    assert api.drop_none(given) == [{"name": "vm", "host": "h", "disks": [{"export": "d"}]}]


# --- retry decisions and backoff --------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_idempotent_requests_are_retried_on_server_errors(method, status):
    assert status_is_retryable(method, status)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422, 501])
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "POST"])
def test_client_errors_are_never_retried(method, status):
    assert not status_is_retryable(method, status)


def test_a_post_is_retried_only_when_the_manager_did_not_take_it():
    assert status_is_retryable("POST", 503)
    assert status_is_retryable("POST", 429)
    for status in (500, 502, 504):
        assert not status_is_retryable("POST", status)


def test_connection_errors():
    assert connection_error_is_retryable("POST", ConnectionRefusedError(111, "refused"))
    assert connection_error_is_retryable("GET", ConnectionResetError(104, "reset"))
    assert connection_error_is_retryable("GET", socket.timeout("timed out"))
    # A reset or a time out may come after the manager acted: a POST is not sent twice.
    assert not connection_error_is_retryable("POST", ConnectionResetError(104, "reset"))
    assert not connection_error_is_retryable("POST", socket.timeout("timed out"))
    # Another try cannot fix a certificate.
    assert not connection_error_is_retryable("GET", ssl.SSLCertVerificationError("bad cert"))


def test_backoff_doubles_up_to_a_maximum_and_honours_retry_after():
    assert [backoff_delay(n) for n in range(7)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert backoff_delay(0, base=0.5) == 0.5
    assert backoff_delay(3, retry_after="7") == 7.0
    assert backoff_delay(0, retry_after="3600") == 30.0
    assert backoff_delay(2, retry_after="Wed, 21 Oct 2015 07:28:00 GMT") == 4.0


# --- error messages ---------------------------------------------------------------------------


def test_error_messages_carry_the_status_meaning_and_the_api_detail():
    assert error_message("GET", "/api/v1/vpgs/erp", 404, "no VPG named erp") == (
        "hvds API GET /api/v1/vpgs/erp: HTTP 404 not found: no VPG named erp")
    assert "HTTP 401 not authenticated" in error_message("GET", "/x", 401, None)
    assert "HTTP 403 forbidden (the token's role may not do this)" in error_message("POST", "/x", 403, "viewer")
    assert error_message("POST", "/x", 418, None) == "hvds API POST /x: HTTP 418 error"


def test_fastapi_validation_lists_become_one_line():
    detail = [{"loc": ["body", "vms", 0, "host"], "msg": "Field required", "type": "missing"},
              {"loc": ["body"], "msg": "a VM is listed twice"}]
    assert error_message("POST", "/api/v1/vpgs", 422, detail) == (
        "hvds API POST /api/v1/vpgs: HTTP 422 invalid request: vms.0.host: Field required; a VM is listed twice")


def test_parse_error_body():
    assert parse_error_body(b'{"detail": "the name exists"}') == "the name exists"
    assert parse_error_body(b"<html>Bad Gateway</html>") == "<html>Bad Gateway</html>"
    assert parse_error_body(b'{"error": "x"}') == '{"error": "x"}'
    assert parse_error_body(b"") is None
    assert parse_error_body(None) is None


# --- the client over real HTTP ----------------------------------------------------------------


def client_for(manager, **kwargs):
    sleeps = []
    client = ApiClient(manager.url + "/", TOKEN, sleep=sleeps.append, **kwargs)
    return client, sleeps


def test_get_sends_the_token_and_decodes_json(manager):
    client, sleeps = client_for(manager)
    assert client.get("site")["name"] == "site-a"
    assert sleeps == []


def test_a_wrong_token_fails_with_the_api_detail_and_is_not_retried(manager):
    client = ApiClient(manager.url, "wrong", sleep=pytest.fail)
    with pytest.raises(HvdsApiError) as caught:
        client.get("site")
    assert caught.value.status == 401
    assert caught.value.detail == "no or wrong token"
    assert caught.value.msg == "hvds API GET /api/v1/site: HTTP 401 not authenticated (missing or wrong token): no or wrong token"


def test_get_is_retried_with_backoff_until_it_succeeds(manager):
    manager.replies = [(503, {"detail": "starting"}, {}), (502, None, {}), (500, {"detail": "oops"}, {})]
    client, sleeps = client_for(manager)
    assert client.get("site")["name"] == "site-a"
    assert sleeps == [1.0, 2.0, 4.0]


def test_retries_end_with_the_last_error(manager):
    manager.replies = [(500, {"detail": "database is locked"}, {})] * 3
    client, sleeps = client_for(manager, retries=2)
    with pytest.raises(HvdsApiError) as caught:
        client.get("site")
    assert caught.value.status == 500
    assert "database is locked" in caught.value.msg
    assert sleeps == [1.0, 2.0]
    assert manager.requests == []


def test_retry_after_from_the_manager_is_honoured(manager):
    manager.replies = [(503, {"detail": "busy"}, {"Retry-After": "3"})]
    client, sleeps = client_for(manager)
    client.get("site")
    assert sleeps == [3.0]


def test_a_post_is_not_sent_again_after_a_500(manager):
    manager.vpgs["erp"] = {"name": "erp", "state": "protected"}
    manager.checkpoints["erp"] = []
    manager.replies = [(500, {"detail": "crashed after the write"}, {})]
    client, sleeps = client_for(manager)
    with pytest.raises(HvdsApiError):
        client.post(("vpgs", "erp", "checkpoints"), {"tag": "t"})
    assert sleeps == []
    assert manager.checkpoints["erp"] == []


def test_a_post_is_sent_again_after_a_503(manager):
    manager.vpgs["erp"] = {"name": "erp", "state": "protected"}
    manager.checkpoints["erp"] = []
    manager.replies = [(503, {"detail": "not yet"}, {})]
    client, sleeps = client_for(manager)
    assert client.post(("vpgs", "erp", "checkpoints"), {"tag": "t"})["tag"] == "t"
    assert sleeps == [1.0]
    assert [cp["tag"] for cp in manager.checkpoints["erp"]] == ["t"]


def test_a_manager_that_is_not_there_is_retried_then_named_in_the_error():
    with socket.socket() as sock:  # a port on which nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sleeps = []
    client = ApiClient("http://127.0.0.1:%d" % port, TOKEN, sleep=sleeps.append, timeout=5)
    with pytest.raises(HvdsApiError) as caught:
        client.post(("vpgs",), {"name": "erp"})
    assert sleeps == [1.0, 2.0, 4.0]
    assert caught.value.status is None
    assert caught.value.msg.startswith(
        "hvds API POST /api/v1/vpgs: cannot reach the site manager at http://127.0.0.1:%d (after 4 tries): " % port)


def test_a_url_without_a_scheme_is_a_clear_error():
    for url in ("manager-a:8443", "manager-a", "ftp://manager-a", "https://manager-a:port", "https://:8443"):
        client = ApiClient(url, TOKEN, sleep=pytest.fail)
        with pytest.raises(HvdsApiError) as caught:
            client.get("site")
        assert caught.value.msg == (
            "hvds API GET /api/v1/site: the url %s cannot be used: it must be http(s)://host[:port]" % url)
    assert api.usable_url("https://manager-a.example.com:8443")
    assert api.usable_url("http://127.0.0.1:8080/")
    assert api.usable_url("https://[::1]:8443")


def test_tls_verification_failures_are_not_retried():
    def opener(*args, **kwargs):
        raise URLError(ssl.SSLCertVerificationError("certificate verify failed"))

    client = ApiClient("https://manager.invalid", TOKEN, opener=opener, sleep=pytest.fail)
    with pytest.raises(HvdsApiError) as caught:
        client.get("site")
    assert "certificate verify failed" in caught.value.msg


def test_path_parts_are_quoted_as_one_segment(manager):
    client = client_for(manager)[0]
    assert client.get_or_none("vpgs", "a/b c") is None
    assert manager.requests[-1][1] == "/api/v1/vpgs/a%2Fb%20c"


def test_get_or_none_raises_other_errors(manager):
    manager.replies = [(403, {"detail": "viewer may not"}, {})]
    client = client_for(manager)[0]
    with pytest.raises(HvdsApiError) as caught:
        client.get_or_none("vpgs", "erp")
    assert caught.value.status == 403


# --- waiting on tracked commands --------------------------------------------------------------


def start_test(manager, client):
    manager.vpgs["erp"] = {"name": "erp", "state": "protected"}
    return client.post(("vpgs", "erp", "failover-test"), {})


def test_wait_command_polls_until_the_command_ends(manager):
    manager.command_polls = 3
    client, sleeps = client_for(manager)
    command = start_test(manager, client)
    assert command["status"] == "running"
    done = client.wait_command(command, timeout=60, interval=0.5)
    assert done["status"] == "succeeded"
    assert sleeps == [0.5, 0.5, 0.5]
    assert manager.vpgs["erp"]["state"] == "testing"


def test_wait_command_times_out_with_the_command_state(manager):
    manager.command_polls = 100
    now = [0.0]
    client = ApiClient(manager.url, TOKEN, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    command = start_test(manager, client)
    with pytest.raises(HvdsApiError) as caught:
        client.wait_command(command, timeout=5, interval=2)
    assert caught.value.msg == "hvds command 1 (failover_test_start) is still running (progress 0%) after 5 seconds"
    assert now[0] == 5.0


def test_finish_command_raises_when_the_command_failed(manager):
    manager.failing_command = "failover_test_start"
    manager.command_polls = 1
    client = client_for(manager)[0]
    command = start_test(manager, client)
    with pytest.raises(HvdsApiError) as caught:
        finish_command(client, command, True, 60)
    assert caught.value.msg == "hvds command 1 (failover_test_start) failed: no target answered"
    assert finish_command(client, {"id": 9, "status": "running"}, False, 60)["status"] == "running"


def test_wait_command_stops_early_when_until_holds(manager):
    manager.command_polls = 100
    client, sleeps = client_for(manager)
    command = start_test(manager, client)
    seen = []

    def until(current):
        seen.append(current["status"])
        return len(seen) == 3

    assert client.wait_command(command, timeout=60, interval=1, until=until)["status"] == "running"
    assert sleeps == [1, 1]
    assert finish_command(client, command, True, 60, until=lambda current: True) == command


def test_pending_command_takes_a_kind_or_several():
    commands = [
        {"id": 5, "vpg": "erp", "kind": "move", "status": "succeeded"},
        {"id": 4, "vpg": "crm", "kind": "failover", "status": "running"},
        {"id": 3, "vpg": "erp", "kind": "failover_commit", "status": "queued"},
        {"id": 2, "vpg": "erp", "kind": "failover", "status": "running"},
    ]
    assert pending_command(commands, "erp", "failover")["id"] == 2
    assert pending_command(commands, "erp", ("failover", "failover_commit"))["id"] == 3
    assert pending_command(commands, "erp", ["move"]) is None
    assert pending_command(commands, "crm", ("failover_commit",)) is None


# --- downloads --------------------------------------------------------------------------------


def test_download_writes_the_body_in_chunks_after_retries(manager):
    manager.command_polls = 1
    client, sleeps = client_for(manager)
    command = client.wait_command(client.post(("logs",)), timeout=60)
    del sleeps[:]
    manager.replies = [(503, {"detail": "busy"}, {})]
    out = io.BytesIO()
    headers, written = client.download(api.api_path("commands", command["id"], "bundle"), out, chunk_size=1000)
    assert out.getvalue() == manager.bundle(command["id"])
    assert written == len(out.getvalue()) > 1000
    assert headers.get("Content-Type") == "application/gzip"
    assert sleeps == [1.0]


def test_a_download_refused_is_an_error_with_the_api_detail(manager):
    client = client_for(manager)[0]
    with pytest.raises(HvdsApiError) as caught:
        client.download(api.api_path("commands", 7, "bundle"), io.BytesIO())
    assert caught.value.msg == "hvds API GET /api/v1/commands/7/bundle: HTTP 404 not found: no log collection 7"


# --- lists in pages ---------------------------------------------------------------------------


def test_next_page_reads_the_link_header():
    assert api.next_page('</api/v1/vpgs?limit=2&offset=2>; rel="next"') == "/api/v1/vpgs?limit=2&offset=2"
    assert api.next_page('</a?o=0>; rel="prev", </a?o=4>; rel=next') == "/a?o=4"
    assert api.next_page('</a?o=0>; rel="prev"') is None
    assert api.next_page(None) is None
    assert api.next_page("") is None


def add_vpgs(manager, count):
    for number in range(count):
        name = "vpg-%03d" % number
        manager.vpgs[name] = {"name": name, "state": "protected"}


def test_get_all_follows_the_pages(manager):
    add_vpgs(manager, 5)
    client = client_for(manager)[0]
    client.page_size = 2
    assert [vpg["name"] for vpg in client.get_all("vpgs")] == ["vpg-%03d" % n for n in range(5)]
    assert [request[1] for request in manager.requests] == [
        "/api/v1/vpgs?limit=2", "/api/v1/vpgs?limit=2&offset=2", "/api/v1/vpgs?limit=2&offset=4"]


def test_get_all_passes_filters_and_takes_an_unpaged_list_whole(manager):
    client = client_for(manager)[0]
    client.page_size = 1
    assert [host["name"] for host in client.get_all("hosts")] == ["host-a1"]
    assert client.get_all("commands", vpg="erp", kind=None) == []
    assert [request[1] for request in manager.requests] == [
        "/api/v1/hosts?limit=1", "/api/v1/commands?limit=1&vpg=erp"]


def test_get_all_stops_on_pages_that_link_back(manager):
    loop = '</api/v1/vpgs?limit=1000>; rel="next"'
    manager.replies = [(200, [{"name": "a"}], {"Link": loop})] * 2
    with pytest.raises(HvdsApiError) as caught:
        client_for(manager)[0].get_all("vpgs")
    assert caught.value.msg == "hvds API GET /api/v1/vpgs?limit=1000: the pages of the list link back to one read already"
