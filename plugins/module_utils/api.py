# Copyright: (c) 2025, hvds founding engineers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The one place where the hvds.replication modules talk to a site manager.

Every module builds an `HvdsModule` (connection options, check mode, diff) and calls the site
manager's REST API v1 through its `ApiClient`. The helpers here raise `HvdsApiError`; a module's
`main()` turns it into one `fail_json` (see `HvdsModule.run`).
"""

from __future__ import annotations

import json
import re
import ssl
import time
from http.client import HTTPException
from urllib.error import HTTPError, URLError
from urllib.parse import quote, urlencode, urlparse

from ansible.module_utils.basic import AnsibleModule, env_fallback
from ansible.module_utils.common.text.converters import to_text
from ansible.module_utils.urls import open_url

API_PREFIX = "/api/v1"

# Shared by every module; documented by the hvds.replication.connection doc fragment.
CONNECTION_ARGSPEC = dict(
    url=dict(type="str", required=True, fallback=(env_fallback, ["HVDS_URL"])),
    token=dict(type="str", required=True, no_log=True, fallback=(env_fallback, ["HVDS_TOKEN"])),
    validate_certs=dict(type="bool", default=True),
    ca_path=dict(type="path"),
    timeout=dict(type="float", default=30.0),
)

# Statuses that mean "try again later": the request was not carried out, or may safely be repeated.
RETRY_STATUSES = frozenset((429, 500, 502, 503, 504))
# Of those, the ones after which a POST (which is not idempotent) may be sent again: the server says
# it did not take the request.
RETRY_STATUSES_POST = frozenset((429, 503))
IDEMPOTENT_METHODS = frozenset(("GET", "HEAD", "OPTIONS", "PUT", "DELETE"))

STATUS_MEANINGS = {
    400: "invalid request",
    401: "not authenticated (missing or wrong token)",
    403: "forbidden (the token's role may not do this)",
    404: "not found",
    409: "conflict",
    422: "invalid request",
    429: "too many requests",
    500: "site manager error",
    502: "bad gateway",
    503: "site manager unavailable",
    504: "gateway timeout",
}

COMMAND_END_STATUSES = frozenset(("succeeded", "failed", "cancelled"))


class HvdsApiError(Exception):
    """A request to the site manager failed; `msg` is what the user reads."""

    def __init__(self, msg, status=None, detail=None, method=None, url=None):
        super().__init__(msg)
        self.msg = msg
        self.status = status
        self.detail = detail
        self.method = method
        self.url = url

    def to_result(self):
        """The keys `fail_json` reports besides `msg`."""
        result = {}
        for key in ("status", "detail", "method", "url"):
            value = getattr(self, key)
            if value is not None:
                result[key] = value
        return result


def api_path(*parts):
    """`/api/v1/<part>/<part>...` with each part quoted as one path segment."""
    return API_PREFIX + "".join("/" + quote(to_text(part), safe="") for part in parts)


def format_detail(detail):
    """The API's `detail` as one line: a string as is, FastAPI's validation list as `loc: msg`."""
    if isinstance(detail, list):
        items = []
        for item in detail:
            if isinstance(item, dict) and "msg" in item:
                loc = ".".join(to_text(part) for part in item.get("loc", ()) if part != "body")
                items.append("%s: %s" % (loc, item["msg"]) if loc else to_text(item["msg"]))
            else:
                items.append(to_text(item))
        return "; ".join(items)
    if detail is None:
        return ""
    return to_text(detail)


def error_message(method, path, status, detail):
    """`hvds API GET /api/v1/vpgs/erp: HTTP 404 not found: no VPG named erp`."""
    text = "hvds API %s %s: HTTP %s %s" % (method, path, status, STATUS_MEANINGS.get(status, "error"))
    detail = format_detail(detail)
    if detail:
        text += ": " + detail
    return text


def parse_error_body(body):
    """The `detail` of an error body (`{"detail": ...}`), or the body's text when it is not JSON."""
    text = to_text(body or b"", errors="surrogate_or_replace").strip()
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return text[:500]
    if isinstance(data, dict) and "detail" in data:
        return data["detail"]
    return text[:500]


