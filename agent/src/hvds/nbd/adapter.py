"""The asyncio side of an NBD server connection, shared by the tap and the recovery views:
bytes from the transport into the sans-I/O core, the greeting out. Subclasses act on the core's
events in ``_process``.

Flow control: the core parses a bounded turn of requests at a time (``ServerConnection``'s
docstring). After each turn the events are carried out; the next turn is parsed only while the
client takes its replies (the transport is not paused for writing) and the subclass is ready
(``_ready``: its own queue of work is short). Otherwise reading from the client stops until
``_pump`` is called again (resume_writing, or the subclass once its work drains), so a client
that pipelines requests without reading the replies holds a bounded amount of memory.
"""

from __future__ import annotations

import asyncio
from typing import cast

from hvds.nbd.server import ExportCatalog, ServerConnection


class NbdProtocol(asyncio.BufferedProtocol):
    def __init__(self, catalog: ExportCatalog) -> None:
        self._conn = ServerConnection(catalog)
        self._transport: asyncio.Transport | None = None
        self._writing_paused = False
        self._reading_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without inheriting from it.
        self._transport = cast(asyncio.Transport, transport)
        self._transport.write(self._conn.greeting())

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._conn.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self._conn.buffer_updated(nbytes)
        self._pump()

    def eof_received(self) -> bool:
        self._conn.receive_eof()
        self._process()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._throttle()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._pump()

    def _ready(self) -> bool:
        """Whether to take more requests from the client; subclasses add their own limits and
        call ``_pump`` when they become ready again."""
        return not self._writing_paused

    def _pump(self) -> None:
        """Carry out the parsed events, turn after turn while ready; then read or not."""
        self._process()
        while self._conn.backlogged and self._ready() and self._transport is not None:
            self._conn.resume()
            self._process()
        self._throttle()

    def _throttle(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        hold = self._conn.backlogged or not self._ready()
        if hold and not self._reading_paused:
            transport.pause_reading()
            self._reading_paused = True
        elif not hold and self._reading_paused:
            transport.resume_reading()
            self._reading_paused = False

    def _process(self) -> None:
        raise NotImplementedError
