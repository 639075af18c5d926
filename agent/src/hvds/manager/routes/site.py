"""The site itself: identity, version, health and its alerts."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from hvds import __version__
from hvds.manager.db import Host, Vpg
from hvds.manager.routes.deps import Db, Reader, Site
from hvds.manager.schemas import Alert, Health, SiteOut

router = APIRouter(tags=["site"])


def alerts(site: Site, db: Db) -> tuple[int, int, list[Alert]]:
    found = []
    up = down = 0
    for host in db.scalars(select(Host)):
        if site.host_is_up(host):
            up += 1
        else:
            down += 1
            found.append(Alert(kind="host_down", subject=host.name,
                               message=f"no heartbeat since {host.last_seen}"))  # fmt: skip
    for vpg in db.scalars(select(Vpg)):
        limit = vpg.spec["rpo_alert_seconds"]
        if vpg.rpo_seconds is not None and vpg.rpo_seconds > limit:
            message = f"RPO {vpg.rpo_seconds:.0f} s is over {limit} s"
            found.append(Alert(kind="rpo", subject=vpg.name, message=message))
        if vpg.state == "error":
            found.append(Alert(kind="vpg_error", subject=vpg.name, message="see its commands"))
    return up, down, found


@router.get("/site", response_model=SiteOut)
def get_site(site: Site, db: Db, _caller: Reader) -> SiteOut:
    up, down, found = alerts(site, db)
    health = Health(status="degraded" if found else "ok", hosts_up=up, hosts_down=down,
                    alerts=found)  # fmt: skip
    return SiteOut(name=site.name, version=__version__, health=health)
