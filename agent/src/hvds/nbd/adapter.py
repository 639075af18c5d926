"""The asyncio side of an NBD server connection, shared by the tap and the recovery views:
bytes from the transport into the sans-I/O core, the greeting out. Subclasses act on the core's
events in ``_process``."""

from __future__ import annotations

import asyncio
from typing import cast

from hvds.nbd.server import ExportCatalog, ServerConnection


class NbdProtocol(asyncio.BufferedProtocol):
    def __init__(self, catalog: ExportCatalog) -> None:
        self._conn = ServerConnection(catalog)
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without inheriting from it.
        self._transport = cast(asyncio.Transport, transport)
        self._transport.write(self._conn.greeting())

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._conn.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self._conn.buffer_updated(nbytes)
        self._process()

    def eof_received(self) -> bool:
        self._conn.receive_eof()
        self._process()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def _process(self) -> None:
        raise NotImplementedError
