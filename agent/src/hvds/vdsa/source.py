"""The VDSA's source role: the copies of a protection group's writes, in order, to every target.

Flow: the tap's copies arrive through the receiver (``SourceTapSession``) and become *items* of
their VPG, in arrival order, which is the order the tap completed them to the VMs. A timer adds
a checkpoint item every ``checkpoint_interval``: everything before it in the VPG's order is the
consistent cut. Each target has a ``TargetLink`` that numbers the items it sends (its own
sequence), deduplicates and zero-elides them, compresses batches, honours the bandwidth limit,
and resumes after a disconnect from the target's last durable sequence.

A copy is acknowledged to the tap only once every target has made it durable. Until then the
VDSA holds it in memory (bounded by ``max_unacknowledged_bytes``: beyond that it stops reading
from the tap, and the tap keeps the overflow in its dirty bitmap). So a crash of this VDSA loses
nothing: the tap resends, from the disk, every block not acknowledged.

While any disk of a VPG is being resynced from a tap's bitmap, its copies are not in write order,
and no checkpoint is taken: the target keeps its last consistent checkpoint until it is over.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections import deque
from dataclasses import dataclass

from hvds.link.wire import Frame, FrameFlag, FrameType
from hvds.replication.dedup import MIN_DEDUP_BYTES, BlockCache, block_hash
from hvds.replication.stream import FrameStream
from hvds.replication.wire import (
    BatchCodec,
    Entry,
    EntryKind,
    ReplicationProtocolError,
    json_frame,
    parse_ack,
    parse_json,
)
from hvds.replication.wire import FrameType as ReplFrame
from hvds.vdsa.config import SourceVpg, TargetAddress
from hvds.vdsa.receiver import CopySession, Tap

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
BATCH_BYTES = 1024 * 1024
DEDUP_CACHE_BYTES = 64 * 1024 * 1024
_RECONNECT_MIN, _RECONNECT_MAX = 0.1, 5.0
# Longer than any barrier should take; the taps let go on their own a little later.
HOLD_TIMEOUT_SECONDS = 0.5


@dataclass(eq=False, slots=True)
class Item:
    """One write, zeroing or checkpoint of a VPG, held until every target has it."""

    kind: EntryKind
    disk: int = 0
    offset: int = 0
    length: int = 0
    data: bytes = b""  # WRITE: the data; CHECKPOINT: JSON
    done: bool = False
    time_ns: int = 0  # CHECKPOINT: when the cut was taken


@dataclass
class LinkStats:
    bytes_in: int = 0  # data bytes of the writes sent
    bytes_deduplicated: int = 0  # after zero elision and references
    bytes_on_wire: int = 0  # after compression, frame headers included
    acked_seq: int = 0
    connected: bool = False
    # When the newest checkpoint the target has made durable was cut: the RPO is now minus it.
    checkpoint_time_ns: int = 0
    target_journal_full: bool = False


@dataclass(eq=False)
class _PendingCut:
    remaining: int  # taps whose marker has not arrived yet
    tag: str
    description: str
    done: asyncio.Future[bool]


class VpgSource:
    def __init__(
        self, config: SourceVpg, tls: ssl.SSLContext, vdsa_id: str, router: SourceRouter
    ) -> None:
        self.config = config
        self.name = config.name
        self._items: deque[Item] = deque()
        self._base = 0  # absolute index of _items[0]
        self._held_bytes = 0
        self._resyncing: set[int] = set()
        self._router = router
        # Disks whose tap must send every block again, once it is connected.
        self.full_sync_wanted: set[int] = set()
        self._flows: set[Tap] = set()
        self._paused = False
        self.checkpoints_taken = 0
        self._cuts: dict[int, _PendingCut] = {}
        self.links = [TargetLink(self, target, tls, vdsa_id) for target in config.targets]
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(link.run(), name=f"link-{self.name}") for link in self.links
        ]
        self._tasks.append(asyncio.create_task(self._checkpoint_timer(), name=f"cp-{self.name}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- intake ----------------------------------------------------------------------------

    @property
    def end(self) -> int:
        """Absolute index after the last item."""
        return self._base + len(self._items)

    def item(self, index: int) -> Item:
        return self._items[index - self._base]

    def intake(self, item: Item, flow: Tap | None = None) -> None:
        self._items.append(item)
        self._held_bytes += len(item.data)
        if flow is not None:
            self._flows.add(flow)
        if self._held_bytes > self.config.max_unacknowledged_bytes and not self._paused:
            log.warning("%s: targets are behind, pausing the taps", self.name)
            self._paused = True
            for tap in self._flows:
                tap.pause_reading()
        for link in self.links:
            link.wake()

    def set_resyncing(self, disk: int, resyncing: bool) -> None:
        if resyncing:
            if disk not in self._resyncing:
                log.info("%s: disk %d out of write order until its resync is done", self.name, disk)
            self._resyncing.add(disk)
        elif disk in self._resyncing:
            self._resyncing.discard(disk)
            log.info("%s: disk %d back in write order", self.name, disk)

    @property
    def held_bytes(self) -> int:
        return self._held_bytes

    @property
    def consistent(self) -> bool:
        return not self._resyncing

    def checkpoint(self, tag: str = "", description: str = "", time_ns: int = 0) -> bool:
        """Cut a checkpoint after every item so far; False while a resync makes it impossible.

        ``time_ns`` names the cut: a coordinated checkpoint gets the same one on every host of
        the VPG, and the target matches the hosts' parts by it."""
        if not self.consistent:
            return False
        now = time_ns or time.time_ns()
        body = json.dumps({"time_ns": now, "tag": tag, "description": description}).encode()
        self.intake(Item(EntryKind.CHECKPOINT, length=len(body), data=body, time_ns=now))
        self.checkpoints_taken += 1
        return True

    async def _checkpoint_timer(self) -> None:
        while not self.config.coordinated:
            await asyncio.sleep(self.config.checkpoint_interval)
            self.checkpoint()

    # -- coordinated checkpoints (decision 0009) -------------------------------------------

    async def hold(self, cut: int, tag: str, description: str) -> bool:
        """Barrier phase one: hold the answers to this VPG's writes in the taps and cut the
        stream where each tap marks it. True once the cut is in the VPG's order."""
        taps = self._router.taps_of(self)
        if not taps or not self.consistent:
            return False
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._cuts[cut] = _PendingCut(len(taps), tag, description, done)
        for session, exports in taps:
            session.hold(cut, exports)
        try:
            return await asyncio.wait_for(done, HOLD_TIMEOUT_SECONDS)
        finally:
            self._cuts.pop(cut, None)

    def marker(self, cut: int) -> None:
        """A tap marked the cut in its stream: everything before it belongs to the cut."""
        pending = self._cuts.get(cut)
        if pending is None or pending.done.done():
            return
        pending.remaining -= 1
        if pending.remaining == 0:
            pending.done.set_result(self.checkpoint(pending.tag, pending.description, cut))

    def release(self, cut: int) -> None:
        """Barrier phase two: let the held writes complete."""
        for session, _ in self._router.taps_of(self):
            session.release(cut)

    # -- completion ------------------------------------------------------------------------

    def link_progressed(self) -> None:
        """A target acknowledged: release what every target has."""
        floor = min(link.acked_index for link in self.links)
        released = False
        while self._base < floor and self._items:
            item = self._items.popleft()
            self._base += 1
            self._held_bytes -= len(item.data)
            item.done = True
            released = True
        if self._paused and self._held_bytes < self.config.max_unacknowledged_bytes // 2:
            log.info("%s: targets caught up, resuming the taps", self.name)
            self._paused = False
            for tap in self._flows:
                tap.resume_reading()
        if released:
            self._router.progress()

    def start_full_sync(self) -> None:
        """A target starts empty: every block of every disk goes to it from the taps."""
        log.info("%s: full sync of %d disks", self.name, len(self.config.disks))
        for disk in self.config.disks:
            self.set_resyncing(disk.disk, True)
            self.full_sync_wanted.add(disk.disk)
        self._router.dispatch_full_sync()


