"""Calls to a paired site's manager, with the client certificate that site signed for this one
at pairing (decision 0018), its server checked against the CA given at pairing."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import httpx

from hvds.manager.db import Peer


class PeerError(Exception):
    """The peer site could not be reached or refused; the message carries its answer."""


def tls_for(ca_pem: str, credentials: Path | None = None) -> ssl.SSLContext:
    """Verify a peer against the CA given at pairing (else the system's CAs); present the
    certificate in ``credentials`` (key and certificate, PEM), if given."""
    context = ssl.create_default_context(cadata=ca_pem or None)
    if credentials is not None:
        try:
            context.load_cert_chain(credentials)
        except (OSError, ssl.SSLError) as exc:
            raise PeerError(f"no usable certificate in {credentials} (pair again): {exc}") from exc
    return context


async def call(
    url: str, method: str, path: str, *, ca_pem: str = "", credentials: Path | None = None,
    json: Any = None, timeout: float = 30,
) -> Any:  # fmt: skip
    try:
        async with httpx.AsyncClient(
            verify=tls_for(ca_pem, credentials), timeout=timeout
        ) as client:
            response = await client.request(method, f"{url.rstrip('/')}/api/v1{path}", json=json)
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
    if not peer.credentials:
        raise PeerError(f"site {peer.name} was paired before mutual TLS: pair with it again")
    return await call(peer.url, method, path, ca_pem=peer.ca_pem,
                      credentials=Path(peer.credentials), json=json)  # fmt: skip
