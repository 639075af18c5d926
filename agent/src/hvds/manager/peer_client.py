"""Calls to a paired site's manager, with the token that site gave this one at pairing."""

from __future__ import annotations

import ssl
from typing import Any

import httpx

from hvds.manager.db import Peer


class PeerError(Exception):
    """The peer site could not be reached or refused; the message carries its answer."""


def tls_for(ca_pem: str) -> ssl.SSLContext | bool:
    """Verify a peer against the CA given at pairing; else against the system's CAs."""
    if not ca_pem:
        return True
    return ssl.create_default_context(cadata=ca_pem)


async def call(
    url: str, method: str, path: str, *, token: str = "", ca_pem: str = "",
    json: Any = None, timeout: float = 30,
) -> Any:  # fmt: skip
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with httpx.AsyncClient(verify=tls_for(ca_pem), timeout=timeout) as client:
            response = await client.request(
                method, f"{url.rstrip('/')}/api/v1{path}", json=json, headers=headers
            )
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise PeerError(f"{url} unreachable: {exc}") from exc
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise PeerError(f"{url}: {method} {path}: {response.status_code} {detail}")
    return None if response.status_code == 204 else response.json()


async def call_peer(peer: Peer, method: str, path: str, json: Any = None) -> Any:
    return await call(peer.url, method, path, token=peer.token, ca_pem=peer.ca_pem, json=json)
