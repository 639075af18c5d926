"""The client certificate of a request's TLS connection, in its ASGI scope (decision 0018).

The API's listener asks every client for a certificate signed by this manager's pairing CA
(``ssl_cert_reqs=CERT_OPTIONAL``): one signed by another CA fails the handshake, none at all is
fine (admins, viewers and hosts use bearer tokens). uvicorn verifies the certificate but does not
tell the application which one was presented: the ASGI TLS extension,
``scope["extensions"]["tls"]``, is not implemented in the uvicorn this project pins (its pull
requests #3043, #3132 and #3133 propose it). This HTTP protocol is uvicorn's own h11 protocol
plus that: when a TLS connection is made (after its handshake), it reads the verified
certificate from the connection's SSL object and has every request of the connection carry it as
the extension's ``client_cert_chain`` (the leaf, PEM; empty without a certificate). Once uvicorn
provides the extension, this module goes and ``client_certificate`` reads the same key.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from starlette.requests import Request
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol


class ClientCertProtocol(H11Protocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None:
            return  # plain HTTP: no extension, as the specification says
        der = ssl_object.getpeercert(binary_form=True)
        tls: dict[str, Any] = {
            "server_cert": None,
            "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
            "client_cert_name": None,
            "client_cert_error": None,
            "tls_version": None,
            "cipher_suite": None,
        }
        app = self.app

        async def with_tls(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] in ("http", "websocket"):
                scope["extensions"] = {**(scope.get("extensions") or {}), "tls": tls}
            await app(scope, receive, send)

        self.app = with_tls  # this connection's requests only


def client_certificate(request: Request) -> str | None:
    """The PEM certificate the client presented (verified by the TLS layer), if any."""
    tls = (request.scope.get("extensions") or {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or []
    return str(chain[0]) if chain else None
