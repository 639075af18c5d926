"""Protection groups: create, read, update, delete; their checkpoints and failover tests."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response

from hvds.manager.db import Vpg
from hvds.manager.listing import DEFAULT_PAGE, PAGE_HEADERS, Limit, Offset, reverse_site, vpg_list
from hvds.manager.routes.deps import Admin, Db, Reader, Site
from hvds.manager.schemas import (
    CheckpointIn,
    CheckpointOut,
    VpgOut,
    VpgSpec,
)

router = APIRouter(tags=["protection groups"])


def vpg_out(vpg: Vpg) -> VpgOut:
    return VpgOut.model_validate({
        **vpg.spec, "state": vpg.state, "rpo_seconds": vpg.rpo_seconds,
        "created_at": vpg.created_at, "updated_at": vpg.updated_at,
        "reverse_site": reverse_site(vpg.recovery),
    })  # fmt: skip


def _get(db: Db, name: str) -> Vpg:
    vpg = db.get(Vpg, name)
    if vpg is None:
        raise HTTPException(404, f"no VPG {name}")
    return vpg


@router.get("/vpgs", response_model=list[VpgOut], responses=PAGE_HEADERS)
def list_vpgs(
    request: Request, db: Db, _caller: Reader, limit: Limit = DEFAULT_PAGE, offset: Offset = 0
) -> Response:
    return vpg_list(db, request, limit, offset)


@router.get("/vpgs/{name}", response_model=VpgOut)
def get_vpg(name: str, db: Db, _caller: Reader) -> VpgOut:
    return vpg_out(_get(db, name))


@router.post("/vpgs", response_model=VpgOut, status_code=201)
async def create_vpg(spec: VpgSpec, site: Site, db: Db, _caller: Admin) -> VpgOut:
    if db.get(Vpg, spec.name) is not None:
        raise HTTPException(409, f"VPG {spec.name} exists")
    return vpg_out(await site.save_vpg(db, spec, None))


@router.put("/vpgs/{name}", response_model=VpgOut)
async def update_vpg(name: str, spec: VpgSpec, site: Site, db: Db, _caller: Admin) -> VpgOut:
    if spec.name != name:
        raise HTTPException(400, f"the body names VPG {spec.name}, the path {name}")
    vpg = _get(db, name)
    if vpg.recovery is not None:
        raise HTTPException(409, f"a recovery of {name} is under way ({vpg.state}): end it first")
    if spec.model_dump(mode="json") != vpg.spec:
        await site.save_vpg(db, spec, vpg)
    return vpg_out(vpg)


@router.delete("/vpgs/{name}", status_code=204)
async def delete_vpg(name: str, site: Site, db: Db, _caller: Admin) -> None:
    vpg = _get(db, name)
    if vpg.recovery is not None:
        raise HTTPException(409, f"a recovery of {name} is under way ({vpg.state}): end it first")
    await site.remove_vpg(db, vpg)


@router.get("/vpgs/{name}/checkpoints", response_model=list[CheckpointOut])
async def list_checkpoints(name: str, site: Site, db: Db, _caller: Reader) -> list[CheckpointOut]:
    if _get(db, name).state == "failed_over":
        return []  # the commit made the recovery site's disks live and removed the journal
    return await site.checkpoints(name)


@router.post("/vpgs/{name}/checkpoints", response_model=CheckpointOut, status_code=201)
async def create_checkpoint(
    name: str, wanted: CheckpointIn, site: Site, db: Db, _caller: Admin
) -> CheckpointOut:
    _get(db, name)
    return await site.take_checkpoint(name, wanted.tag, wanted.description)
