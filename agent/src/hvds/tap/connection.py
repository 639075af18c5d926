"""One NBD client of the tap: the asyncio adapter around the sans-I/O ServerConnection.

Requests are carried out in the order they arrive. Reads and writes go straight to the page
cache from the event loop (a pread/pwrite of a cached page is cheaper than a hop to a thread);
only the syncs that FLUSH and FUA ask for run in a worker thread, so that one VM's flush does
not stall the others. A write is answered after its data is in the disk image, and its copy is
queued to the VDSA (or its blocks marked dirty) before the answer.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time

from hvds.nbd.adapter import NbdProtocol
from hvds.nbd.constants import Command, CommandFlag, Errno
from hvds.nbd.server import ConnectionClosed, ExportSelected, Request
from hvds.tap.exports import ExportRegistry, TapExport
from hvds.tap.link import VdsaLink

log = logging.getLogger(__name__)


# Request flags are plain ints (see hvds.nbd.server.Request); so are these.
_FUA = int(CommandFlag.FUA)
_NO_HOLE = int(CommandFlag.NO_HOLE)
_FAST_ZERO = int(CommandFlag.FAST_ZERO)
_REQ_ONE = int(CommandFlag.REQ_ONE)
# Syncs (FLUSH, FUA) a client may have waiting before the tap stops reading its requests.
MAX_SYNCS = 64


def wire_errno(exc: OSError) -> int:
    """The NBD error for a failed disk operation: out of space is worth telling apart."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return Errno.ENOSPC
    return Errno.EIO


