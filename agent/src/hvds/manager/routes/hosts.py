"""Hosts: registered and kept alive by their VDSAs' heartbeats."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path
from sqlalchemy import select

from hvds.manager.config import NAME_PATTERN
from hvds.manager.db import Host
from hvds.manager.routes.deps import Db, HostCaller, Reader, Site
from hvds.manager.schemas import Heartbeat, HostOut

router = APIRouter(tags=["hosts"])


def host_out(site: Site, host: Host) -> HostOut:
    status = host.status
    return HostOut(
        name=host.name,
        state="up" if site.host_is_up(host) else "down",
        version=host.version,
        last_seen=host.last_seen,
        exports=host.exports,
        datastores=host.datastores,
        vpgs={"sources": status.get("sources", {}), "targets": status.get("targets", {})},
    )


@router.get("/hosts", response_model=list[HostOut])
def list_hosts(site: Site, db: Db, _caller: Reader) -> list[HostOut]:
    return [host_out(site, host) for host in db.scalars(select(Host).order_by(Host.name))]


@router.get("/hosts/{name}", response_model=HostOut)
def get_host(name: str, site: Site, db: Db, _caller: Reader) -> HostOut:
    host = db.get(Host, name)
    if host is None:
        raise HTTPException(404, f"no host {name}")
    return host_out(site, host)


@router.post("/hosts/{name}/heartbeat", status_code=204)
async def heartbeat(
    name: Annotated[str, Path(pattern=NAME_PATTERN)],
    report: Heartbeat,
    site: Site,
    db: Db,
    caller: HostCaller,
) -> None:
    if caller.role == "host" and caller.name != name:
        raise HTTPException(403, f"the token of host {caller.name} cannot speak for {name}")
    site.heartbeat(db, name, report.model_dump(mode="json"))
    db.commit()