class TargetLink:
    """The connection of one VPG to one target VDSA."""

    def __init__(
        self, vpg: VpgSource, target: TargetAddress, tls: ssl.SSLContext, vdsa_id: str
    ) -> None:
        self.vpg = vpg
        self.target = target
        self._tls = tls
        self._vdsa_id = vdsa_id
        self.acked_index = 0  # every item before this is durable at the target
        self._sent: deque[tuple[int, int]] = deque()  # (target seq, item index), unacknowledged
        self._next_index = 0
        self._next_seq = 1
        self._wakeup = asyncio.Event()
        self._send_at = 0.0  # bandwidth limit: when the next byte may go
        self.stats = LinkStats()

    def wake(self) -> None:
        self._wakeup.set()

    async def run(self) -> None:
        delay = _RECONNECT_MIN
        while True:
            try:
                await self._session()
                delay = _RECONNECT_MIN
            except (
                OSError,
                ssl.SSLError,
                ReplicationProtocolError,
                asyncio.IncompleteReadError,
            ) as exc:
                log.warning("%s -> %s: %s", self.vpg.name, self.target.server_name, exc)
            self.stats.connected = False
            if self.stats.target_journal_full:
                delay = _RECONNECT_MAX
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RECONNECT_MAX)

    async def _session(self) -> None:
        reader, writer = await asyncio.open_connection(
            self.target.address.host,
            self.target.address.port,
            ssl=self._tls,
            server_hostname=self.target.server_name,
        )
        try:
            hello = {
                "vpg": self.vpg.name,
                "source": self._vdsa_id,
                "protocol": PROTOCOL_VERSION,
                "dedup_cache_bytes": DEDUP_CACHE_BYTES,
            }
            writer.write(json_frame(ReplFrame.HELLO, hello))
            stream = FrameStream(reader)
            welcome = await stream.next()
            if welcome.type is not ReplFrame.WELCOME:
                raise ReplicationProtocolError(f"expected WELCOME, got {welcome.type.name}")
            resume = parse_json(welcome.payload)
            self._resume_after(int(resume["last_seq"]))
            if resume.get("fresh"):
                self.vpg.start_full_sync()
            self.stats.connected = True
            self.stats.target_journal_full = False
            log.info(
                "%s -> %s: connected, resuming at sequence %d",
                self.vpg.name,
                self.target.server_name,
                self._next_seq,
            )
            acks = asyncio.create_task(self._read_acks(stream))
            try:
                await self._send_loop(writer, acks)
            finally:
                acks.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await acks
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _resume_after(self, last_seq: int) -> None:
        """Take the target's last durable sequence as acknowledged, and resend what follows."""
        if last_seq < self.stats.acked_seq:
            # The target lost sequences it had acknowledged (its journal was rolled back or
            # replaced): what it lacks is no longer held here.
            log.error(
                "%s -> %s: target is back at sequence %d after acknowledging %d; "
                "a full sync is needed",
                self.vpg.name, self.target.server_name, last_seq, self.stats.acked_seq,
            )  # fmt: skip
        self._acknowledge(last_seq)
        # What was sent after last_seq is sent again, with the same numbers.
        self._sent.clear()
        self._next_index = self.acked_index
        self._next_seq = last_seq + 1

    async def _read_acks(self, stream: FrameStream) -> None:
        while True:
            received = await stream.next()
            if received.type is ReplFrame.ACK:
                self._acknowledge(parse_ack(received.payload))
            elif received.type is ReplFrame.ERROR:
                refusal = parse_json(received.payload)
                # A full journal at the target: keep holding (then the taps keep their bitmaps)
                # and try again less eagerly; the target's mirror stays at its last checkpoint.
                self.stats.target_journal_full = bool(refusal.get("journal_full"))
                raise ReplicationProtocolError(f"target refused: {refusal.get('error')}")
            else:
                raise ReplicationProtocolError(f"unexpected {received.type.name} frame")

    def _acknowledge(self, seq: int) -> None:
        progressed = False
        while self._sent and self._sent[0][0] <= seq:
            _, index = self._sent.popleft()
            self.acked_index = index + 1
            progressed = True
            item = self.vpg.item(index)
            if item.kind is EntryKind.CHECKPOINT:
                self.stats.checkpoint_time_ns = item.time_ns
        self.stats.acked_seq = max(self.stats.acked_seq, seq)
        if progressed:
            self.vpg.link_progressed()

    async def _send_loop(self, writer: asyncio.StreamWriter, acks: asyncio.Task[None]) -> None:
        codec = BatchCodec()
        cache = BlockCache(DEDUP_CACHE_BYTES)
        while not acks.done():
            if self._next_index >= self.vpg.end:
                self._wakeup.clear()
                waiter = asyncio.create_task(self._wakeup.wait())
                await asyncio.wait({waiter, acks}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                continue
            entries = self._next_batch(cache)
            frame, raw_size = codec.batch_frame(entries, self.vpg.config.compression)
            self.stats.bytes_deduplicated += raw_size
            self.stats.bytes_on_wire += len(frame)
            writer.write(frame)
            await writer.drain()
            await self._throttle(len(frame))
        acks.result()  # raise what ended the acknowledgements

    def _next_batch(self, cache: BlockCache) -> list[Entry]:
        entries: list[Entry] = []
        size = 0
        while self._next_index < self.vpg.end and size < BATCH_BYTES:
            item = self.vpg.item(self._next_index)
            entry = self._entry(item, self._next_seq, cache)
            entries.append(entry)
            self._sent.append((self._next_seq, self._next_index))
            self._next_index += 1
            self._next_seq += 1
            size += len(entry.body)
            if item.kind is EntryKind.CHECKPOINT:
                break  # a checkpoint goes out at once: it is what the target waits for
        return entries

    def _entry(self, item: Item, seq: int, cache: BlockCache) -> Entry:
        if item.kind is not EntryKind.WRITE:
            return Entry(item.kind, seq, item.disk, item.offset, item.length, item.data)
        data = item.data
        self.stats.bytes_in += len(data)
        if data.count(0) == len(data):
            return Entry(EntryKind.ZERO, seq, item.disk, item.offset, len(data))
        if len(data) >= MIN_DEDUP_BYTES:
            digest = block_hash(data)
            if cache.get(digest) is not None:
                return Entry(EntryKind.REF, seq, item.disk, item.offset, len(data), digest)
            cache.put(digest, data)
        return Entry(EntryKind.WRITE, seq, item.disk, item.offset, len(data), data)

    async def _throttle(self, nbytes: int) -> None:
        limit = self.vpg.config.bandwidth_limit
        if not limit:
            return
        now = time.monotonic()
        self._send_at = max(self._send_at, now) + nbytes / limit
        if self._send_at > now:
            await asyncio.sleep(self._send_at - now)


class SourceRouter:
    """The receiver's consumer in the source role: sends each tap's copies to their VPG."""

    def __init__(self) -> None:
        self._disks: dict[str, tuple[VpgSource, int]] = {}
        self._sessions: set[SourceTapSession] = set()

    def add(self, vpg: VpgSource) -> None:
        for disk in vpg.config.disks:
            self._disks[disk.export] = (vpg, disk.disk)

    def locate(self, export: str) -> tuple[VpgSource, int] | None:
        return self._disks.get(export)

    def open_session(self, peer: str, tap: Tap) -> SourceTapSession:
        session = SourceTapSession(self, peer, tap)
        self._sessions.add(session)
        return session

    def session_closed(self, session: SourceTapSession) -> None:
        self._sessions.discard(session)

    def progress(self) -> None:
        for session in list(self._sessions):
            session.advance()

    def taps_of(self, vpg: VpgSource) -> list[tuple[SourceTapSession, list[int]]]:
        """The connected taps serving ``vpg``'s disks, each with the export ids it serves."""
        taps = []
        for session in self._sessions:
            exports = session.exports_of(vpg)
            if exports:
                taps.append((session, exports))
        return taps

    def dispatch_full_sync(self) -> None:
        for session in list(self._sessions):
            session.ask_full_sync()


class SourceTapSession(CopySession):
    def __init__(self, router: SourceRouter, peer: str, tap: Tap) -> None:
        self._router = router
        self._peer = peer
        self._tap = tap
        self._exports: dict[int, tuple[VpgSource, int] | None] = {}
        # Tap frames in order, with the item each became (None: nothing to wait for).
        self._pending: deque[tuple[int, Item | None]] = deque()

    def take(self, frame: Frame) -> None:
        item: Item | None = None
        if frame.type is FrameType.MARKER:
            for vpg in {place[0] for place in self._exports.values() if place is not None}:
                vpg.marker(frame.offset)
        elif frame.type is FrameType.EXPORT:
            name = frame.payload.decode()
            place = self._router.locate(name)
            self._exports[frame.export] = place
            if place is not None:
                vpg, disk = place
                # A disk waiting for its full sync stays out of order whatever the tap says.
                dirty = bool(frame.flags & FrameFlag.DIRTY) or disk in vpg.full_sync_wanted
                vpg.set_resyncing(disk, dirty)
                self.ask_full_sync()
            else:
                log.info("tap %s: export %s is in no protection group", self._peer, name)
        else:
            place = self._exports.get(frame.export)
            if frame.export not in self._exports:
                raise ValueError(f"{frame.type.name} for undeclared export {frame.export}")
            if place is not None:
                item = self._item(frame, *place)
        self._pending.append((frame.seq, item))

    def _item(self, frame: Frame, vpg: VpgSource, disk: int) -> Item | None:
        if frame.type is FrameType.RESYNC_START:
            vpg.set_resyncing(disk, True)
            return None
        if frame.type is FrameType.RESYNC_DONE:
            vpg.set_resyncing(disk, False)
            return None
        if frame.type is FrameType.WRITE:
            item = Item(EntryKind.WRITE, disk, frame.offset, len(frame.payload), frame.payload)
        elif frame.type is FrameType.ZERO:
            item = Item(EntryKind.ZERO, disk, frame.offset, frame.length)
        else:
            return None
        vpg.intake(item, self._tap)
        return item

    def batch_done(self) -> None:
        self.advance()

    def exports_of(self, vpg: VpgSource) -> list[int]:
        return [e for e, place in self._exports.items() if place is not None and place[0] is vpg]

    def hold(self, cut: int, exports: list[int]) -> None:
        self._tap.hold(cut, exports)

    def release(self, cut: int) -> None:
        self._tap.release(cut)

    def ask_full_sync(self) -> None:
        """Ask this tap for a full sync of its disks whose VPG wants one."""
        for export, place in self._exports.items():
            if place is not None and place[1] in place[0].full_sync_wanted:
                place[0].full_sync_wanted.discard(place[1])
                self._tap.request_full_sync(export)

    def advance(self) -> None:
        pending = self._pending
        last = 0
        while pending and (pending[0][1] is None or pending[0][1].done):
            last = pending.popleft()[0]
        if last:
            self._tap.acknowledge(last)

    def close(self) -> None:
        # Until this tap is back and says its exports are clean (or resynced), the copies of
        # its disks may lack writes it completed: no checkpoint may claim them.
        for place in self._exports.values():
            if place is not None:
                place[0].set_resyncing(place[1], True)
        self._router.session_closed(self)
