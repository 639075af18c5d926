"""The site itself: identity, version, health and its alerts."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from sqlalchemy import or_, select
from sqlalchemy.orm import load_only

from hvds import __version__
from hvds.manager.db import Host, Vpg
from hvds.manager.planner import source_hosts
from hvds.manager.routes.deps import Db, Reader, Site
from hvds.manager.schemas import Alert, Health, SiteOut

router = APIRouter(tags=["site"])

# A link down for longer than this alerts (the VDSA itself says a silent link is down after
# 10 s; a reconnection after a reset takes well under a second).
LINK_ALERT_SECONDS = 10.0


def alerts(site: Site, db: Db) -> tuple[int, int, list[Alert]]:
    """Hosts down, VPGs over their RPO threshold or in error, links down. Only what alerts is
    read: the site's health is asked often, and a site may hold thousands of VPGs."""
    found = []
    up = down = 0
    hosts = db.scalars(select(Host).options(load_only(Host.name, Host.last_seen)))
    for host in hosts:
        if site.host_is_up(host):
            up += 1
        else:
            down += 1
            found.append(Alert(kind="host_down", subject=host.name,
                               message=f"no heartbeat since {host.last_seen}"))  # fmt: skip
    threshold = Vpg.spec["rpo_alert_seconds"].as_float()
    alerting = (
        select(Vpg.name, Vpg.state, Vpg.rpo_seconds, threshold)
        .where(or_(Vpg.state == "error", Vpg.rpo_seconds > threshold))
        .order_by(Vpg.name)
    )
    for name, state, rpo_seconds, limit in db.execute(alerting):
        if rpo_seconds is not None and rpo_seconds > limit:
            message = f"RPO {rpo_seconds:.0f} s is over {limit:.0f} s"
            found.append(Alert(kind="rpo", subject=name, message=message))
        if state == "error":
            found.append(Alert(kind="vpg_error", subject=name, message="see its commands"))
    found += links_down(db)
    return up, down, found


def links_down(db: Db) -> list[Alert]:
    """The links of VPGs to their targets that their source hosts have reported down for
    longer than LINK_ALERT_SECONDS. Only VPGs that are not protected can have one (a link down
    makes a VPG "syncing"), so only theirs are read."""
    found = []
    statuses: dict[str, dict[str, Any]] = {}
    now_ns = time.time_ns()
    for name, spec in db.execute(select(Vpg.name, Vpg.spec).where(Vpg.state == "syncing")
                                 .order_by(Vpg.name)):  # fmt: skip
        for host in source_hosts(spec):
            if host not in statuses:
                statuses[host] = db.scalar(select(Host.status).where(Host.name == host)) or {}
            links = statuses[host].get("sources", {}).get(name, {}).get("targets", {})
            for target, link in sorted(links.items()):
                since = link.get("down_since_ns") or 0
                seconds = (now_ns - since) / 1e9
                if not link.get("connected") and since and seconds > LINK_ALERT_SECONDS:
                    message = f"host {host} has had no connection to {target} for {seconds:.0f} s"
                    found.append(Alert(kind="link_down", subject=name, message=message))
    return found


@router.get("/site", response_model=SiteOut)
def get_site(site: Site, db: Db, _caller: Reader) -> SiteOut:
    up, down, found = alerts(site, db)
    health = Health(status="degraded" if found else "ok", hosts_up=up, hosts_down=down,
                    alerts=found)  # fmt: skip
    return SiteOut(name=site.name, version=__version__, health=health)
