"""The host's registration and heartbeat at its site manager.

Every ``heartbeat_interval`` the VDSA tells the manager who it is, how to reach it, what disks
its tap serves, what room its datastores have, and its replication state. The first heartbeat
registers the host; the manager marks a host down when they stop, and pushes the host's VPGs
(``configure``) when the digest it reports is not the one the manager expects.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import ssl
from collections.abc import Callable
from typing import Any

import httpx

from hvds import __version__
from hvds.settings import ConfigError
from hvds.tap.config import drop_ins, served_exports
from hvds.tap.config import load_config as load_tap_config
from hvds.vdsa.config import ManagerLink, VdsaConfig

log = logging.getLogger(__name__)


def host_report(config: VdsaConfig, status: dict[str, Any]) -> dict[str, Any]:
    settings = config.vdsa
    link = config.manager
    assert link is not None
    control = link.control_url or (
        f"unix://{settings.control_socket}" if settings.control_socket else ""
    )
    replication = link.replication_address or (
        f"{settings.listen.host}:{settings.listen.port}" if settings.listen else ""
    )
    return {
        "version": __version__,
        "control_url": control,
        "replication_address": replication,
        "exports": _exports(config),
        "datastores": [_datastore(store.name, str(store.path)) for store in config.datastore],
        "status": status,
    }


def _exports(config: VdsaConfig) -> list[dict[str, Any]]:
    """The tap's disks, detached ones included (flagged): a failback needs to find them."""
    path = config.vdsa.tap_config
    if path is None:
        return []
    try:
        tap = load_tap_config(path)
        served = {export.name for export in served_exports(tap)}
        found = drop_ins(tap)
    except ConfigError as exc:
        log.warning("cannot report the tap's disks: %s", exc)
        return []
    exports = []
    for export in [*tap.export, *(e for drop in found.values() for e in drop.export)]:
        try:
            size = os.stat(export.path).st_size
        except (OSError, ValueError):  # ValueError: a NUL in the path
            continue  # a disk whose image is gone is not offered for protection
        exports.append({"name": export.name, "size": size, "path": str(export.path),
                        "detached": export.name not in served})  # fmt: skip
    return exports


def _datastore(name: str, path: str) -> dict[str, Any]:
    try:
        usage = shutil.disk_usage(path)
    except OSError:
        return {"name": name, "path": path, "total_bytes": 0, "free_bytes": 0}
    return {"name": name, "path": path, "total_bytes": usage.total, "free_bytes": usage.free}


async def keep_heartbeating(config: VdsaConfig, status: Callable[[], dict[str, Any]]) -> None:
    """Post a heartbeat every interval until cancelled; a manager that is away is retried."""
    link = config.manager
    assert link is not None
    url = f"{link.url.rstrip('/')}/api/v1/hosts/{config.vdsa.id}/heartbeat"
    async with httpx.AsyncClient(verify=_verify(link), timeout=10) as client:
        while True:
            try:
                token = link.token_file.read_text().strip()
                response = await client.post(
                    url,
                    json=host_report(config, status()),
                    headers={"Authorization": f"Bearer {token}"},
                )
                if response.status_code >= 400:
                    log.warning("manager refused the heartbeat: %s %s",
                                response.status_code, response.text[:200])  # fmt: skip
            except (httpx.HTTPError, OSError) as exc:
                log.warning("manager unreachable at %s: %s", link.url, exc)
            except Exception:
                # A bug must not end the heartbeats: the manager would think the host down.
                log.exception("heartbeat failed; trying again")
            await asyncio.sleep(link.heartbeat_interval)


def _verify(link: ManagerLink) -> ssl.SSLContext | bool:
    if link.ca is None:
        return True
    return ssl.create_default_context(cafile=str(link.ca))