def connection_error_is_retryable(method, reason):
    """Whether a request that failed without an HTTP answer may be sent again.

    TLS failures never are (trying again cannot fix a certificate). A refused connection means the
    request never reached the manager, so any method may be repeated; other failures (reset, time
    out) may have happened after the manager acted, so only idempotent methods are repeated.
    """
    if isinstance(reason, (ssl.SSLError, ssl.CertificateError)):
        return False
    if isinstance(reason, ConnectionRefusedError):
        return True
    return method in IDEMPOTENT_METHODS


def status_is_retryable(method, status):
    """Whether an HTTP error status may be answered by sending the same request again."""
    if method in IDEMPOTENT_METHODS:
        return status in RETRY_STATUSES
    return status in RETRY_STATUSES_POST


def backoff_delay(attempt, base=1.0, maximum=30.0, retry_after=None):
    """Seconds to wait before retry number `attempt` (0 for the first): doubling from `base`,
    at most `maximum`; a numeric `Retry-After` header from the server wins, within `maximum`."""
    if retry_after is not None:
        try:
            return min(max(float(retry_after), 0.0), maximum)
        except (TypeError, ValueError):
            pass
    return min(base * (2 ** attempt), maximum)


def next_page(link):
    """The target of the `rel="next"` link of a `Link` header (a path under the manager's URL), or None."""
    for match in re.finditer(r'<([^>]*)>\s*;([^,]*)', link or ""):
        if re.search(r'\brel="?next"?', match.group(2)):
            return match.group(1)
    return None


def usable_url(url):
    """Whether `url` is http(s)://host[:port][/path] (urllib would take `host:8443` for a scheme)."""
    parsed = urlparse(url)
    try:
        port = parsed.port  # raises ValueError for a port that is no number or out of range
    except ValueError:
        return False
    return parsed.scheme in ("http", "https") and bool(parsed.hostname) and port != 0


