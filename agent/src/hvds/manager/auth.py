"""Who calls: a paired site's manager by the client certificate this site signed for it at
pairing (role ``peer``, decision 0018); anyone else by a bearer token, made here, shown once,
kept only as its SHA-256 digest, with one role (admin, viewer, host)."""

from __future__ import annotations

import datetime
import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select

from hvds.manager.db import Peer, Store, Token, utcnow
from hvds.manager.pairing import fingerprint
from hvds.manager.tls_scope import client_certificate

ROLES = ("admin", "viewer", "host", "peer")
TOKEN_ROLES = ("admin", "viewer", "host")  # a peer is known by its certificate, never a token
# Who may do what: admin changes things; viewer reads; a host heartbeats; a peer site's
# manager reads and asks for replicas.
_MAY = {
    "read": {"admin", "viewer", "peer"},
    "change": {"admin"},
    "heartbeat": {"host", "admin"},
    "peer": {"peer"},
    # A replica kept here: its source site's manager, or this site's admin when the source
    # site is down (a disaster failover is started at the recovery site).
    "replica": {"peer", "admin"},
}

_bearer = HTTPBearer(auto_error=False)

PEER_PREFIX = "peer:"  # a paired site, as a caller (and in the audit log): peer:<site>


def new_token() -> str:
    return "hvds_" + secrets.token_urlsafe(32)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(
    store: Store, name: str, role: str, expires_at: datetime.datetime | None = None
) -> str:
    if role not in TOKEN_ROLES:
        raise ValueError(f"role must be one of {', '.join(TOKEN_ROLES)}")
    token = new_token()
    with store.session() as session:
        session.add(Token(name=name, role=role, digest=digest(token), expires_at=expires_at))
    return token


@dataclass(frozen=True)
class Caller:
    name: str
    role: str


def _caller(request: Request, credentials: HTTPAuthorizationCredentials | None) -> Caller:
    store: Store = request.app.state.store
    certificate = client_certificate(request)
    if certificate is not None:
        with store.session() as session:
            peer = session.scalars(
                select(Peer.name).where(Peer.fingerprint == fingerprint(certificate))
            ).one_or_none()
        if peer is not None:
            caller = Caller(PEER_PREFIX + peer, "peer")
            request.state.caller = caller  # for the audit log
            return caller
        if credentials is None:  # signed here once, for a site no longer paired
            raise HTTPException(401, "this certificate is not a paired site's")
    if credentials is None:
        raise HTTPException(401, "a bearer token is required", {"WWW-Authenticate": "Bearer"})
    with store.session() as session:
        row = session.scalars(
            select(Token).where(Token.digest == digest(credentials.credentials))
        ).one_or_none()
        if row is None or row.role not in TOKEN_ROLES:  # peer tokens of old pairings: no more
            raise HTTPException(401, "unknown token", {"WWW-Authenticate": "Bearer"})
        expires = row.expires_at
        if expires is not None and expires.replace(tzinfo=datetime.UTC) <= utcnow():
            raise HTTPException(401, "the token has expired", {"WWW-Authenticate": "Bearer"})
        caller = Caller(row.name, row.role)
    request.state.caller = caller  # for the audit log
    return caller


def peer_site(caller: Caller) -> str:
    """The paired site a peer caller is."""
    return caller.name.removeprefix(PEER_PREFIX)


def require(action: str) -> Callable[..., Caller]:
    """A FastAPI dependency: the caller's token, which must allow ``action``."""

    def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Caller:
        caller = _caller(request, credentials)
        if caller.role not in _MAY[action]:
            raise HTTPException(403, f"a {caller.role} token may not {action}")
        return caller

    return dependency
