"""Mutual TLS for every site-to-site connection: both ends present a certificate signed by the
deployment's CA, and nothing older than TLS 1.2 is spoken."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Protocol


class TlsFiles(Protocol):
    @property
    def ca(self) -> Path: ...

    @property
    def cert(self) -> Path: ...

    @property
    def key(self) -> Path: ...


def _context(purpose: ssl.Purpose, files: TlsFiles) -> ssl.SSLContext:
    context = ssl.create_default_context(purpose, cafile=str(files.ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(files.cert), str(files.key))
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """For the listening side: a client without a certificate from our CA is refused."""
    return _context(ssl.Purpose.CLIENT_AUTH, files)


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """For the connecting side: the server must prove the name we expect (server_name)."""
    context = _context(ssl.Purpose.SERVER_AUTH, files)
    context.check_hostname = True
    return context


def certificate_name(peercert: object) -> str:
    """The common name in a peer certificate as ssl.SSLSocket.getpeercert() returns it."""
    if not isinstance(peercert, dict):
        return ""
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return ""
