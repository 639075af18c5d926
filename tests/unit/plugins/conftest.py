# Copyright: (c) 2025, hvds founding engineers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Fixtures for the plugins' unit tests.

`manager` is a small site manager speaking docs/api.md over real HTTP on 127.0.0.1: enough of the
API (in memory) for the modules' get -> compare -> change, so that the tests run the modules'
`main()` end to end through ApiClient and ansible.module_utils.urls. The integration tests run
the same modules against the real hvds-manager.
"""

from __future__ import annotations

import copy
import io
import json
import os
import re
import sys
import threading
from contextlib import redirect_stdout
from urllib.parse import parse_qsl, urlencode, urlsplit
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ansible.utils.collection_loader._collection_finder import _AnsibleCollectionFinder

if not any(isinstance(finder, _AnsibleCollectionFinder) for finder in sys.meta_path):
    # ansible-test units installs Ansible's collection loader (its pytest plugin), which loading
    # plugins by their names needs (the inventory plugin's tests); a plain pytest run of the tree
    # (scripts/ansible-check.sh pytest) installs it here, before any test imports the collection.
    _AnsibleCollectionFinder(paths=[os.path.abspath(os.path.join(os.path.dirname(__file__), *[".."] * 6))])._install()

from ansible.module_utils import _internal as module_utils_internal
from ansible.module_utils.common import warnings as ansible_warnings
from ansible.module_utils.testing import patch_module_args

TOKEN = "admin-token-0123456789"
PAIRING_TOKEN = "pairing-token-0123456789"
VPG_DEFAULTS = {
    "rpo_alert_seconds": 300,
    "journal_history_hours": 1.0,
    "journal_size_limit_bytes": 161061273600,
    "checkpoint_interval_seconds": 5.0,
    "priority": "medium",
    "compression": True,
    "bandwidth_limit_bytes": 0,
}
VPG_FIELDS = {"name", "vms", "targets"} | set(VPG_DEFAULTS)
NOW = "2025-01-01T10:00:00Z"


class FakeManager:
    """In-memory state and the routes of the API; `replies` scripts answers for the next requests."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests = []  # (method, path, body) of every request that reached a route
        self.replies = []  # (status, body, headers) answered instead, first in first out
        self.peers = []
        self.hosts = [
            {"name": "host-a1", "state": "up", "version": "0.1.0", "last_seen": NOW,
             "exports": [{"name": "erp-db-disk0", "size": 1 << 30}],
             "datastores": [{"name": "ds1", "path": "/ds1", "total_bytes": 1 << 40, "free_bytes": 1 << 39}],
             "vpgs": {}},
        ]
        self.vpgs = {}
        self.checkpoints = {}
        self.commands = []
        self.page_size = 100  # the default page of the paged lists, as hvds-manager's
        self.command_polls = 2  # GETs of a running command before it ends
        self.failing_command = None  # kind of command that ends failed
        self.images = []  # paths of the restored images at the recovery host

    def changes(self):
        return [(request[0], request[1]) for request in self.requests if request[0] != "GET"]

    def handle(self, method, target, body):
        with self.lock:
            if self.replies:
                return self.replies.pop(0)
            self.requests.append((method, target, body))
            path, query = urlsplit(target).path, dict(parse_qsl(urlsplit(target).query))
            for pattern, route in self.ROUTES:
                match = re.fullmatch(pattern, path)
                if match and route[0] == method:
                    answer = getattr(self, route[1])(body, *match.groups())
                    if path in self.PAGED and answer[0] == 200:
                        answer = self.page(path, query, answer[1])
                    return answer
            return 404, {"detail": "no route %s %s" % (method, path)}, {}

    PAGED = ("/api/v1/vpgs", "/api/v1/commands")

    def page(self, path, query, items):
        """A page of a list as hvds-manager serves /vpgs and /commands: `vpg` filters, `limit`
        and `offset` select, `X-Total-Count` and a `Link rel="next"` header tell the rest."""
        if "vpg" in query:
            items = [item for item in items if item.get("vpg") == query["vpg"]]
        limit, offset = int(query.get("limit", self.page_size)), int(query.get("offset", 0))
        headers = {"X-Total-Count": str(len(items))}
        if offset + limit < len(items):
            following = dict(query, limit=limit, offset=offset + limit)
            headers["Link"] = '<%s?%s>; rel="next"' % (path, urlencode(sorted(following.items())))
        return 200, items[offset:offset + limit], headers

    ROUTES = [
        (r"/api/v1/site", ("GET", "get_site")),
        (r"/api/v1/peers", ("GET", "list_peers")),
        (r"/api/v1/peers", ("POST", "pair")),
        (r"/api/v1/peers/([^/]+)", ("DELETE", "unpair")),
        (r"/api/v1/peers/([^/]+)/topology", ("GET", "topology")),
        (r"/api/v1/hosts", ("GET", "list_hosts")),
        (r"/api/v1/hosts/([^/]+)", ("GET", "get_host")),
        (r"/api/v1/vpgs", ("GET", "list_vpgs")),
        (r"/api/v1/vpgs", ("POST", "create_vpg")),
        (r"/api/v1/vpgs/([^/]+)", ("GET", "get_vpg")),
        (r"/api/v1/vpgs/([^/]+)", ("PUT", "put_vpg")),
        (r"/api/v1/vpgs/([^/]+)", ("DELETE", "delete_vpg")),
        (r"/api/v1/vpgs/([^/]+)/checkpoints", ("GET", "list_checkpoints")),
        (r"/api/v1/vpgs/([^/]+)/checkpoints", ("POST", "take_checkpoint")),
        (r"/api/v1/vpgs/([^/]+)/failover-test", ("POST", "start_test")),
        (r"/api/v1/vpgs/([^/]+)/failover-test", ("DELETE", "stop_test")),
        (r"/api/v1/vpgs/([^/]+)/failover", ("POST", "failover")),
        (r"/api/v1/vpgs/([^/]+)/failover/commit", ("POST", "commit")),
        (r"/api/v1/vpgs/([^/]+)/failover/rollback", ("POST", "rollback")),
        (r"/api/v1/vpgs/([^/]+)/move", ("POST", "move")),
        (r"/api/v1/vpgs/([^/]+)/reverse-protection", ("POST", "reverse")),
        (r"/api/v1/vpgs/([^/]+)/restore", ("POST", "restore")),
        (r"/api/v1/logs", ("POST", "collect_logs")),
        (r"/api/v1/commands", ("GET", "list_commands")),
        (r"/api/v1/commands/(\d+)", ("GET", "get_command")),
        (r"/api/v1/commands/(\d+)/bundle", ("GET", "get_bundle")),
    ]

    def get_site(self, _body):
        up = sum(1 for host in self.hosts if host["state"] == "up")
        return 200, {"name": "site-a", "version": "0.1.0",
                     "health": {"status": "ok", "hosts_up": up, "hosts_down": len(self.hosts) - up, "alerts": []}}, {}

    def list_peers(self, _body):
        return 200, self.peers, {}

    def pair(self, body):
        if body.get("pairing_token") != PAIRING_TOKEN:
            return 400, {"detail": "the pairing token is wrong or used"}, {}
        peer = {"name": "site-b", "url": body["url"], "paired_at": NOW}
        self.peers.append(peer)
        return 201, peer, {}

    def unpair(self, _body, name):
        for peer in self.peers:
            if peer["name"] == name:
                self.peers.remove(peer)
                return 204, None, {}
        return 404, {"detail": "no peer named %s" % name}, {}

    def topology(self, _body, name):
        host = {"name": "host-b1", "state": "up", "datastores": [{"name": "ds1", "free_bytes": 1 << 40}]}
        return 200, {"site": name, "hosts": [host]}, {}

    def list_hosts(self, _body):
        return 200, self.hosts, {}

    def get_host(self, _body, name):
        for host in self.hosts:
            if host["name"] == name:
                return 200, host, {}
        return 404, {"detail": "no host named %s" % name}, {}

    def list_vpgs(self, _body):
        return 200, list(self.vpgs.values()), {}

    def get_vpg(self, _body, name):
        if name not in self.vpgs:
            return 404, {"detail": "no VPG named %s" % name}, {}
        return 200, self.vpgs[name], {}

    def _invalid(self, body):
        unknown = sorted(set(body) - VPG_FIELDS)
        if unknown:
            return 422, {"detail": [{"loc": ["body", key], "msg": "Extra inputs are not permitted"} for key in unknown]}, {}
        return None

    def create_vpg(self, body):
        refused = self._invalid(body)
        if refused:
            return refused
        if body["name"] in self.vpgs:
            return 409, {"detail": "a VPG named %s exists" % body["name"]}, {}
        vpg = dict(VPG_DEFAULTS, **body)
        vpg.update(state="protected", rpo_seconds=None, created_at=NOW, updated_at=NOW)
        self.vpgs[body["name"]] = vpg
        self.checkpoints[body["name"]] = []
        return 201, vpg, {}

    def put_vpg(self, body, name):
        refused = self._invalid(body)
        if refused:
            return refused
        if name not in self.vpgs:
            return 404, {"detail": "no VPG named %s" % name}, {}
        if body.get("name") != name:
            return 400, {"detail": "the name in the path and the body differ"}, {}
        vpg = self.vpgs[name]
        vpg.update(dict(VPG_DEFAULTS, **body))
        vpg["updated_at"] = "2025-01-01T11:00:00Z"
        return 200, vpg, {}

    def delete_vpg(self, _body, name):
        if self.vpgs.pop(name, None) is None:
            return 404, {"detail": "no VPG named %s" % name}, {}
        return 204, None, {}

    def list_checkpoints(self, _body, name):
        if name not in self.vpgs:
            return 404, {"detail": "no VPG named %s" % name}, {}
        return 200, self.checkpoints[name], {}

    def take_checkpoint(self, body, name):
        if name not in self.vpgs:
            return 404, {"detail": "no VPG named %s" % name}, {}
        checkpoint = {"id": 1735725600000000000 + len(self.checkpoints[name]), "time": NOW,
                      "tag": body["tag"], "description": body.get("description", "")}
        self.checkpoints[name].append(checkpoint)
        return 201, checkpoint, {}

    def _command(self, kind, vpg, body=None):
        command = {"id": len(self.commands) + 1, "kind": kind, "vpg": vpg, "status": "running",
                   "progress": 0, "started_at": NOW, "ended_at": None, "result": None, "error": None,
                   "polls": self.command_polls, "body": body or {}}
        self.commands.insert(0, command)
        return 202, self._public(command), {}

    def _recovery(self, kind, name, body=None):
        if name not in self.vpgs:
            return 400, {"detail": "no VPG %s" % name}, {}
        return self._command(kind, name, body)

    def failover(self, body, name):
        return self._recovery("failover", name, body)

    def commit(self, _body, name):
        return self._recovery("failover_commit", name)

    def rollback(self, _body, name):
        return self._recovery("failover_rollback", name)

    def move(self, _body, name):
        return self._recovery("move", name)

    def reverse(self, _body, name):
        return self._recovery("reverse_protection", name)

    def restore(self, body, name):
        return self._recovery("restore_disk", name, body)

    def collect_logs(self, _body):
        return self._command("log_collection", None)

    def get_bundle(self, _body, command_id):
        for command in self.commands:
            if command["id"] == int(command_id) and command["kind"] == "log_collection":
                if command["status"] != "succeeded":
                    return 409, {"detail": "log collection %s is %s" % (command_id, command["status"])}, {}
                return 200, self.bundle(command["id"]), {"Content-Type": "application/gzip"}
        return 404, {"detail": "no log collection %s" % command_id}, {}

    @staticmethod
    def bundle(command_id):
        """The bytes of the bundle of a log collection (not a real tar.gz: bytes of every value)."""
        return bytes(range(256)) * 64 + b"bundle %d" % command_id

    def start_test(self, _body, name):
        if self.vpgs[name]["state"] == "testing":
            return 409, {"detail": "a failover test is running"}, {}
        return self._command("failover_test_start", name)

    def stop_test(self, _body, name):
        if self.vpgs[name]["state"] != "testing":
            return 409, {"detail": "no failover test is running"}, {}
        return self._command("failover_test_stop", name)

    @staticmethod
    def _public(command):
        return dict((key, value) for key, value in command.items() if key not in ("polls", "body"))

    # The states a recovery command needs the VPG in (as SourceRecovery checks them).
    NEEDS = {
        "failover": ("syncing", "protected", "failing_over"),
        "failover_commit": ("failing_over", "failed_over"),
        "failover_rollback": ("failing_over",),
        "move": ("protected",),
        "reverse_protection": ("failed_over",),
    }

    def _advance(self, command):
        """One poll of a running command: it ends after `command_polls` polls. A failover is live
        (the VPG failing_over, progress 60) from its first poll; with auto_commit_seconds it
        ends only after `command_polls` more polls, committed."""
        if command["status"] != "running":
            return self._public(command)
        vpg = self.vpgs.get(command["vpg"])
        kind = command["kind"]
        if command["progress"] == 0 and kind in self.NEEDS and vpg["state"] not in self.NEEDS[kind]:
            command.update(status="failed", ended_at=NOW, error="VPG %s is %s; this needs it %s"
                           % (command["vpg"], vpg["state"], " or ".join(self.NEEDS[kind])))
            return self._public(command)
        if kind == "failover" and command["progress"] == 0:
            vpg["state"] = "failing_over"
            command["progress"] = 60
            if command["body"].get("auto_commit_seconds") is not None:
                command["polls"] += self.command_polls
        command["polls"] -= 1
        if command["polls"] > 0:
            return self._public(command)
        command.update(progress=100, ended_at=NOW)
        if kind == self.failing_command:
            command.update(status="failed", error="no target answered")
            return self._public(command)
        try:
            result = getattr(self, "_end_" + kind)(command, vpg)
        except ValueError as exc:
            command.update(status="failed", error=str(exc))
            return self._public(command)
        command.update(status="succeeded", result=result)
        return self._public(command)

    def _end_failover_test_start(self, _command, vpg):
        vpg["state"] = "testing"
        return {}

    def _end_failover_test_stop(self, _command, vpg):
        vpg["state"] = "protected"
        return {}

    def _end_failover(self, command, vpg):
        checkpoint = {"id": 1735725600000000000, "tag": command["body"].get("tag") or ""}
        views = [{"disk": disk["export"], "uri": "nbd://127.0.0.1:10810/" + disk["export"]}
                 for vm in vpg.get("vms", []) for disk in vm["disks"]]
        if command["body"].get("auto_commit_seconds") is not None and vpg["state"] == "failing_over":
            vpg["state"] = "failed_over"
        return {"kind": "failover", "state": "open", "checkpoint": checkpoint, "views": views, "vms": []}

    def _end_failover_commit(self, _command, vpg):
        vpg["state"] = "failed_over"
        return {"kind": "failover", "state": "committed", "mirrors": {}, "uris": {}, "merged_bytes": 0}

    def _end_failover_rollback(self, _command, vpg):
        vpg["state"] = "syncing"
        return {"vms": [], "discarded_bytes": 65536, "source_attached": {}}

    def _end_move(self, _command, vpg):
        vpg["state"] = "failed_over"
        return {"checkpoint": {"id": 1735725600000000001, "tag": "move-20250101T100000"},
                "state": "committed", "mirrors": {}, "uris": {}}

    def _end_reverse_protection(self, _command, vpg):
        site = vpg["targets"][0]["site"]
        vpg["reverse_site"] = site
        return {"vpg": vpg["name"], "site": site, "state": "initializing"}

    def _end_restore_disk(self, command, _vpg):
        body = command["body"]
        path = "/srv/%s/restores/%s.raw" % (body["datastore"], body["name"])
        if path in self.images:
            raise ValueError("%s exists: restore under another name" % path)
        self.images.append(path)
        return {"path": path, "size": 1 << 30, "checkpoint": 1735725600000000000}

    def _end_log_collection(self, command, _vpg):
        name = "hvds-logs-site-a-20250101T100000-%d.tar.gz" % command["id"]
        return {"bundle": name, "bytes": len(self.bundle(command["id"])), "files": ["manifest.json"],
                "hosts": ["host-a1"]}

    def list_commands(self, _body):
        return 200, [self._public(command) for command in self.commands], {}

    def get_command(self, _body, command_id):
        for command in self.commands:
            if command["id"] == int(command_id):
                return 200, self._advance(command), {}
        return 404, {"detail": "no command %s" % command_id}, {}


