"""The VDSA's local control socket: one JSON request per line, one JSON answer per line.

    {"op": "checkpoint", "vpg": "erp", "tag": "before-upgrade", "description": "..."}
    {"op": "status"}

This is the coordinator interface of the checkpoint barrier: the site manager asks every VDSA
of a VPG for a checkpoint. It listens on a unix socket that only root and its group may open.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from hvds.tls import certificate_name

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], dict[str, Any] | Awaitable[dict[str, Any]]]
MAX_REQUEST_BYTES = 64 * 1024


def _serving(
    handlers: dict[str, Handler], allowed: Callable[[asyncio.StreamWriter], str | None]
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        refusal = allowed(writer)
        if refusal is not None:
            log.warning("control client refused: %s", refusal)
            writer.close()
            return
        try:
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError as exc:  # the end, maybe after a last line
                    if exc.partial:
                        writer.write(_encode(await _answer(exc.partial, handlers)))
                        await writer.drain()
                    break
                except asyncio.LimitOverrunError:
                    # Answered, and the line skipped: the client reads its answer (closing
                    # now, with its line unread, would reset the connection and lose it).
                    log.warning("control client sent a request over %d bytes",
                                MAX_REQUEST_BYTES)  # fmt: skip
                    error = f"a request is one line of at most {MAX_REQUEST_BYTES} bytes"
                    writer.write(_encode({"ok": False, "error": error}))
                    await writer.drain()
                    if not await _skip_line(reader):
                        break
                    continue
                writer.write(_encode(await _answer(line, handlers)))
                await writer.drain()
        except ConnectionError as exc:
            log.warning("control client dropped: %s", exc)
        finally:
            writer.close()

    return client


async def serve_control(path: Path, handlers: dict[str, Handler]) -> asyncio.Server:
    """On a unix socket: whoever may open it (root and its group) may ask."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    client = _serving(handlers, lambda _writer: None)
    server = await asyncio.start_unix_server(client, str(path), limit=MAX_REQUEST_BYTES)
    os.chmod(path, 0o660)
    return server


async def serve_control_tls(
    host: str, port: int, context: ssl.SSLContext, clients: list[str],
    handlers: dict[str, Handler],
) -> asyncio.Server:  # fmt: skip
    """Over TCP for a site manager on another machine: mutual TLS, and the client's certificate
    must name one of ``clients`` (the site's managers), not just any VDSA of the deployment."""

    def allowed(writer: asyncio.StreamWriter) -> str | None:
        name = certificate_name(writer.get_extra_info("peercert"))
        return None if name in clients else f"certificate {name!r} is not a manager's"

    client = _serving(handlers, allowed)
    return await asyncio.start_server(client, host, port, ssl=context, limit=MAX_REQUEST_BYTES)


async def _skip_line(reader: asyncio.StreamReader) -> bool:
    """Discard the rest of an over-long line; False if the connection ended first."""
    while True:
        try:
            await reader.readuntil(b"\n")
            return True
        except asyncio.LimitOverrunError as exc:
            await reader.readexactly(exc.consumed)
        except asyncio.IncompleteReadError:
            return False


def _encode(answer: dict[str, Any]) -> bytes:
    # Lone surrogates a request carried (JSON escapes them) come back escaped: ASCII only.
    return json.dumps(answer).encode() + b"\n"


async def _answer(line: bytes, handlers: dict[str, Handler]) -> dict[str, Any]:
    try:
        request = json.loads(line)
    except (ValueError, RecursionError) as exc:
        # Not UTF-8, not JSON, an integer past Python's 4300 digits (ValueError), arrays or
        # objects nested past the recursion limit (RecursionError).
        return {"ok": False, "error": f"not JSON: {str(exc)[:200]}"}
    if not isinstance(request, dict):
        return {"ok": False, "error": "a request is a JSON object"}
    handler = handlers.get(str(request.get("op")))
    if handler is None:
        return {
            "ok": False,
            "error": f"unknown op {request.get('op')!r}; known: {sorted(handlers)}",
        }
    try:
        result = handler(request)
        if inspect.isawaitable(result):
            result = await result
        return {"ok": True, **result}
    except KeyError as exc:
        return {"ok": False, "error": str(exc.args[0]) if exc.args else "not found"}
    except (ValueError, TypeError, TimeoutError, OSError, ArithmeticError) as exc:
        return {"ok": False, "error": str(exc) or type(exc).__name__}
    except Exception as exc:
        # A bug: logged whole, and answered; the socket goes on serving.
        log.exception("control op %r failed", request.get("op"))
        return {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"}


def request(path: Path, message: dict[str, Any], timeout: float = 10) -> dict[str, Any]:
    """Send one request to a VDSA's control socket (for the CLI and tests)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(json.dumps(message).encode() + b"\n")
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    result = json.loads(answer)
    assert isinstance(result, dict)
    return result
