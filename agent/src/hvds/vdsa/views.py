"""The views a VDSA serves over NBD (failover tests, live failovers, restores), kept across
restarts of its roles: a VM running on a view must not see its disk go away because the site
manager pushed this host another VPG. The roles restart with new journal objects; each view is
bound again to its journal (by label, disk and checkpoint), and a request that comes while the
roles restart waits for it instead of failing."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from hvds.nbd.block_server import BackendCatalog, serve_backends
from hvds.recovery.view import CheckpointView
from hvds.vdsa.target import TargetVpgState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Binding:
    """What a view reads: a disk of a journal at a checkpoint."""

    label: str  # the journal's (TargetVpgState.label)
    disk: int
    checkpoint: int  # the journal's checkpoint id


class Views:
    def __init__(self) -> None:
        self.catalog = BackendCatalog()
        self.bindings: dict[str, Binding] = {}
        self._server: asyncio.Server | None = None
        self._bound = asyncio.Event()  # cleared while the roles restart
        self._states: dict[str, TargetVpgState] = {}

    async def serve(self, path: Path) -> None:
        if self._server is None:  # once per process: its clients outlive the roles
            self._server = await serve_backends(self.catalog, path)

    def view(self, export: str) -> CheckpointView:
        view = self.catalog.backends.get(export)
        if not isinstance(view, CheckpointView):
            raise KeyError(f"no view {export!r} is open")
        return view

    def add(self, view: CheckpointView, binding: Binding, state: TargetVpgState) -> None:
        view.gate = self._bound
        self.catalog.backends[view.info.name] = view
        self.bindings[view.info.name] = binding
        state.views_open += 1

    def remove(self, export: str, discard: bool = True) -> CheckpointView:
        view = self.view(export)
        del self.catalog.backends[export]
        binding = self.bindings.pop(export)
        state = self._states.get(binding.label)
        if state is not None:
            state.views_open -= 1
        view.close(discard=discard)
        return view

    def bind(self, targets: dict[str, TargetVpgState]) -> None:
        """The roles (re)started with these journals: every view reads from its own again."""
        self._states = targets
        for export, binding in list(self.bindings.items()):
            state = targets.get(binding.label)
            if state is None:  # its VPG is no longer replicated here
                log.warning("view %s closed: %s is gone", export, binding.label)
                self.remove(export, discard=False)
                continue
            read_at = partial(state.journal.read_at, binding.checkpoint, binding.disk)
            self.view(export).rebind(read_at, state.journal_lock)
            state.views_open += 1
        self._bound.set()

    def unbind(self) -> None:
        """The roles stop: views wait (their journals are being closed and reopened)."""
        self._bound.clear()
        for binding in self.bindings.values():
            state = self._states.get(binding.label)
            if state is not None:
                state.views_open -= 1
        self._states = {}

    def close_all(self) -> None:
        """The VDSA stops: test views go with their scratch, failover views keep theirs."""
        for export in list(self.catalog.backends):
            self.remove(export, discard=not export.endswith(".failover"))
        if self._server is not None:
            self._server.close()
