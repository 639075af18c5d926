"""Log bundles: the manager's recent log and state, and every host's VDSA status and logs, in
one tar.gz for a support case, with secrets taken out (decision 0015).

What a bundle holds:

    manifest.json              site, version, time, the files, what was redacted and how
    manager/log.txt            the manager's last log records (a ring of RECENT_LINES)
    manager/config.json        its configuration (paths of keys, never their content)
    manager/db/<table>.json    every row of every table, secret columns replaced
    hosts/<host>/status.json   each host's VDSA status (control socket op "status")
    hosts/<host>/tap.log       the last MiB of its tap's log (op "logs": the tap's log_file,
    hosts/<host>/vdsa.log      else the journal of hvds-tap.service), and of its VDSA's
    hosts/<host>/error.txt     instead, when the VDSA could not be asked
    hosts/<host>/logs-error.txt   instead of the logs, when they could not be had

Secrets never reach a bundle: API token and pairing token digests are replaced column by
column, and every file then goes through a scrubber that replaces anything shaped as an hvds
token, a PEM private key, and the value of every secret the database holds. The keys paired
sites are called with, and the pairing CA's, are files of state_dir/pairing that a bundle never
reads (the peers' rows hold only their paths and the fingerprints of public certificates).
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import io
import json
import logging
import re
import tarfile
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import inspect, select

from hvds import __version__
from hvds.manager.commands import Progress
from hvds.manager.db import Base, Host, utcnow
from hvds.manager.site import SiteManager
from hvds.manager.vdsa_client import VdsaError

log = logging.getLogger(__name__)

RECENT_LINES = 20_000
KEEP_BUNDLES = 10
HOST_TIMEOUT = 10.0
LOGS_TIMEOUT = 30.0  # a host's logs may come from its journal
REDACTED = "<redacted>"
# Columns whose values are secrets, or digests of secrets: replaced, whatever their content.
SECRET_COLUMNS = {
    "tokens": {"digest"},
    "pairing_tokens": {"digest"},
}
# Shapes of secrets anywhere in the text: hvds tokens (auth.new_token), PEM private keys.
SECRET_PATTERNS = (
    re.compile(r"hvds_[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S),
)
_FORMAT = logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s")


class RecentLog(logging.Handler):
    """The process's last log records, formatted, for the bundle."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: collections.deque[str] = collections.deque(maxlen=RECENT_LINES)
        self.setFormatter(_FORMAT)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # a record that cannot be formatted is dropped, as logging does
            self.handleError(record)

    def attach(self) -> None:
        root = logging.getLogger()
        if self not in root.handlers:
            root.addHandler(self)


RECENT = RecentLog()


