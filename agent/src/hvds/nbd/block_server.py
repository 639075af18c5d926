"""NBD exports of simple block backends (recovery views), on the sans-I/O server core.

The tap has its own adapter (tap/connection.py) because its write path carries the copy to the
VDSA and the bitmap, and is tuned for speed (decision 0004). Views need neither: here each
connection carries out its requests one at a time, awaiting the backend, which may do its work
in a thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from hvds.nbd.adapter import NbdProtocol
from hvds.nbd.constants import Command, Errno
from hvds.nbd.server import ConnectionClosed, ExportInfo, ExportSelected, Request

log = logging.getLogger(__name__)

# Requests (and bytes of write data) a client may have waiting for the backend before the
# server stops reading its input.
MAX_QUEUED = 64
MAX_QUEUED_BYTES = 32 * 1024 * 1024


class BlockBackend(Protocol):
    info: ExportInfo

    async def read(self, offset: int, length: int) -> bytes: ...

    async def write(self, offset: int, data: bytes | bytearray) -> None: ...

    async def zero(self, offset: int, length: int) -> None: ...

    async def flush(self) -> None: ...


class BackendCatalog:
    """The exports of one server, by name; implements the core's ExportCatalog."""

    def __init__(self) -> None:
        self.backends: dict[str, BlockBackend] = {}

    def lookup(self, name: str) -> ExportInfo | None:
        backend = self.backends.get(name)
        return backend.info if backend else None

    def names(self) -> Iterable[str]:
        return list(self.backends)


class BackendClient(NbdProtocol):
    def __init__(self, catalog: BackendCatalog) -> None:
        super().__init__(catalog)
        self._catalog = catalog
        self._backend: BlockBackend | None = None
        self._requests: asyncio.Queue[Request | None] = asyncio.Queue()
        self._queued_bytes = 0
        # Cleared while the client does not take its replies: no reply is built meanwhile.
        self._writable = asyncio.Event()
        self._writable.set()
        self._worker: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._worker = asyncio.create_task(self._serve())

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._worker is not None:
            self._worker.cancel()

    def pause_writing(self) -> None:
        self._writable.clear()
        super().pause_writing()

    def resume_writing(self) -> None:
        self._writable.set()
        super().resume_writing()

    def _ready(self) -> bool:
        return (
            super()._ready()
            and self._requests.qsize() < MAX_QUEUED
            and self._queued_bytes < MAX_QUEUED_BYTES
        )

    def _process(self) -> None:
        self._send(self._conn.data_to_send())
        for event in self._conn.events():
            if isinstance(event, ExportSelected):
                self._backend = self._catalog.backends.get(event.export.name)
            elif isinstance(event, Request):
                self._queued_bytes += len(event.payload or b"")
                self._requests.put_nowait(event)
            elif isinstance(event, ConnectionClosed):
                self._requests.put_nowait(None)  # close once the requests before are done
        self._send(self._conn.data_to_send())

    def _send(self, data: list[bytes]) -> None:
        if data and self._transport is not None:
            self._transport.writelines(data)

    async def _serve(self) -> None:
        while (request := await self._requests.get()) is not None:
            await self._writable.wait()
            self._send(await self._answer(request))
            self._queued_bytes -= len(request.payload or b"")
            self._pump()  # requests held back while the queue was full may come in
        if self._transport is not None:
            self._transport.close()

    async def _answer(self, request: Request) -> list[bytes]:
        backend = self._backend
        if backend is None or request.command is Command.DISC:
            return []
        conn = self._conn
        try:
            if request.command is Command.READ:
                data = await backend.read(request.offset, request.length)
                return conn.reply_read(request.handle, request.offset, data)
            if request.command is Command.WRITE:
                assert request.payload is not None
                await backend.write(request.offset, request.payload)
            elif request.command is Command.WRITE_ZEROES or request.command is Command.TRIM:
                await backend.zero(request.offset, request.length)
            elif request.command is Command.BLOCK_STATUS:
                return [conn.reply_block_status(request.handle, [(request.length, 0)])]
            elif request.command is Command.FLUSH:
                await backend.flush()  # a failover's VMs write data that must last
            return [conn.reply(request.handle)]
        except (OSError, LookupError, ValueError) as exc:
            log.error("%s %s at %d+%d failed: %s", backend.info.name, request.command.name,
                      request.offset, request.length, exc)  # fmt: skip
            return [conn.reply_error(request, Errno.EIO, str(exc))]


async def serve_backends(catalog: BackendCatalog, path: Path) -> asyncio.Server:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(lambda: BackendClient(catalog), str(path))
    path.chmod(0o660)
    return server
