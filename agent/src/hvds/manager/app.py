"""The manager's web application: the API under /api/v1, /metrics, and the audit log."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from hvds import __version__
from hvds.manager.db import AuditEntry
from hvds.manager.logbundle import RECENT
from hvds.manager.metrics import ManagerCollector
from hvds.manager.peer_client import PeerError
from hvds.manager.recovery import SourceRecovery, TargetRecovery
from hvds.manager.routes import commands, hosts, logs, peers, recovery, site, vpgs
from hvds.manager.site import ConflictError, InvalidError, SiteManager
from hvds.manager.vdsa_client import VdsaError

CHANGES = {"POST", "PUT", "PATCH", "DELETE"}


def create_app(manager: SiteManager) -> FastAPI:
    source_recovery = SourceRecovery(manager)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await manager.start()
        learning = asyncio.create_task(source_recovery.keep_learning())
        yield
        learning.cancel()
        await manager.stop()

    app = FastAPI(
        title="hvds site manager", version=__version__, lifespan=lifespan,
        description="Protection groups, checkpoints, recovery and the site's hosts.",
    )  # fmt: skip
    app.state.site = manager
    app.state.store = manager.store
    app.state.source_recovery = source_recovery
    app.state.target_recovery = TargetRecovery(manager)
    RECENT.attach()  # the log records a log bundle carries
    for module in (site, hosts, vpgs, recovery, commands, logs, peers):
        app.include_router(module.router, prefix="/api/v1")
    registry = CollectorRegistry()
    registry.register(ManagerCollector(manager))

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    def error(status: int) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
        async def handler(_request: Request, exc: Exception) -> JSONResponse:
            return JSONResponse({"detail": str(exc)}, status_code=status)

        return handler

    app.add_exception_handler(InvalidError, error(400))
    app.add_exception_handler(ConflictError, error(409))
    # A host's VDSA or a peer site that cannot do what was asked: the gateway failed.
    app.add_exception_handler(VdsaError, error(502))
    app.add_exception_handler(PeerError, error(502))

    @app.middleware("http")
    async def audit(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        if request.method in CHANGES and not request.url.path.endswith("/heartbeat"):
            caller = getattr(request.state, "caller", None)
            entry = AuditEntry(
                actor=caller.name if caller else "anonymous", method=request.method,
                path=request.url.path, status=response.status_code,
            )  # fmt: skip
            await asyncio.to_thread(_record, manager, entry)  # off the loop: it may wait
        return response

    return app


def _record(manager: SiteManager, entry: AuditEntry) -> None:
    with manager.store.session() as session:
        session.add(entry)
