"""The VDSA service: its source and target roles and its control socket, from one config."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from prometheus_client import REGISTRY, start_http_server

from hvds.tls import client_context, server_context
from hvds.vdsa.config import VdsaConfig
from hvds.vdsa.control import serve_control
from hvds.vdsa.metrics import VdsaCollector
from hvds.vdsa.receiver import serve_taps
from hvds.vdsa.source import SourceRouter, VpgSource
from hvds.vdsa.target import TargetServer, TargetVpgState, open_journal

log = logging.getLogger(__name__)


class VdsaService:
    def __init__(self, config: VdsaConfig) -> None:
        self.config = config
        self.sources: list[VpgSource] = []
        self.router: SourceRouter | None = None
        self.targets: dict[str, TargetVpgState] = {}
        self._servers: list[asyncio.Server] = []

    async def start(self) -> None:
        config = self.config
        settings = config.vdsa
        if config.target_vpg:
            assert config.tls is not None and settings.listen is not None
            assert settings.journal_dir is not None
            for replica in config.target_vpg:
                journal = await asyncio.to_thread(open_journal, replica, settings.journal_dir)
                self.targets[replica.name] = TargetVpgState(replica, journal, usage=journal.usage())
            target = TargetServer(self.targets)
            server = await asyncio.start_server(
                target.handle,
                settings.listen.host,
                settings.listen.port,
                ssl=server_context(config.tls),
                limit=1 << 20,
            )
            self._servers.append(server)
            log.info("target role: listening on %s:%d", settings.listen.host, settings.listen.port)
        if config.source_vpg:
            assert config.tls is not None and settings.tap_socket is not None
            tls = client_context(config.tls)
            router = self.router = SourceRouter()
            for vpg in config.source_vpg:
                source = VpgSource(vpg, tls, settings.id, router)
                router.add(source)
                self.sources.append(source)
                source.start()
            self._servers.append(await serve_taps(router, str(settings.tap_socket)))
            log.info("source role: taps connect to %s", settings.tap_socket)
        if settings.metrics is not None:
            REGISTRY.register(VdsaCollector(self))
            start_http_server(settings.metrics.port, settings.metrics.host)
        if settings.control_socket is not None:
            handlers = {
                "checkpoint": self._checkpoint,
                "checkpoints": self._checkpoints,
                "status": self._status,
            }
            self._servers.append(await serve_control(settings.control_socket, handlers))

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        for source in self.sources:
            await source.stop()
        for state in self.targets.values():
            if state.session is not None:
                state.session.cancel()
            async with state.lock:
                state.journal.close()

    def _checkpoint(self, request: dict[str, Any]) -> dict[str, Any]:
        name = str(request["vpg"])
        source = next((s for s in self.sources if s.name == name), None)
        if source is None:
            raise KeyError(f"no VPG {name!r} is protected from this host")
        taken = source.checkpoint(str(request.get("tag", "")), str(request.get("description", "")))
        return {"taken": taken, "consistent": source.consistent}

    def _checkpoints(self, request: dict[str, Any]) -> dict[str, Any]:
        name = str(request["vpg"])
        state = self.targets.get(name)
        if state is None:
            raise KeyError(f"no VPG {name!r} is replicated to this host")
        return {
            "checkpoints": [
                {"id": c.id, "seq": c.seq, "time_ns": c.time_ns, "tag": c.tag,
                 "description": c.description}
                for c in state.journal.checkpoints()
            ]
        }  # fmt: skip

    def _status(self, _request: dict[str, Any]) -> dict[str, Any]:
        sources = {
            source.name: {
                "consistent": source.consistent,
                "checkpoints_taken": source.checkpoints_taken,
                "targets": {
                    link.target.server_name: {
                        "connected": link.stats.connected,
                        "acked_seq": link.stats.acked_seq,
                        "bytes_in": link.stats.bytes_in,
                        "bytes_deduplicated": link.stats.bytes_deduplicated,
                        "bytes_on_wire": link.stats.bytes_on_wire,
                        "checkpoint_time_ns": link.stats.checkpoint_time_ns,
                    }
                    for link in source.links
                },
            }
            for source in self.sources
        }
        targets = {}
        for name, state in self.targets.items():
            journal = state.journal
            latest = journal.latest()
            targets[name] = {
                "last_seq": journal.last_seq,
                "checkpoints": len(journal.checkpoints()),
                "latest_checkpoint": None
                if latest is None
                else {
                    "id": latest.id,
                    "seq": latest.seq,
                    "time_ns": latest.time_ns,
                    "tag": latest.tag,
                },
            }
        return {"id": self.config.vdsa.id, "sources": sources, "targets": targets}
