"""Paired sites: pairing by a one-time token, unpairing, and what a peer site asks of this one
(its topology, the replicas of its VPGs kept here, their checkpoints)."""

from __future__ import annotations

import contextlib
import datetime
import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException
from sqlalchemy import select

from hvds.manager.auth import digest, new_token, peer_site
from hvds.manager.config import NAME_PATTERN
from hvds.manager.db import Host, PairingToken, Peer, Replica, utcnow
from hvds.manager.pairing import PairingError, check_certificate, fingerprint, new_request
from hvds.manager.peer_client import PeerError, call, call_peer
from hvds.manager.routes.deps import Admin, Db, PeerCaller, Reader, ReplicaSource, Site
from hvds.manager.schemas import (
    CheckpointOut,
    DatastoreOut,
    PairingCertificate,
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
from hvds.manager.site import SiteManager, as_utc

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
    """Pair with the site at ``url`` using the pairing token its admin made there: each site
    signs a client certificate for the other's key, with its pairing CA (decision 0018)."""
    _needs_tls(site)
    key, csr = new_request(site.name)
    answer = await call(
        wanted.url, "POST", "/pairing", ca_pem=wanted.ca_pem,
        json=PairingIn(site=site.name, url=site.config.manager.url,
                       pairing_token=wanted.pairing_token, csr=csr).model_dump(),
    )  # fmt: skip
    try:
        name = str(answer["site"])
        if name == site.name or not re.fullmatch(NAME_PATTERN, name):
            raise HTTPException(400, f"cannot pair with a site named {name!r}")
        check_certificate(key, str(answer["certificate"]), str(answer["ca"]))
        theirs = site.pairing.sign(str(answer["csr"]), name)
    except (KeyError, PairingError) as exc:
        raise PeerError(f"{wanted.url}: POST /pairing: not an answer to pair with: {exc}") from exc
    credentials = site.pairing.keep_credentials(name, key, str(answer["certificate"]))
    try:  # the other half: the certificate it calls this site with, asked with ours
        await call(
            wanted.url, "POST", "/pairing/certificate", ca_pem=wanted.ca_pem,
            credentials=credentials,
            json=PairingCertificate(certificate=theirs, ca=site.pairing.ca_pem).model_dump(),
        )  # fmt: skip
    except PeerError:
        site.pairing.forget(name)
        raise
    _replace_peer(db, name, wanted.url, wanted.ca_pem, fingerprint(theirs), credentials)
    db.commit()
    peer = db.get(Peer, name)
    assert peer is not None
    return peer


def _needs_tls(site: SiteManager) -> None:
    if site.config.tls is None or not site.config.manager.url.startswith("https://"):
        raise HTTPException(400, "pairing needs this manager's API over TLS ([tls], an https url)")


def _replace_peer(
    db: Db, name: str, url: str, ca_pem: str, fingerprint: str, credentials: Path
) -> None:
    """The peer, paired (again): any certificate signed for it before no longer counts."""
    peer = db.get(Peer, name)
    if peer is None:
        db.add(Peer(name=name, url=url, ca_pem=ca_pem, fingerprint=fingerprint,
                    credentials=str(credentials)))  # fmt: skip
    else:
        peer.url, peer.ca_pem, peer.paired_at = url, ca_pem, utcnow()
        peer.fingerprint, peer.credentials = fingerprint, str(credentials)


@router.post("/pairing", response_model=PairingOut, status_code=201)
def accept_pairing(wanted: PairingIn, site: Site, db: Db) -> PairingOut:
    """The other half of ``POST /peers``, called by the pairing site with a pairing token
    (no bearer token: the one-time pairing token is the credential). Signs the caller's client
    certificate and asks it to sign one for this site (``POST /pairing/certificate``)."""
    row = db.get(PairingToken, digest(wanted.pairing_token))
    if row is None or row.used or as_utc(row.expires_at) <= utcnow():
        raise HTTPException(401, "the pairing token is unknown, used or expired")
    if wanted.site == site.name:
        raise HTTPException(400, "a site cannot pair with itself")
    _needs_tls(site)
    try:
        certificate = site.pairing.sign(wanted.csr, wanted.site)
    except PairingError as exc:
        raise HTTPException(400, str(exc)) from exc
    row.used = True
    key, csr = new_request(site.name)
    credentials = site.pairing.keep_credentials(wanted.site, key)  # its certificate comes next
    ca_pem = ""
    if site.config.tls is not None and site.config.tls.ca is not None:
        ca_pem = site.config.tls.ca.read_text()  # this site trusts peers signed by its CA
    _replace_peer(db, wanted.site, wanted.url, ca_pem, fingerprint(certificate), credentials)
    db.commit()
    return PairingOut(site=site.name, certificate=certificate, ca=site.pairing.ca_pem, csr=csr)


@router.post("/pairing/certificate", status_code=204)
def take_certificate(wanted: PairingCertificate, site: Site, caller: PeerCaller) -> None:
    """The last step of pairing, by the pairing site (with its new client certificate): the
    certificate it signed for this site's key. Refused once this site has one."""
    name = peer_site(caller)
    if site.pairing.has_certificate(name):
        raise HTTPException(409, f"this site already has its certificate for {name}")
    try:
        site.pairing.add_certificate(name, wanted.certificate, wanted.ca)
    except PairingError as exc:
        raise HTTPException(400, str(exc)) from exc


@router.delete("/peers/{name}", status_code=204)
async def unpair(name: str, site: Site, db: Db, _caller: Admin) -> None:
    peer = db.get(Peer, name)
    if peer is None:
        raise HTTPException(404, f"no peer {name}")
    with contextlib.suppress(PeerError):  # unpaired here all the same
        await call_peer(peer, "DELETE", "/pairing")
    db.delete(peer)  # its certificate no longer counts here
    db.commit()
    site.pairing.forget(name)


@router.delete("/pairing", status_code=204)
def forget_pairing(site: Site, db: Db, caller: PeerCaller) -> None:
    name = peer_site(caller)
    peer = db.get(Peer, name)
    if peer is not None:
        db.delete(peer)
    db.commit()
    site.pairing.forget(name)


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