class Handler(BaseHTTPRequestHandler):
    fake = None

    def log_message(self, *args):  # quiet
        pass

    def _serve(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        if self.headers.get("Authorization") != "Bearer " + TOKEN:
            status, reply, headers = 401, {"detail": "no or wrong token"}, {}
        else:
            status, reply, headers = self.fake.handle(self.command, self.path, body)
        if isinstance(reply, bytes):
            data = reply
        else:
            data = b"" if reply is None else json.dumps(reply).encode()
            if data:
                headers = dict(headers, **{"Content-Type": "application/json"})
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _serve


@pytest.fixture
def manager():
    """A FakeManager serving on 127.0.0.1; `manager.url` is its base URL."""
    fake = FakeManager()
    handler = type("BoundHandler", (Handler,), {"fake": fake})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    fake.url = "http://127.0.0.1:%d" % server.server_address[1]
    yield fake
    server.shutdown()
    server.server_close()


@pytest.fixture
def run_module(manager, monkeypatch):
    """Run a module's main() with the given args against `manager`: its result dict.

    `check=True` and `diff=True` run it as `--check` and `--diff` do; `connect=False` leaves out
    `url` and `token`. Retries do not sleep.
    """
    monkeypatch.setattr("time.sleep", lambda seconds: None)
    # A module reports its warnings in its result; once controller code is imported in the same
    # process (the inventory plugin's tests) they would go to the controller's display instead.
    monkeypatch.setattr(module_utils_internal, "is_controller", False)

    def run(module, args, check=False, diff=False, connect=True):
        full = dict(_ansible_check_mode=check, _ansible_diff=diff)
        if connect:
            full.update(url=manager.url, token=TOKEN)
        full.update(copy.deepcopy(args))
        # Warnings and deprecations are gathered process-wide until a module exits: start afresh.
        ansible_warnings._global_warnings.clear()
        ansible_warnings._global_deprecations.clear()
        out = io.StringIO()
        with patch_module_args(full), redirect_stdout(out), pytest.raises(SystemExit):
            module.main()
        return json.loads(out.getvalue())

    return run
