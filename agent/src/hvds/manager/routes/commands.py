"""Tracked commands: list, get, cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from sqlalchemy import select

from hvds.manager.db import CommandRow
from hvds.manager.routes.deps import Admin, Db, Reader, Site
from hvds.manager.schemas import CommandOut

router = APIRouter(tags=["commands"])


@router.get("/commands", response_model=list[CommandOut])
def list_commands(
    db: Db, _caller: Reader, vpg: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[CommandRow]:  # fmt: skip
    query = select(CommandRow).order_by(CommandRow.id.desc()).limit(limit)
    if vpg is not None:
        query = query.where(CommandRow.vpg == vpg)
    return list(db.scalars(query))


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
