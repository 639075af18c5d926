"""Tracked commands: list, get, cancel."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response
from sqlalchemy import select

from hvds.manager.db import CommandRow
from hvds.manager.listing import DEFAULT_PAGE, PAGE_HEADERS, Limit, Offset, page_headers
from hvds.manager.routes.deps import Admin, Db, Reader, Site
from hvds.manager.schemas import CommandOut

router = APIRouter(tags=["commands"])


@router.get("/commands", response_model=list[CommandOut], responses=PAGE_HEADERS)
def list_commands(
    request: Request, response: Response, db: Db, _caller: Reader, vpg: str | None = None,
    limit: Limit = DEFAULT_PAGE, offset: Offset = 0,
) -> list[CommandRow]:  # fmt: skip
    """Newest first."""
    query = select(CommandRow)
    if vpg is not None:
        query = query.where(CommandRow.vpg == vpg)
    response.headers.update(page_headers(db, query, request, limit, offset))
    return list(db.scalars(query.order_by(CommandRow.id.desc()).offset(offset).limit(limit)))


def _get(db: Db, command_id: int) -> CommandRow:
    row = db.get(CommandRow, command_id)
    if row is None:
        raise HTTPException(404, f"no command {command_id}")
    return row


@router.get("/commands/{command_id}", response_model=CommandOut)
def get_command(command_id: int, db: Db, _caller: Reader) -> CommandRow:
    return _get(db, command_id)


@router.post("/commands/{command_id}/cancel", response_model=CommandOut)
async def cancel_command(command_id: int, site: Site, db: Db, _caller: Admin) -> CommandRow:
    _get(db, command_id)
    if site.commands.cancel(command_id):
        await site.commands.wait(command_id)
    db.expire_all()
    return _get(db, command_id)
