"""Log bundles: collect one as a tracked command, then download it."""

from __future__ import annotations

from functools import partial

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

from hvds.manager.db import CommandRow
from hvds.manager.logbundle import bundle_path, collect
from hvds.manager.routes.deps import Admin, Db, Site
from hvds.manager.schemas import CommandOut

router = APIRouter(tags=["logs"])


@router.post("/logs", response_model=CommandOut, status_code=202)
async def collect_logs(site: Site, _caller: Admin) -> CommandRow:
    """Start a ``log_collection`` command: the manager's log and state and every host's VDSA
    status and tap and VDSA logs, secrets redacted, in a tar.gz that
    ``GET /commands/{id}/bundle`` downloads."""
    return site.commands.start("log_collection", None, partial(collect, site))


@router.get(
    "/commands/{command_id}/bundle",
    response_class=FileResponse,
    responses={200: {"content": {"application/gzip": {}}, "description": "the tar.gz"}},
)
def download_bundle(command_id: int, site: Site, db: Db, _caller: Admin) -> FileResponse:
    row = db.get(CommandRow, command_id)
    if row is None or row.kind != "log_collection":
        raise HTTPException(404, f"no log collection {command_id}")
    if row.status != "succeeded":
        raise HTTPException(409, f"log collection {command_id} is {row.status}")
    path = bundle_path(site, row.result)
    if path is None:
        raise HTTPException(404, f"the bundle of {command_id} is no longer kept")
    return FileResponse(path, media_type="application/gzip", filename=path.name)