class Scrubber:
    """Takes every known secret value and every secret-shaped string out of a text."""

    def __init__(self, secrets: set[str]) -> None:
        self._secrets = sorted((s for s in secrets if len(s) >= 8), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        for pattern in SECRET_PATTERNS:
            text = pattern.sub(REDACTED, text)
        return text


def _rows(site: SiteManager) -> tuple[dict[str, list[dict[str, Any]]], set[str]]:
    """Every table's rows, secret columns replaced; and the secret values they held."""
    tables: dict[str, list[dict[str, Any]]] = {}
    secrets: set[str] = set()
    with site.store.session() as session:
        for mapper in Base.registry.mappers:
            model = mapper.class_
            table = str(model.__tablename__)
            hidden = SECRET_COLUMNS.get(table, set())
            rows = []
            for row in session.scalars(select(model)):
                values = {c.key: getattr(row, c.key) for c in inspect(model).column_attrs}
                for column in hidden & values.keys():
                    if values[column]:
                        secrets.add(str(values[column]))
                        values[column] = REDACTED
                rows.append(values)
            tables[table] = rows
    return tables, secrets


def _dump(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=_jsonable) + "\n"


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    return repr(value)


async def _host_files(site: SiteManager, host: str) -> tuple[dict[str, str], dict[str, str]]:
    """A host's files in the bundle: its VDSA's status and the tails of its tap's and VDSA's
    logs (or why they could not be had); and where each log was read."""
    files: dict[str, str] = {}
    try:
        answer = await asyncio.wait_for(site.control(host, {"op": "status"}), HOST_TIMEOUT)
        files["status.json"] = _dump(answer)
    except (VdsaError, TimeoutError) as exc:
        files["error.txt"] = f"{exc or 'no answer in time'}\n"
        return files, {}  # not reached: its logs would not be either
    try:
        answer = await asyncio.wait_for(site.control(host, {"op": "logs"}), LOGS_TIMEOUT)
        logs = answer["logs"]
        for service in ("tap", "vdsa"):
            files[f"{service}.log"] = str(logs[service]["text"])
        return files, {service: str(logs[service]["source"]) for service in ("tap", "vdsa")}
    except (VdsaError, TimeoutError, KeyError, TypeError) as exc:
        files["logs-error.txt"] = f"{exc or 'no answer in time'}\n"
        return files, {}


def bundle_dir(site: SiteManager) -> Path:
    return site.config.manager.state_dir / "bundles"


async def collect(site: SiteManager, progress: Progress) -> dict[str, Any]:
    """Make a bundle; the command's result says where it is and what it holds."""
    tables, secrets = await asyncio.to_thread(_rows, site)
    progress(30)
    hosts = sorted(row["name"] for row in tables.get(Host.__tablename__, []))
    answers = await asyncio.gather(*(_host_files(site, host) for host in hosts))
    progress(70)
    files: dict[str, str] = {
        "manager/log.txt": "\n".join(RECENT.lines) + "\n",
        "manager/config.json": _dump(site.config.model_dump(mode="json")),
    }
    files.update({f"manager/db/{table}.json": _dump(rows) for table, rows in tables.items()})
    for host, (host_files, _sources) in zip(hosts, answers, strict=True):
        files.update({f"hosts/{host}/{name}": text for name, text in host_files.items()})
    made = utcnow()
    files["manifest.json"] = _dump({
        "site": site.name, "version": __version__, "created_at": made,
        "files": sorted(files), "hosts": hosts,
        "host_logs": {host: answer[1] for host, answer in zip(hosts, answers, strict=True)},
        "redacted": {"columns": {t: sorted(c) for t, c in SECRET_COLUMNS.items()},
                     "everywhere": "hvds tokens, PEM private keys, every secret of the database"},
    })  # fmt: skip
    name = f"hvds-logs-{site.name}-{made:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}.tar.gz"
    size = await asyncio.to_thread(_write, bundle_dir(site) / name, files, Scrubber(secrets))
    progress(95)
    log.info("log bundle %s: %d files, %d bytes", name, len(files), size)
    return {"bundle": name, "bytes": size, "files": sorted(files), "hosts": hosts}


def _write(path: Path, files: dict[str, str], scrub: Scrubber) -> int:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = path.with_suffix(".part")
    with tarfile.open(partial, "w:gz") as tar:
        for name, text in sorted(files.items()):
            data = scrub(text).encode()
            info = tarfile.TarInfo(f"{path.name.removesuffix('.tar.gz')}/{name}")
            info.size, info.mode, info.mtime = len(data), 0o600, int(utcnow().timestamp())
            tar.addfile(info, io.BytesIO(data))
    partial.chmod(0o600)
    partial.rename(path)
    for old in sorted(path.parent.glob("hvds-logs-*.tar.gz"), key=lambda p: p.stat().st_mtime)[
        :-KEEP_BUNDLES
    ]:
        old.unlink(missing_ok=True)
    return path.stat().st_size


def bundle_path(site: SiteManager, result: dict[str, Any] | None) -> Path | None:
    """The bundle a log_collection command made, if it is still kept."""
    name = (result or {}).get("bundle")
    if not isinstance(name, str) or "/" in name:
        return None
    path = bundle_dir(site) / name
    return path if path.is_file() else None
