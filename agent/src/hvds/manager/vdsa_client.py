"""The manager's side of a VDSA's control protocol (hvds.vdsa.control): one JSON request per
line. The host says where it listens (``control_url``): a unix socket on the manager's own
machine (a lab, a single-host site) or TLS over TCP."""

from __future__ import annotations

import asyncio
import json
import ssl
from typing import Any
from urllib.parse import urlsplit


class VdsaError(Exception):
    """The VDSA could not be reached, or refused the request; the message says which."""


# A VDSA restarts its roles (and its control socket) when it takes new VPGs or commits a
# failover: a request that finds it closed is tried again for this long.
RESTART_GRACE_SECONDS = 10.0


async def _connect(
    control_url: str, tls: ssl.SSLContext | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    where = urlsplit(control_url)
    deadline = asyncio.get_running_loop().time() + RESTART_GRACE_SECONDS
    while True:
        try:
            if where.scheme == "unix":
                return await asyncio.open_unix_connection(where.path, limit=1 << 24)
            if where.scheme == "tls" and tls is not None:
                return await asyncio.open_connection(
                    where.hostname, where.port, ssl=tls, limit=1 << 24
                )
            raise VdsaError(f"cannot reach a VDSA at {control_url!r} (tls:// needs [vdsa_tls])")
        except (ConnectionRefusedError, FileNotFoundError):
            if asyncio.get_running_loop().time() >= deadline:
                raise
            await asyncio.sleep(0.2)


async def ask(
    control_url: str, message: dict[str, Any], tls: ssl.SSLContext | None = None,
    timeout: float = 60,
) -> dict[str, Any]:  # fmt: skip
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await _connect(control_url, tls)
            try:
                writer.write(json.dumps(message).encode() + b"\n")
                line = await reader.readline()
            finally:
                writer.close()
    except (OSError, TimeoutError) as exc:
        raise VdsaError(f"VDSA at {control_url} unreachable: {exc}") from exc
    if not line:
        raise VdsaError(f"VDSA at {control_url} closed the connection")
    answer = json.loads(line)
    if not isinstance(answer, dict) or not answer.get("ok"):
        error = answer.get("error") if isinstance(answer, dict) else answer
        raise VdsaError(f"VDSA at {control_url}: {message.get('op')}: {error}")
    return answer