class ApiClient:
    """A small client for the site manager's REST API v1 on top of ansible.module_utils.urls."""

    # Items a list asks for at once (the manager serves at most 1000).
    page_size = 1000

    def __init__(self, url, token, validate_certs=True, ca_path=None, timeout=30.0,
                 retries=3, backoff=1.0, backoff_max=30.0, opener=None, sleep=None, clock=None):
        self.base_url = url.rstrip("/")
        self.token = token
        self.validate_certs = validate_certs
        self.ca_path = ca_path
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.backoff_max = backoff_max
        self._open = opener or open_url
        self._sleep = sleep or time.sleep
        self._clock = clock or time.monotonic

    @classmethod
    def from_params(cls, params, **kwargs):
        """A client from a module's connection parameters."""
        return cls(params["url"], params["token"], validate_certs=params["validate_certs"],
                   ca_path=params["ca_path"], timeout=params["timeout"], **kwargs)

    def request(self, method, path, body=None):
        """Send one request, retrying what may be retried; the decoded JSON answer, or None."""
        return self.exchange(method, path, body)[0]

    def exchange(self, method, path, body=None):
        """`request`, answering `(decoded JSON or None, the response's headers)`."""
        method = method.upper()
        data = None
        headers = {"Accept": "application/json"}
        if body is not None:
            data = json.dumps(body)
            headers["Content-Type"] = "application/json"
        response = self._send(method, path, data, headers)
        return self._decode(method, path, response.read()), response.headers

    def download(self, path, out, accept="application/octet-stream", chunk_size=1 << 20):
        """`GET path`, its body written to the binary file object `out` (retried like any GET,
        until the answer starts); the response's headers and the number of bytes written."""
        response = self._send("GET", path, None, {"Accept": accept})
        written = 0
        while True:
            try:
                chunk = response.read(chunk_size)
            except (OSError, HTTPException) as exc:
                raise HvdsApiError("hvds API GET %s: the download broke off after %d bytes: %s"
                                   % (path, written, to_text(exc)), method="GET", url=self.base_url + path)
            if not chunk:
                return response.headers, written
            out.write(chunk)
            written += len(chunk)

    def _send(self, method, path, data, headers):
        """Open the request, retrying what may be retried; the response, or HvdsApiError."""
        url = self.base_url + path
        if not usable_url(self.base_url):
            raise HvdsApiError("hvds API %s %s: the url %s cannot be used: it must be http(s)://host[:port]"
                               % (method, path, self.base_url), method=method, url=url)
        headers = dict(headers, Authorization="Bearer %s" % self.token)
        attempt = 0
        while True:
            try:
                return self._open(url, data=data, headers=headers, method=method,
                                  validate_certs=self.validate_certs, ca_path=self.ca_path,
                                  timeout=self.timeout, follow_redirects="safe")
            except HTTPError as exc:
                status = exc.code
                detail = parse_error_body(_read_quietly(exc))
                retry_after = exc.headers.get("Retry-After") if exc.headers is not None else None
                if attempt < self.retries and status_is_retryable(method, status):
                    self._sleep(backoff_delay(attempt, self.backoff, self.backoff_max, retry_after))
                    attempt += 1
                    continue
                raise HvdsApiError(error_message(method, path, status, detail), status=status,
                                   detail=detail, method=method, url=url)
            except (URLError, OSError) as exc:
                reason = exc.reason if isinstance(exc, URLError) else exc
                if attempt < self.retries and connection_error_is_retryable(method, reason):
                    self._sleep(backoff_delay(attempt, self.backoff, self.backoff_max))
                    attempt += 1
                    continue
                tries = " (after %d tries)" % (attempt + 1) if attempt else ""
                raise HvdsApiError("hvds API %s %s: cannot reach the site manager at %s%s: %s"
                                   % (method, path, self.base_url, tries, to_text(reason)),
                                   method=method, url=url)

    @staticmethod
    def _decode(method, path, raw):
        text = to_text(raw or b"", errors="surrogate_or_strict").strip()
        if not text:
            return None
        try:
            return json.loads(text)
        except ValueError:
            raise HvdsApiError("hvds API %s %s: the answer is not JSON: %s" % (method, path, text[:200]),
                               method=method)

    def get(self, *parts):
        return self.request("GET", api_path(*parts))

    def get_all(self, *parts, **query):
        """Every item of a list that the manager may serve in pages: the first page asks for
        `page_size` items, the next ones are where its `Link: <...>; rel="next"` header says."""
        query = dict((key, value) for key, value in query.items() if value is not None)
        query["limit"] = self.page_size
        path = api_path(*parts) + "?" + urlencode(sorted(query.items()))
        items = []
        seen = set()
        while path is not None:
            if path in seen:
                raise HvdsApiError("hvds API GET %s: the pages of the list link back to one read already" % path)
            seen.add(path)
            page, headers = self.exchange("GET", path)
            items.extend(page)
            path = next_page(headers.get("Link") if headers is not None else None)
        return items

    def get_or_none(self, *parts):
        """The resource, or None when the manager answers 404."""
        try:
            return self.get(*parts)
        except HvdsApiError as exc:
            if exc.status == 404:
                return None
            raise

    def post(self, parts, body=None):
        return self.request("POST", api_path(*parts), body if body is not None else {})

    def put(self, parts, body):
        return self.request("PUT", api_path(*parts), body)

    def delete(self, *parts):
        return self.request("DELETE", api_path(*parts))

    def wait_command(self, command, timeout, interval=1.0, until=None):
        """Poll `GET /commands/{id}` until the command has ended, or until `until(command)` (when
        given) is true of the command as last read; the command as last read.

        Raises HvdsApiError when it is still queued or running after `timeout` seconds.
        """
        deadline = self._clock() + timeout
        while command.get("status") not in COMMAND_END_STATUSES:
            if until is not None and until(command):
                return command
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise HvdsApiError(
                    "hvds command %s (%s) is still %s (progress %s%%) after %s seconds"
                    % (command.get("id"), command.get("kind"), command.get("status"),
                       command.get("progress"), timeout),
                    detail=command)
            self._sleep(min(interval, remaining))
            command = self.get("commands", command["id"])
        return command


