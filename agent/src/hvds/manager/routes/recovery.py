"""Recovery: failover tests, live failover with commit or rollback, moves. The VPG's routes
(source site) start tracked commands; the replica's routes (target site) are what the source
site's manager calls to carry them out."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from hvds.manager.commands import Progress
from hvds.manager.db import CommandRow, Vpg
from hvds.manager.recovery import SourceRecovery, TargetRecovery
from hvds.manager.routes.deps import Admin, Db, ReplicaSource, Site
from hvds.manager.schemas import (
    CheckpointChoice,
    CommandOut,
    FailoverIn,
    FileOut,
    RecoveryIn,
    RestoreIn,
    ReverseIn,
)
from hvds.manager.site import InvalidError

router = APIRouter(tags=["recovery"])


def _source_recovery(request: Request) -> SourceRecovery:
    recovery: SourceRecovery = request.app.state.source_recovery
    return recovery


def _target_recovery(request: Request) -> TargetRecovery:
    recovery: TargetRecovery = request.app.state.target_recovery
    return recovery


Source = Annotated[SourceRecovery, Depends(_source_recovery)]
Target = Annotated[TargetRecovery, Depends(_target_recovery)]


def _command(
    site: Site, db: Db, kind: str, name: str,
    step: Callable[[Progress], Awaitable[Any]],
) -> CommandRow:  # fmt: skip
    if db.get(Vpg, name) is None:
        raise InvalidError(f"no VPG {name}")

    async def operation(progress: Progress) -> dict[str, Any]:
        result = await step(progress)
        return result if isinstance(result, dict) else {"result": result}

    return site.commands.start(kind, name, operation)


@router.post("/vpgs/{name}/failover-test", response_model=CommandOut, status_code=202)
async def start_failover_test(
    name: str, wanted: CheckpointChoice, site: Site, db: Db, recovery: Source, _caller: Admin
) -> CommandRow:
    choice = wanted.model_dump()
    return _command(site, db, "failover_test_start", name,
                    lambda progress: recovery.test_start(name, choice, progress))  # fmt: skip


@router.delete("/vpgs/{name}/failover-test", response_model=CommandOut, status_code=202)
async def stop_failover_test(
    name: str, site: Site, db: Db, recovery: Source, _caller: Admin
) -> CommandRow:
    return _command(site, db, "failover_test_stop", name,
                    lambda progress: recovery.test_stop(name, progress))  # fmt: skip


@router.post("/vpgs/{name}/failover", response_model=CommandOut, status_code=202)
async def failover(
    name: str, wanted: FailoverIn, site: Site, db: Db, recovery: Source, _caller: Admin
) -> CommandRow:
    return _command(site, db, "failover", name,
                    lambda progress: recovery.failover(name, wanted, progress))  # fmt: skip


@router.post("/vpgs/{name}/failover/commit", response_model=CommandOut, status_code=202)
async def commit(name: str, site: Site, db: Db, recovery: Source, _caller: Admin) -> CommandRow:
    return _command(site, db, "failover_commit", name,
                    lambda progress: recovery.commit(name, progress))  # fmt: skip


@router.post("/vpgs/{name}/failover/rollback", response_model=CommandOut, status_code=202)
async def rollback(name: str, site: Site, db: Db, recovery: Source, _caller: Admin) -> CommandRow:
    return _command(site, db, "failover_rollback", name,
                    lambda progress: recovery.rollback(name, progress))  # fmt: skip


@router.post("/vpgs/{name}/reverse-protection", response_model=CommandOut, status_code=202)
async def reverse(name: str, site: Site, db: Db, recovery: Source, _caller: Admin) -> CommandRow:
    return _command(site, db, "reverse_protection", name,
                    lambda progress: recovery.reverse(name, progress))  # fmt: skip


@router.post("/vpgs/{name}/restore", response_model=CommandOut, status_code=202)
async def restore(
    name: str, wanted: RestoreIn, site: Site, db: Db, recovery: Source, _caller: Admin
) -> CommandRow:
    return _command(site, db, "restore_disk", name,
                    lambda progress: recovery.restore(name, wanted, progress))  # fmt: skip


@router.get("/vpgs/{name}/file", response_model=FileOut)
async def read_file(
    name: str, disk: str, path: str, recovery: Source, _caller: Admin,
    checkpoint: int | None = None, tag: str | None = None, partition: int | None = None,
) -> Any:  # fmt: skip
    """A file of a disk at a checkpoint. Admin only: it reads the VMs' data."""
    query = {"disk": disk, "path": path, "checkpoint": checkpoint, "tag": tag,
             "partition": partition}  # fmt: skip
    return await recovery.read_file(name, {k: v for k, v in query.items() if v is not None})


@router.post("/vpgs/{name}/move", response_model=CommandOut, status_code=202)
async def move(name: str, site: Site, db: Db, recovery: Source, _caller: Admin) -> CommandRow:
    return _command(site, db, "move", name, lambda progress: recovery.move(name, progress))


# -- the target site's side: called by the source site's manager, or by this site's admin
# (with ?source=SITE) when the source site is down -------------------------------------------


@router.post("/replicas/{name}/test", status_code=201)
async def open_test(
    name: str, wanted: RecoveryIn, recovery: Target, source: ReplicaSource
) -> dict[str, Any]:
    return await recovery.open(source, name, "test", wanted)


@router.delete("/replicas/{name}/test")
async def close_test(name: str, recovery: Target, source: ReplicaSource) -> dict[str, Any]:
    return await recovery.close_test(source, name)


@router.post("/replicas/{name}/failover", status_code=201)
async def open_failover(
    name: str, wanted: RecoveryIn, recovery: Target, source: ReplicaSource
) -> dict[str, Any]:
    return await recovery.open(source, name, "failover", wanted)


@router.post("/replicas/{name}/failover/commit")
async def commit_failover(name: str, recovery: Target, source: ReplicaSource) -> dict[str, Any]:
    return await recovery.commit(source, name)


@router.post("/replicas/{name}/failover/rollback")
async def rollback_failover(name: str, recovery: Target, source: ReplicaSource) -> dict[str, Any]:
    return await recovery.rollback(source, name)


@router.post("/replicas/{name}/reverse", status_code=201)
async def reverse_replica(
    name: str, wanted: ReverseIn, recovery: Target, source: ReplicaSource
) -> dict[str, Any]:
    return await recovery.reverse(source, name, wanted)


@router.post("/replicas/{name}/restore", status_code=201)
async def restore_replica(
    name: str, wanted: RestoreIn, recovery: Target, source: ReplicaSource
) -> dict[str, Any]:
    return await recovery.restore(source, name, wanted)


@router.get("/replicas/{name}/file", response_model=FileOut)
async def read_replica_file(
    name: str, disk: str, path: str, recovery: Target, source: ReplicaSource,
    checkpoint: int | None = None, tag: str | None = None, partition: int | None = None,
) -> Any:  # fmt: skip
    wanted = CheckpointChoice(checkpoint=checkpoint, tag=tag)
    return await recovery.read_file(source, name, disk, path, wanted, partition)
