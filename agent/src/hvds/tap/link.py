"""The tap's side of the local link to the host's VDSA: copies of writes, acks, resync.

The VM never waits for this link. A copy is queued only while the link is up and its queue is
below ``buffer_limit`` bytes; otherwise the write's blocks go to the dirty bitmap (CopyTracker)
and the resync sends them again, read from the disk, once the link has room. Memory is bounded
by the queue limit whatever the VDSA does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import cast

from hvds.link.wire import FrameDecoder, FrameFlag, FrameType, LinkProtocolError, encode_header
from hvds.tap.exports import Hold, TapExport
from hvds.tap.metrics import LinkStats

log = logging.getLogger(__name__)

_RECONNECT_MIN = 0.05
_RECONNECT_MAX = 2.0
_ROOM_POLL_SECONDS = 0.05
HOLD_TIMEOUT_SECONDS = 1.0


class VdsaLink(asyncio.Protocol):
    def __init__(self, socket_path: Path | None, tap_id: str, buffer_limit: int) -> None:
        self._socket_path = socket_path
        self._tap_id = tap_id
        self._limit = buffer_limit
        self._transport: asyncio.Transport | None = None
        self._decoder = FrameDecoder()
        self._seq = 0
        # (seq, export, blocks) of copies sent and not yet acknowledged, in sequence order.
        self._in_flight: deque[tuple[int, TapExport, range]] = deque()
        self._exports: Iterable[TapExport] = ()
        self._room = asyncio.Event()
        self._resync_wanted = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._queue: list[bytes | bytearray] = []
        self._queued_bytes = 0
        self._closing = False
        self._disconnected = asyncio.Event()
        self.stats = LinkStats(buffered_bytes=self._buffered_bytes)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, exports: Iterable[TapExport]) -> None:
        self._exports = exports
        if self._socket_path is None:
            log.warning("no vdsa_socket configured: every write only marks the dirty bitmap")
            return
        self._tasks = [
            asyncio.create_task(self._connect_loop(), name="vdsa-connect"),
            asyncio.create_task(self._resync_loop(), name="vdsa-resync"),
        ]

    async def stop(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._transport is not None:
            self._transport.close()

    async def _connect_loop(self) -> None:
        assert self._socket_path is not None
        delay = _RECONNECT_MIN
        loop = asyncio.get_running_loop()
        while not self._closing:
            # Cleared before connecting: a connection lost before create_unix_connection
            # returns has already set it, and must not leave the loop waiting for ever.
            self._disconnected.clear()
            try:
                await loop.create_unix_connection(lambda: self, str(self._socket_path))
            except OSError as exc:
                log.debug("VDSA at %s not reachable: %s", self._socket_path, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RECONNECT_MAX)
                continue
            delay = _RECONNECT_MIN
            await self._disconnected.wait()

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without inheriting from it.
        transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(high=self._limit, low=self._limit // 2)
        self._transport = transport
        self._seq = 0
        self._decoder = FrameDecoder()
        log.info("connected to VDSA at %s", self._socket_path)
        self.stats.up = True
        self._queue, self._queued_bytes = [], 0
        self._send(FrameType.HELLO, payload=self._tap_id.encode())
        for export in self._exports:
            self.announce(export)
        self.flush()
        self._room.set()
        self._resync_wanted.set()

    def connection_lost(self, exc: Exception | None) -> None:
        log.warning("lost the VDSA link: %s", exc or "closed by the VDSA")
        self._transport = None
        self.stats.up = False
        for export in self._exports:
            export.tracker.connection_lost()
            export.release()  # no barrier can complete without the VDSA: let the VMs go on
        self._in_flight.clear()
        self._room.set()  # wake the resync so that it notices the link is gone
        self._disconnected.set()

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._decoder.feed(data)
        except LinkProtocolError as exc:
            log.error("VDSA sent a malformed frame, dropping the link: %s", exc)
            assert self._transport is not None
            self._transport.abort()
            return
        for frame in frames:
            if frame.type is FrameType.ACK:
                self._acknowledge(frame.seq)
            elif frame.type is FrameType.FULL_SYNC:
                self._full_sync(frame.export)
            elif frame.type is FrameType.HOLD:
                self._hold(frame.offset, frame.payload)
            elif frame.type is FrameType.RELEASE:
                self._release(frame.offset)
            else:
                log.warning("ignoring unexpected %s frame from the VDSA", frame.type.name)

    def _full_sync(self, export_id: int) -> None:
        export = next((e for e in self._exports if e.id == export_id), None)
        if export is None:
            log.warning("full sync asked for unknown export %d", export_id)
            return
        log.info("full sync of %s asked by the VDSA", export.name)
        export.tracker.copy_lost(range(export.tracker.bitmap.blocks))
        self._resync_wanted.set()

    def _hold(self, cut: int, payload: bytes | bytearray) -> None:
        """Hold the answers of the listed exports, then mark the cut in the stream."""
        ids = set(struct.unpack(f">{len(payload) // 4}I", payload[: len(payload) // 4 * 4]))
        for export in self._exports:
            if export.id in ids:
                if export.hold is None:
                    export.hold = Hold(cut)
                export.hold.cut = cut
        self._send(FrameType.MARKER, offset=cut)
        self.flush()
        # A coordinator that never releases must not freeze the VMs: let go on our own. Its
        # barrier takes milliseconds; a release this late is logged, as the cut it belonged to
        # may not hold across hosts (decision 0009).
        asyncio.get_running_loop().call_later(HOLD_TIMEOUT_SECONDS, self._release, cut, True)

    def _release(self, cut: int, timed_out: bool = False) -> None:
        for export in self._exports:
            if export.hold is not None and export.hold.cut == cut:
                if timed_out:
                    log.warning("%s: checkpoint barrier %d not released in time", export.name, cut)
                export.release()

    def pause_writing(self) -> None:
        self._room.clear()

    def resume_writing(self) -> None:
        self._room.set()
        self._resync_wanted.set()

    # -- sending copies --------------------------------------------------------------------

    def announce(self, export: TapExport) -> None:
        if self._transport is not None:
            # DIRTY tells the VDSA that this export's copies are not a complete, ordered
            # stream until its resync is done (after a restart or a lost connection).
            flags = FrameFlag.DIRTY if export.tracker.has_lost() else FrameFlag.NONE
            self._send(
                FrameType.EXPORT,
                export.id,
                export.disk.size,
                payload=export.name.encode(),
                flags=flags,
            )
            self.flush()

    def reserve(self, export: TapExport, offset: int, length: int) -> tuple[range, bool]:
        """Before a write reaches the disk: mark its blocks; True if its copy will be sent."""
        blocks = export.tracker.blocks(offset, length)
        transport = self._transport
        if transport is not None and self._buffered_bytes() < self._limit:
            export.tracker.copy_sent(blocks)
            return blocks, True
        export.tracker.copy_lost(blocks)
        export.stats.copies_lost += 1
        self._resync_wanted.set()
        return blocks, False

    def send_write(
        self, export: TapExport, offset: int, data: bytes | bytearray, blocks: range
    ) -> None:
        seq = self._send(FrameType.WRITE, export.id, offset, payload=data)
        self._in_flight.append((seq, export, blocks))

    def send_zero(self, export: TapExport, offset: int, length: int, blocks: range) -> None:
        seq = self._send(FrameType.ZERO, export.id, offset, length)
        self._in_flight.append((seq, export, blocks))

    def unsent(self, export: TapExport, blocks: range) -> None:
        """A reserved copy will not be sent (the disk write failed): resync what is on disk."""
        export.tracker.copy_lost(blocks)
        export.tracker.copy_acknowledged(blocks)
        self._resync_wanted.set()

    def _send(
        self,
        kind: FrameType,
        export_id: int = 0,
        offset: int = 0,
        length: int = 0,
        payload: bytes | bytearray = b"",
        flags: int = 0,
    ) -> int:
        """Queue a frame; ``flush()`` hands the queue to the transport in one writev."""
        self._seq += 1
        header = encode_header(kind, self._seq, export_id, offset, length or len(payload), flags)
        self._queue.append(header)
        if payload:
            self._queue.append(payload)
            self._queued_bytes += len(payload)
        return self._seq

    def flush(self) -> None:
        """Send the frames queued so far. The NBD side calls it once per batch of requests:
        one system call for many copies is what keeps the copy cheap."""
        if not self._queue:
            return
        if self._transport is not None:
            self._transport.writelines(self._queue)
        self._queue = []
        self._queued_bytes = 0

    def _acknowledge(self, seq: int) -> None:
        in_flight = self._in_flight
        while in_flight and in_flight[0][0] <= seq:
            _, export, blocks = in_flight.popleft()
            export.tracker.copy_acknowledged(blocks)

    def _buffered_bytes(self) -> int:
        transport = self._transport
        queued = self._queued_bytes
        return queued + transport.get_write_buffer_size() if transport is not None else queued

    # -- resync ----------------------------------------------------------------------------

    async def _resync_loop(self) -> None:
        while True:
            await self._resync_wanted.wait()
            self._resync_wanted.clear()
            for export in list(self._exports):
                if self._transport is None:
                    break
                if export.tracker.has_lost() and not export.removed:
                    await self._resync(export)

    async def _resync(self, export: TapExport) -> None:
        tracker = export.tracker
        disk = export.disk
        block_size = tracker.block_size
        log.info("resync of %s: %d dirty blocks", export.name, tracker.lost_blocks)
        self._send(FrameType.RESYNC_START, export.id)
        self.flush()
        sent = 0
        data_from = 0  # blocks before the next data extent of a sparse image are holes
        zeroes: range | None = None  # a run of zero blocks, sent as one ZERO frame
        for block in tracker.lost():
            if not self._has_room() or sent % 64 == 63:
                # Before any wait: the VM's writes may come in during it, and must follow
                # (not precede) the copies of the blocks already taken for resync.
                self._send_zeroes(export, zeroes)
                zeroes = None
                self.flush()
                await self._wait_for_room()
            if self._transport is None or export.removed:
                return
            offset = block * block_size
            if offset >= data_from:
                data_from = disk.next_data(offset)
            data = None
            if offset + block_size > data_from:
                data = disk.read(offset, min(block_size, disk.size - offset))
            tracker.take_for_resync(block)
            sent += 1
            if data is None or data.count(0) == len(data):
                if zeroes is not None and zeroes.stop == block:
                    zeroes = range(zeroes.start, block + 1)
                else:
                    self._send_zeroes(export, zeroes)
                    zeroes = range(block, block + 1)
                continue
            seq = self._send(
                FrameType.WRITE, export.id, offset, payload=data, flags=FrameFlag.RESYNC
            )
            self._in_flight.append((seq, export, range(block, block + 1)))
            export.stats.resync_bytes += len(data)
        self._send_zeroes(export, zeroes)
        if self._transport is not None and not tracker.has_lost():
            self._send(FrameType.RESYNC_DONE, export.id)
            log.info("resync of %s: sent %d blocks", export.name, sent)
        self.flush()

    def _send_zeroes(self, export: TapExport, blocks: range | None) -> None:
        if blocks is None or self._transport is None:
            return
        block_size = export.tracker.block_size
        start = blocks.start * block_size
        end = min(blocks.stop * block_size, export.disk.size)
        seq = self._send(FrameType.ZERO, export.id, start, end - start)
        self._in_flight.append((seq, export, blocks))

    async def _wait_for_room(self) -> None:
        await asyncio.sleep(0)  # let the VMs' requests in between resync reads
        while self._transport is not None and not self._has_room():
            self._room.clear()
            # resume_writing only follows a pause_writing; a queue that stays between the
            # low and high marks never triggers either, so look again now and then.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room.wait(), _ROOM_POLL_SECONDS)

    def _has_room(self) -> bool:
        return self._transport is not None and self._buffered_bytes() < self._limit // 2
