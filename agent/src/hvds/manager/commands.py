"""Tracked commands: every long operation runs as an asyncio task whose status, progress,
result and error are kept in the database, so any client can follow, list or cancel it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import update

from hvds.manager.db import CommandRow, Store, utcnow

log = logging.getLogger(__name__)

Progress = Callable[[int], None]
Operation = Callable[[Progress], Awaitable[dict[str, Any]]]


class Commands:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._stopping = False

    def interrupted_by_restart(self) -> None:
        """Commands a previous run of the manager left running ended with it: say so."""
        with self._store.session() as session:
            session.execute(
                update(CommandRow)
                .where(CommandRow.status.in_(["queued", "running"]))
                .values(status="failed", error="interrupted by a manager restart",
                        ended_at=utcnow())
            )  # fmt: skip

    def start(self, kind: str, vpg: str | None, operation: Operation) -> CommandRow:
        with self._store.session() as session:
            row = CommandRow(kind=kind, vpg=vpg, status="running")
            session.add(row)
            session.flush()
        task = asyncio.create_task(self._run(row.id, operation))
        self._tasks[row.id] = task
        task.add_done_callback(lambda _: self._tasks.pop(row.id, None))
        return row

    def cancel(self, command_id: int) -> bool:
        task = self._tasks.get(command_id)
        if task is None:
            return False
        task.cancel()
        return True

    async def wait(self, command_id: int) -> None:
        task = self._tasks.get(command_id)
        if task is not None:
            await asyncio.wait({task})

    def _set(self, command_id: int, **values: Any) -> None:
        with self._store.session() as session:
            session.execute(update(CommandRow).where(CommandRow.id == command_id).values(**values))

    async def _run(self, command_id: int, operation: Operation) -> None:
        def progress(percent: int) -> None:
            self._set(command_id, progress=max(0, min(100, percent)))

        try:
            result = await operation(progress)
        except asyncio.CancelledError:
            if self._stopping:  # the manager is going down: as after a crash, say so
                self._set(command_id, status="failed", ended_at=utcnow(),
                          error="interrupted by a manager restart")  # fmt: skip
            else:
                self._set(command_id, status="cancelled", ended_at=utcnow(), error="cancelled")
            return
        except Exception as exc:
            log.warning("command %d failed: %s", command_id, exc)
            self._set(command_id, status="failed", ended_at=utcnow(), error=str(exc))
            return
        self._set(command_id, status="succeeded", progress=100, ended_at=utcnow(), result=result)

    async def stop(self) -> None:
        self._stopping = True
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
