"""What every route takes: the site manager, a database session, the caller's role."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request
from sqlalchemy.orm import Session

from hvds.manager.auth import Caller, peer_site, require
from hvds.manager.site import SiteManager


def site(request: Request) -> SiteManager:
    manager: SiteManager = request.app.state.site
    return manager


def session(request: Request) -> Iterator[Session]:
    with request.app.state.store.request_session() as db:
        yield db  # uncommitted changes are rolled back when it closes


Site = Annotated[SiteManager, Depends(site)]
Db = Annotated[Session, Depends(session)]
Reader = Annotated[Caller, Depends(require("read"))]
Admin = Annotated[Caller, Depends(require("change"))]
HostCaller = Annotated[Caller, Depends(require("heartbeat"))]
PeerCaller = Annotated[Caller, Depends(require("peer"))]


def replica_source(
    caller: Annotated[Caller, Depends(require("replica"))],
    source: Annotated[str | None, Query(description="admin only: the VPG's source site")] = None,
) -> str:
    """Whose replica: the calling peer site's, or (for this site's admin) the one named."""
    if caller.role == "peer":
        return peer_site(caller)
    if not source:
        raise HTTPException(400, "name the VPG's source site: ?source=SITE")
    return source


ReplicaSource = Annotated[str, Depends(replica_source)]