def read_items(client, collection, name=None, **query):
    """`GET /<collection>` as a list (every page of it, filtered by `query`); with a name,
    `[the item]`, or `[]` when there is none."""
    if name is None:
        return client.get_all(collection, **query)
    item = client.get_or_none(collection, name)
    return [] if item is None else [item]


def pending_command(commands, vpg, kinds):
    """The newest command of the VPG, of one of `kinds` (a kind or a tuple of them), that has not
    ended (`commands` newest first, as the manager lists them), or None."""
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    for command in commands:
        if (command.get("vpg") == vpg and command.get("kind") in kinds
                and command.get("status") not in COMMAND_END_STATUSES):
            return command
    return None


def finish_command(client, command, wait, timeout, until=None):
    """The command as it ended when `wait` (or as it was when `until(command)` held), else as it
    is; raises when it failed or was cancelled."""
    if wait:
        command = client.wait_command(command, timeout, until=until)
    if command.get("status") in ("failed", "cancelled"):
        raise HvdsApiError("hvds command %s (%s) %s: %s"
                           % (command.get("id"), command.get("kind"), command["status"], command.get("error")),
                           detail=command)
    return command


def _read_quietly(exc):
    try:
        return exc.read()
    except (OSError, HTTPException):  # the body is only a nicety
        return None


def equal_values(current, desired):
    """Whether the manager's `current` value already is what the user's `desired` value says.

    Dicts match when every key the user gave (not None) matches: keys the manager adds on read are
    not the user's concern. Lists match element by element, in order. Numbers compare by value
    (`1` equals `1.0`, but a bool only equals a bool).
    """
    if isinstance(desired, dict):
        if not isinstance(current, dict):
            return False
        return all(equal_values(current.get(key), value) for key, value in desired.items() if value is not None)
    if isinstance(desired, (list, tuple)):
        if not isinstance(current, (list, tuple)) or len(current) != len(desired):
            return False
        return all(equal_values(have, want) for have, want in zip(current, desired))
    if isinstance(desired, bool) or isinstance(current, bool):
        return isinstance(desired, bool) and isinstance(current, bool) and desired == current
    if isinstance(desired, (int, float)) and isinstance(current, (int, float)):
        return float(desired) == float(current)
    return current == desired


def minimal_diff(current, desired):
    """`{"before": {...}, "after": {...}}` holding only the top-level keys whose desired value (not
    None) differs from the current one; both dicts are empty when nothing is to change."""
    before = {}
    after = {}
    current = current or {}
    for key, value in desired.items():
        if value is None:
            continue
        if not equal_values(current.get(key), value):
            before[key] = current.get(key)
            after[key] = value
    return {"before": before, "after": after}


def drop_none(data):
    """A copy of `data` without the keys whose value is None, recursively."""
    if isinstance(data, dict):
        return dict((key, drop_none(value)) for key, value in data.items() if value is not None)
    if isinstance(data, list):
        return [drop_none(item) for item in data]
    return data


class HvdsModule(AnsibleModule):
    """AnsibleModule with the connection options of every hvds.replication module and a client."""

    def __init__(self, argument_spec=None, **kwargs):
        spec = dict(CONNECTION_ARGSPEC)
        spec.update(argument_spec or {})
        super().__init__(argument_spec=spec, **kwargs)
        self.client = ApiClient.from_params(self.params)

    def run(self, operation):
        """Call `operation(self)` and exit with the dict it returns; one `fail_json` on an error.

        The result carries `diff` only in diff mode (`--diff`), where the operation provides one.
        """
        try:
            result = operation(self)
        except HvdsApiError as exc:
            self.fail_json(msg=exc.msg, **exc.to_result())
        if not self._diff:
            result.pop("diff", None)
        self.exit_json(**result)
