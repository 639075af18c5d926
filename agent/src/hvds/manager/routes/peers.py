"""Paired sites: pairing by a one-time token, unpairing, and what a peer site asks of this one
(its topology, the replicas of its VPGs kept here, their checkpoints)."""

from __future__ import annotations

import contextlib
import datetime
from typing import Any

from fastapi import APIRouter, HTTPException
from sqlalchemy import select

from hvds.manager.auth import PEER_PREFIX, digest, new_token, peer_site
from hvds.manager.db import Host, PairingToken, Peer, Replica, Token, utcnow
from hvds.manager.peer_client import PeerError, call, call_peer
from hvds.manager.routes.deps import Admin, Db, PeerCaller, Reader, ReplicaSource, Site
from hvds.manager.schemas import (
    CheckpointOut,
    DatastoreOut,
    PairingIn,
    PairingOut,
    PairingTokenOut,
    PeerIn,
    PeerOut,
    ReplicaIn,
    ReplicaOut,
    ReplicaState,
    Topology,
    TopologyHost,
)
from hvds.manager.site import as_utc

router = APIRouter(tags=["sites"])


@router.get("/peers", response_model=list[PeerOut])
def list_peers(db: Db, _caller: Reader) -> list[Peer]:
    return list(db.scalars(select(Peer).order_by(Peer.name)))


@router.post("/pairing-tokens", response_model=PairingTokenOut, status_code=201)
def create_pairing_token(site: Site, db: Db, _caller: Admin) -> PairingTokenOut:
    token = new_token()
    minutes = site.config.manager.pairing_token_minutes
    expires = utcnow() + datetime.timedelta(minutes=minutes)
    db.add(PairingToken(digest=digest(token), expires_at=expires))
    db.commit()
    return PairingTokenOut(token=token, expires_at=expires)


@router.post("/peers", response_model=PeerOut, status_code=201)
async def pair(wanted: PeerIn, site: Site, db: Db, _caller: Admin) -> Peer:
    """Pair with the site at ``url`` using the pairing token its admin made there."""
    ours = new_token()  # the peer will call this site with it
    answer = await call(
        wanted.url, "POST", "/pairing", ca_pem=wanted.ca_pem,
        json=PairingIn(site=site.name, url=site.config.manager.url,
                       pairing_token=wanted.pairing_token, token=ours).model_dump(),
    )  # fmt: skip
    name = str(answer["site"])
    if name == site.name:
        raise HTTPException(400, "a site cannot pair with itself")
    _replace_peer(db, name, wanted.url, str(answer["token"]), wanted.ca_pem, ours)
    db.commit()
    peer = db.get(Peer, name)
    assert peer is not None
    return peer


def _replace_peer(db: Db, name: str, url: str, theirs: str, ca_pem: str, ours: str) -> None:
    db.query(Token).filter(Token.name == PEER_PREFIX + name).delete()
    db.add(Token(name=PEER_PREFIX + name, role="peer", digest=digest(ours)))
    peer = db.get(Peer, name)
    if peer is None:
        db.add(Peer(name=name, url=url, token=theirs, ca_pem=ca_pem))
    else:
        peer.url, peer.token, peer.ca_pem, peer.paired_at = url, theirs, ca_pem, utcnow()


@router.post("/pairing", response_model=PairingOut, status_code=201)
def accept_pairing(wanted: PairingIn, site: Site, db: Db) -> PairingOut:
    """The other half of ``POST /peers``, called by the pairing site with a pairing token
    (no bearer token: the one-time pairing token is the credential)."""
    row = db.get(PairingToken, digest(wanted.pairing_token))
    if row is None or row.used or as_utc(row.expires_at) <= utcnow():
        raise HTTPException(401, "the pairing token is unknown, used or expired")
    if wanted.site == site.name:
        raise HTTPException(400, "a site cannot pair with itself")
    row.used = True
    ours = new_token()
    ca_pem = ""
    if site.config.tls is not None and site.config.tls.ca is not None:
        ca_pem = site.config.tls.ca.read_text()  # this site trusts peers signed by its CA
    _replace_peer(db, wanted.site, wanted.url, wanted.token, ca_pem, ours)
    db.commit()
    return PairingOut(site=site.name, token=ours)


@router.delete("/peers/{name}", status_code=204)
async def unpair(name: str, db: Db, _caller: Admin) -> None:
    peer = db.get(Peer, name)
    if peer is None:
        raise HTTPException(404, f"no peer {name}")
    with contextlib.suppress(PeerError):  # unpaired here all the same
        await call_peer(peer, "DELETE", "/pairing")
    db.query(Token).filter(Token.name == PEER_PREFIX + name).delete()
    db.delete(peer)
    db.commit()


@router.delete("/pairing", status_code=204)
def forget_pairing(db: Db, caller: PeerCaller) -> None:
    name = peer_site(caller)
    db.query(Token).filter(Token.name == caller.name).delete()
    peer = db.get(Peer, name)
    if peer is not None:
        db.delete(peer)
    db.commit()


@router.get("/peers/{name}/topology", response_model=Topology)
async def peer_topology(name: str, db: Db, _caller: Reader) -> Any:
    peer = db.get(Peer, name)
    if peer is None:
        raise HTTPException(404, f"no peer {name}")
    return await call_peer(peer, "GET", "/topology")


@router.get("/topology", response_model=Topology)
def topology(site: Site, db: Db, _caller: Reader) -> Topology:
    hosts = [
        TopologyHost(
            name=host.name,
            state="up" if site.host_is_up(host) else "down",
            datastores=[
                DatastoreOut(name=s["name"], free_bytes=s["free_bytes"]) for s in host.datastores
            ],
        )
        for host in db.scalars(select(Host).order_by(Host.name))
    ]
    return Topology(site=site.name, hosts=hosts)


@router.put("/replicas/{name}", response_model=ReplicaOut)
async def put_replica(name: str, wanted: ReplicaIn, site: Site, caller: PeerCaller) -> ReplicaOut:
    link = await site.put_replica(peer_site(caller), name, wanted)
    return ReplicaOut(**link, latest_checkpoint=None)


@router.delete("/replicas/{name}", status_code=204)
async def delete_replica(name: str, site: Site, db: Db, caller: PeerCaller) -> None:
    await site.delete_replica(db, peer_site(caller), name)


@router.get("/replicas/{name}/checkpoints", response_model=list[CheckpointOut])
async def replica_checkpoints(name: str, site: Site, source: ReplicaSource) -> list[CheckpointOut]:
    return await site.replica_checkpoints(source, name)


@router.get("/replicas", response_model=list[ReplicaState])
def list_replicas(db: Db, _caller: Reader) -> list[ReplicaState]:
    """The VPGs of other sites kept here, and any recovery of them under way."""
    return [replica_state(r) for r in db.scalars(select(Replica).order_by(Replica.vpg))]


@router.get("/replicas/{name}", response_model=ReplicaState)
def get_replica(name: str, site: Site, db: Db, source: ReplicaSource) -> ReplicaState:
    return replica_state(site.replica(db, source, name))


def replica_state(replica: Replica) -> ReplicaState:
    recovery = replica.recovery or {}
    return ReplicaState(
        vpg=replica.vpg, source_site=replica.source_site, host=replica.host,
        recovery=recovery.get("kind"), state=recovery.get("state"),
        checkpoint=recovery.get("checkpoint"),
    )  # fmt: skip
