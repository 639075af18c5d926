"""Lists: served in pages, straight from the store (decision 0014).

A list comes in pages of ``limit`` items (100 by default, at most 1,000) from ``offset``; the
answer says how many there are in all (``X-Total-Count``) and where the next page is
(``Link: <...>; rel="next"``, RFC 8288), absent on the last page.

A list of 1,000 VPGs validated again through pydantic on the way out (built as models, then
checked against the response model, then serialized) cost 150 to 300 ms a request; the settings
were validated when they were written, so VPGs are served from the stored rows as they are:
only the columns shown, one ``json.dumps``: a page of 100 in about 5 ms.
"""

from __future__ import annotations

import datetime
import json
from typing import Annotated, Any

from fastapi import Query, Request, Response
from pydantic_core import to_jsonable_python
from sqlalchemy import Select, func, select
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


def reverse_site(recovery: dict[str, Any] | None) -> str | None:
    """The site that protects a failed-over VPG back to this one (SourceRecovery.reverse)."""
    reverse = (recovery or {}).get("reverse") or {}
    site = reverse.get("site")
    return site if isinstance(site, str) else None


def vpg_document(
    spec: dict[str, Any], state: str, rpo_seconds: float | None,
    created_at: datetime.datetime, updated_at: datetime.datetime,
    recovery: dict[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    return {
        **_DEFAULTS, **spec, "state": state, "rpo_seconds": rpo_seconds,
        "created_at": rfc3339(created_at), "updated_at": rfc3339(updated_at),
        "reverse_site": reverse_site(recovery),
    }  # fmt: skip


DEFAULT_PAGE = 100
MAX_PAGE = 1000
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="items in the page")]
Offset = Annotated[int, Query(ge=0, le=1 << 31, description="items skipped before the page")]
# In the OpenAPI document: what every paged list answers besides its items.
PAGE_HEADERS: dict[int | str, dict[str, Any]] = {
    200: {
        "headers": {
            "X-Total-Count": {"description": "items in all pages", "schema": {"type": "integer"}},
            "Link": {"description": '<next page>; rel="next", absent on the last page',
                     "schema": {"type": "string"}},
        }
    }
}  # fmt: skip


def page_headers(db: Session, query: Select[Any], request: Request, limit: int, offset: int
                 ) -> dict[str, str]:  # fmt: skip
    """The page's headers; ``query`` selects every item of the list, unpaged."""
    total = db.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0
    headers = {"X-Total-Count": str(total)}
    if offset + limit < total:
        url = request.url.include_query_params(limit=limit, offset=offset + limit)
        headers["Link"] = f'<{url.path}?{url.query}>; rel="next"'
    return headers


def vpg_list(db: Session, request: Request, limit: int, offset: int) -> Response:
    """A page of VPGs by name."""
    query = select(
        Vpg.spec, Vpg.state, Vpg.rpo_seconds, Vpg.created_at, Vpg.updated_at, Vpg.recovery
    )
    documents = [
        vpg_document(*row)
        for row in db.execute(query.order_by(Vpg.name).offset(offset).limit(limit))
    ]
    headers = page_headers(db, query, request, limit, offset)
    return Response(json.dumps(documents), media_type="application/json", headers=headers)