class NbdClient(NbdProtocol):
    def __init__(self, registry: ExportRegistry, link: VdsaLink) -> None:
        super().__init__(registry)
        self._registry = registry
        self._link = link
        self._export: TapExport | None = None
        self._outgoing: list[bytes] = []
        self._syncs: set[asyncio.Task[None]] = set()
        self._close_when_idle = False

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        export = self._export
        if export is not None:
            export.clients.discard(self)
            export.stats.clients -= 1
            export.close_if_unused()

    def close(self) -> None:
        """Hang up on the client (its export is being removed)."""
        if self._transport is not None:
            self._transport.close()

    # -- requests --------------------------------------------------------------------------

    def _process(self) -> None:
        conn = self._conn
        self._outgoing.extend(conn.data_to_send())
        for event in conn.events():
            if isinstance(event, Request):
                self._handle(event)
            elif isinstance(event, ExportSelected):
                self._select(event)
            elif isinstance(event, ConnectionClosed):
                log.debug("NBD client closed: %s", event.reason)
                self._close_when_idle = True
        self._outgoing.extend(conn.data_to_send())
        self._link.flush()  # the copies of this batch's writes, in one system call
        self._flush_outgoing()

    def _ready(self) -> bool:
        return super()._ready() and len(self._syncs) < MAX_SYNCS

    def _flush_outgoing(self) -> None:
        transport = self._transport
        if transport is None:
            return
        if self._outgoing:
            transport.writelines(self._outgoing)
            self._outgoing = []
        if self._close_when_idle and not self._syncs:
            transport.close()

    def _select(self, event: ExportSelected) -> None:
        export = self._registry.get(event.export.name)
        if export is None:  # removed between lookup and selection
            self._close_when_idle = True
            return
        self._export = export
        export.clients.add(self)
        export.stats.clients += 1

    def _handle(self, request: Request) -> None:
        command = request.command
        if command is Command.DISC:
            return
        export = self._export
        assert export is not None
        started = time.perf_counter()
        export.stats.in_flight += 1
        try:
            if command is Command.READ:
                data = export.disk.read(request.offset, request.length)
                self._outgoing.extend(self._conn.reply_read(request.handle, request.offset, data))
                export.stats.done(command, request.length, time.perf_counter() - started)
                return
            if command is Command.WRITE:
                self._write(export, request)
            elif command in (Command.TRIM, Command.WRITE_ZEROES):
                if not self._zero(export, request):
                    return
            elif command is Command.FLUSH:
                self._after_sync(export, request, started)
                return
            elif command is Command.CACHE:
                os.posix_fadvise(
                    export.disk.fd, request.offset, request.length, os.POSIX_FADV_WILLNEED
                )
            elif command is Command.BLOCK_STATUS:
                limit = 1 if request.flags & _REQ_ONE else 256
                extents = export.disk.extents(request.offset, request.length, limit)
                self._outgoing.append(self._conn.reply_block_status(request.handle, extents))
                self._done(export, command, 0, started)
                return
        except OSError as exc:
            log.error(
                "%s %s at %d+%d failed: %s",
                export.name,
                command.name,
                request.offset,
                request.length,
                exc,
            )
            self._answer(export, self._conn.reply_error(request, wire_errno(exc), str(exc)))
            self._done(export, command, 0, started)
            return
        if request.flags & _FUA:
            self._after_sync(export, request, started)
            return
        self._answer(export, self._conn.reply(request.handle))
        self._done(export, command, request.length, started)

    def _answer(self, export: TapExport, reply: bytes) -> None:
        """Send, or leave with a checkpoint barrier's hold, the answer to a write-like request."""
        if not export.complete(self, reply):
            self._outgoing.append(reply)

    def deliver(self, reply: bytes) -> None:
        """An answer released by the end of a hold."""
        self._outgoing.append(reply)
        self._flush_outgoing()

    def _write(self, export: TapExport, request: Request) -> None:
        assert request.payload is not None
        blocks, send = self._link.reserve(export, request.offset, request.length)
        try:
            export.disk.write(request.offset, request.payload)
        except OSError:
            if send:
                self._link.unsent(export, blocks)
            raise
        if send:
            self._link.send_write(export, request.offset, request.payload, blocks)

    def _zero(self, export: TapExport, request: Request) -> bool:
        """TRIM and WRITE_ZEROES; False if refused (a fast zero we cannot do fast)."""
        if request.flags & _FAST_ZERO and export.disk.is_block_device:
            self._outgoing.append(self._conn.reply(request.handle, Errno.ENOTSUP))
            return False
        may_trim = request.command is Command.TRIM or not request.flags & _NO_HOLE
        blocks, send = self._link.reserve(export, request.offset, request.length)
        try:
            export.disk.zero(request.offset, request.length, may_trim)
        except OSError:
            if send:
                self._link.unsent(export, blocks)
            raise
        if send:
            self._link.send_zero(export, request.offset, request.length, blocks)
        return True

    def _after_sync(self, export: TapExport, request: Request, started: float) -> None:
        """Answer once the bitmap, then the disk, are on stable storage (FLUSH, FUA)."""
        request.payload = None  # written: the sync need not keep it

        async def sync() -> None:
            errno_value = 0
            try:
                # The bitmap first: a block durable on disk must never be durable as clean.
                export.tracker.bitmap.sync()
                await asyncio.get_running_loop().run_in_executor(None, export.disk.flush)
            except OSError as exc:
                log.error("%s: sync failed: %s", export.name, exc)
                errno_value = wire_errno(exc)
            self._answer(export, self._conn.reply(request.handle, errno_value))
            length = request.length if request.command is not Command.FLUSH else 0
            self._done(export, request.command, length, started)
            self._flush_outgoing()

        task = asyncio.create_task(sync())
        self._syncs.add(task)
        task.add_done_callback(self._sync_finished)

    def _sync_finished(self, task: asyncio.Task[None]) -> None:
        self._syncs.discard(task)
        # A DISC that waited for this sync can now close; requests held back may go on.
        self._pump()

    @staticmethod
    def _done(export: TapExport, command: Command, nbytes: int, started: float) -> None:
        export.stats.done(command, nbytes, time.perf_counter() - started)
