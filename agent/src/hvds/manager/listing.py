"""Lists served straight from the store (decision 0011).

A list of 1,000 VPGs validated again through pydantic on the way out (built as models, then
checked against the response model, then serialized) cost 150 to 300 ms a request; the settings
were validated when they were written, so the list is served from the stored rows as they are:
only the columns it shows, one ``json.dumps``, 20 to 40 ms.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

from fastapi import Response
from pydantic_core import to_jsonable_python
from sqlalchemy import select
from sqlalchemy.orm import Session

from hvds.manager.db import Vpg
from hvds.manager.schemas import VpgSpec

# Settings a VPG stored before they existed take their defaults, as a read through VpgOut would.
_DEFAULTS = {
    name: to_jsonable_python(field.get_default(call_default_factory=True))
    for name, field in VpgSpec.model_fields.items()
    if not field.is_required()
}


def rfc3339(value: datetime.datetime) -> str:
    """As pydantic writes a UTC time (SQLite gives them back without a zone)."""
    if value.tzinfo is not None:
        value = value.astimezone(datetime.UTC).replace(tzinfo=None)
    return value.isoformat() + "Z"


def vpg_document(
    spec: dict[str, Any], state: str, rpo_seconds: float | None,
    created_at: datetime.datetime, updated_at: datetime.datetime,
) -> dict[str, Any]:  # fmt: skip
    return {
        **_DEFAULTS, **spec, "state": state, "rpo_seconds": rpo_seconds,
        "created_at": rfc3339(created_at), "updated_at": rfc3339(updated_at),
    }  # fmt: skip


def vpg_list(db: Session, limit: int | None, offset: int) -> Response:
    """VPGs by name, ``offset`` of them skipped and at most ``limit`` (None: all) given."""
    query = (
        select(Vpg.spec, Vpg.state, Vpg.rpo_seconds, Vpg.created_at, Vpg.updated_at)
        .order_by(Vpg.name)
        .offset(offset)
        .limit(limit)
    )
    documents = [vpg_document(*row) for row in db.execute(query)]
    return Response(json.dumps(documents), media_type="application/json")
