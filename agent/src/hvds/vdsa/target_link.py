"""One VPG's connection to one target VDSA: numbering, dedup, compression, throttle, resume.

The link numbers the VPG's items as it sends them (its own sequence, decision 0006), replaces
all-zero writes by ZERO entries and repeated ones by references (decision 0007), compresses each
batch with zstd, honours the VPG's bandwidth limit, and after a disconnect sends again, with the
same numbers, everything after the target's last durable sequence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NoReturn

from hvds.replication.dedup import MIN_DEDUP_BYTES, BlockCache, block_hash
from hvds.replication.stream import FrameStream
from hvds.replication.wire import (
    BatchCodec,
    Entry,
    EntryKind,
    ReplicationProtocolError,
    decode_hashes,
    json_frame,
    parse_ack,
    parse_json,
)
from hvds.replication.wire import Frame as ReplicationFrame
from hvds.replication.wire import FrameType as ReplFrame
from hvds.vdsa.config import TargetAddress

if TYPE_CHECKING:
    from hvds.vdsa.source import Item, VpgSource

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
BATCH_BYTES = 1024 * 1024
DEDUP_CACHE_BYTES = 64 * 1024 * 1024
# The blocks a fresh target hashes its mirrors by: the taps' default bitmap block, which is what
# their full-sync writes cover. A tap with another block size gets no matches: all is sent.
HASH_BLOCK = 64 * 1024
_RECONNECT_MIN, _RECONNECT_MAX = 0.1, 5.0
# A link that has not answered for this long is down: a connection attempt, data sent and not
# acknowledged by the peer's TCP (TCP_USER_TIMEOUT), an idle connection (keepalive probes).
# Without it a cut link (packets dropped, no reset) looked connected until TCP gave up, 15 min.
LINK_TIMEOUT = 10.0


@dataclass
class LinkStats:
    bytes_in: int = 0  # data bytes of the writes sent
    bytes_deduplicated: int = 0  # after zero elision and references
    bytes_on_wire: int = 0  # after compression, frame headers included
    acked_seq: int = 0
    connected: bool = False
    # Since when (time.time_ns()) the link has been down: its last disconnection, or the start
    # of the link when it never connected; 0 while connected. The manager alerts on it.
    down_since_ns: int = field(default_factory=time.time_ns)
    # When the newest checkpoint the target has made durable was cut: the RPO is now minus it.
    checkpoint_time_ns: int = 0
    # Why the target refuses the writes, if it does: "journal" (its journal is full: no write
    # fits) or "mirror" (its mirrors' datastore is full: no checkpoint can be applied).
    target_full: str | None = None

    @property
    def target_journal_full(self) -> bool:
        return self.target_full == "journal"

    @property
    def target_mirror_full(self) -> bool:
        return self.target_full == "mirror"


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
        self._mirror_hashes: dict[tuple[int, int], bytes] = {}
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
                TimeoutError,
            ) as exc:
                log.warning("%s -> %s: %s", self.vpg.name, self.target.server_name, exc)
            except Exception:
                # A bug must not end replication for good: log it whole, and connect again.
                log.exception("%s -> %s: unexpected error", self.vpg.name, self.target.server_name)
            if self.stats.connected:
                self.stats.down_since_ns = time.time_ns()
            self.stats.connected = False
            if self.stats.target_full:
                delay = _RECONNECT_MAX
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RECONNECT_MAX)

    async def _session(self) -> None:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                self.target.address.host,
                self.target.address.port,
                ssl=self._tls,
                server_hostname=self.target.server_name,
            ),
            LINK_TIMEOUT,
        )
        _detect_dead_link(writer.get_extra_info("socket"))
        try:
            hello = {
                "vpg": self.vpg.name,
                "source": self._vdsa_id,
                "protocol": PROTOCOL_VERSION,
                "dedup_cache_bytes": DEDUP_CACHE_BYTES,
                "hash_block": HASH_BLOCK,
            }
            writer.write(json_frame(ReplFrame.HELLO, hello))
            stream = FrameStream(reader)
            welcome = await stream.next()
            if welcome.type is ReplFrame.ERROR:
                self._refused(welcome)
            if welcome.type is not ReplFrame.WELCOME:
                raise ReplicationProtocolError(f"expected WELCOME, got {welcome.type.name}")
            resume = parse_json(welcome.payload)
            last_seq = resume.get("last_seq")
            if not isinstance(last_seq, int) or isinstance(last_seq, bool) or last_seq < 0:
                raise ReplicationProtocolError(f"WELCOME without a valid last_seq: {resume}")
            self._resume_after(last_seq)
            self._mirror_hashes = await self._read_hashes(stream, resume.get("hash_frames", 0))
            if resume.get("fresh"):
                self.vpg.start_full_sync()
            self.stats.connected = True
            self.stats.down_since_ns = 0
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

    @staticmethod
    async def _read_hashes(stream: FrameStream, count: object) -> dict[tuple[int, int], bytes]:
        """What a fresh target's mirrors hold: (disk, block) -> digest, to skip equal blocks."""
        if not isinstance(count, int) or not 0 <= count <= 1 << 20:
            raise ReplicationProtocolError(f"WELCOME announces {count!r} hash frames")
        hashes: dict[tuple[int, int], bytes] = {}
        for _ in range(count):
            received = await stream.next()
            if received.type is not ReplFrame.HASHES:
                raise ReplicationProtocolError(f"expected HASHES, got {received.type.name}")
            disk, block_size, digests = decode_hashes(received.payload)
            if block_size != HASH_BLOCK:
                raise ReplicationProtocolError(f"hashes of {block_size}-byte blocks")
            hashes.update(((disk, block), digest) for block, digest in digests.items())
        return hashes

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
                checkpoint = self._acknowledge(parse_ack(received.payload))
                # An ACK shows the target has room again: writes fit in its journal, and a
                # checkpoint acknowledged was applied to its mirrors. (A full mirror datastore
                # still takes writes into the journal: that alert ends with a checkpoint only.
                # Not on resuming: a checkpoint the target recorded but could not apply counts
                # in its last sequence.)
                if self.stats.target_full == "journal" or checkpoint:
                    self.stats.target_full = None
            elif received.type is ReplFrame.ERROR:
                self._refused(received)
            else:
                raise ReplicationProtocolError(f"unexpected {received.type.name} frame")

    def _refused(self, refusal: ReplicationFrame) -> NoReturn:
        reason = parse_json(refusal.payload)
        # A full journal or mirror datastore at the target: keep holding (then the taps keep
        # their bitmaps) and try again less eagerly; the target's mirror stays at its last
        # checkpoint. The alert lasts until the target shows it has room again (an ACK).
        full = reason.get("full")
        if full not in ("journal", "mirror"):
            full = "journal" if reason.get("journal_full") else None  # an older target
        self.stats.target_full = full
        raise ReplicationProtocolError(f"target refused: {reason.get('error')}")

    def _acknowledge(self, seq: int) -> bool:
        """Everything up to ``seq`` is durable at the target; True if a checkpoint was in it."""
        progressed = checkpoint = False
        while self._sent and self._sent[0][0] <= seq:
            _, index = self._sent.popleft()
            self.acked_index = index + 1
            progressed = True
            item = self.vpg.item(index)
            if item.kind is EntryKind.CHECKPOINT:
                self.stats.checkpoint_time_ns = item.time_ns
                checkpoint = True
        self.stats.acked_seq = max(self.stats.acked_seq, seq)
        if progressed:
            self.vpg.link_progressed()
        return checkpoint

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
        if item.resync and self._mirror_hashes and item.offset % HASH_BLOCK == 0:
            held = self._mirror_hashes.pop((item.disk, item.offset // HASH_BLOCK), None)
            if held is not None and held == block_hash(data):
                return Entry(EntryKind.SAME, seq, item.disk, item.offset, len(data))
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


def _detect_dead_link(sock: socket.socket | None) -> None:
    """Make the kernel end the connection when the link has been silent for LINK_TIMEOUT."""
    if sock is None or not hasattr(socket, "TCP_USER_TIMEOUT"):
        return
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(LINK_TIMEOUT * 1000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, int(LINK_TIMEOUT / 2))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, int(LINK_TIMEOUT / 2))
