"""The VDSA's target role: takes a VPG's stream from its source VDSA into the journal.

One source connection per VPG at a time (a new one replaces a stale one). Each batch is written
to the journal and committed (fsynced) before it is acknowledged; a checkpoint entry makes the
journal bring the mirrors to that checkpoint. Journal work runs in a worker thread, one batch at
a time per VPG, so one VPG's fsync does not hold up the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hvds.disk import Disk
from hvds.files import write_atomic
from hvds.journal import (
    Checkpoint,
    DiskSpec,
    Journal,
    JournalFull,
    JournalUsage,
    JournalWrite,
    JournalZero,
    MirrorFull,
)
from hvds.replication.dedup import MIN_DEDUP_BYTES, BlockCache, block_hash
from hvds.replication.stream import FrameStream
from hvds.replication.wire import (
    BatchCodec,
    Entry,
    EntryKind,
    FrameType,
    ReplicationProtocolError,
    ack_frame,
    encode_hashes,
    json_frame,
    parse_json,
)
from hvds.tls import certificate_name
from hvds.vdsa.config import TargetVpg

log = logging.getLogger(__name__)

UNDO_BLOCK_SIZE = 4096
SOURCE_FILE = "source-host"  # in a journal's directory: the host whose tap fed it last
# A source may ask for a smaller dedup cache than this, never a larger one.
MAX_DEDUP_CACHE_BYTES = 256 * 1024 * 1024


@dataclass(eq=False)
class TargetVpgState:
    """One journal of a VPG: the whole VPG, or the disks of one of its source hosts."""

    config: TargetVpg
    source: str
    journal: Journal
    session: asyncio.Task[None] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # The journal is not thread-safe: batches and point-in-time views take turns on it.
    journal_lock: threading.Lock = field(default_factory=threading.Lock)
    # Taken after each batch, in the worker thread, so that status and metrics never touch the
    # journal while a batch is being applied (the journal is not thread-safe).
    usage: JournalUsage | None = None
    checkpoints: list[Checkpoint] = field(default_factory=list)
    last_seq: int = 0
    views_open: int = 0  # point-in-time views being served from this journal
    # The data analyzer's reports on the mirrors (see analysis.py).
    analysis: dict[str, Any] = field(default_factory=dict)
    # Why the source is refused until there is room (an alert): None, "journal" (the journal's
    # size limit or its own file system: no write fits) or "mirror" (the mirrors' datastore:
    # the writes are journaled but no checkpoint can be brought to the mirrors).
    full: str | None = None

    @property
    def journal_full(self) -> bool:
        return self.full == "journal"

    @property
    def mirror_full(self) -> bool:
        return self.full == "mirror"

    def resume_point(self) -> tuple[int, bool]:
        """The last durable sequence, and whether the journal is fresh: it has nothing of the
        disks yet, so the source must send them whole (a seeded mirror may spare some)."""
        with self.journal_lock:
            journal = self.journal
            return journal.last_seq, journal.last_seq == 0 and journal.latest() is None

    def note_source(self, source: str) -> bool:
        """Record which host feeds this journal; True if it was another one: the VM's disks
        moved to a new hypervisor, whose tap has none of the old one's dirty-block memory, so
        the disks are compared by hash instead of trusted (nothing is resent that is equal)."""
        path = self.journal.directory / SOURCE_FILE
        previous = path.read_text() if path.exists() else None
        if previous != source:
            write_atomic(path, source.encode())
        return previous is not None and previous != source

    def snapshot(self) -> None:
        """Record what the status and the metrics report (call with the journal idle)."""
        self.usage = self.journal.usage()
        self.checkpoints = self.journal.checkpoints()
        self.last_seq = self.journal.last_seq

    @property
    def label(self) -> str:
        return journal_label(self.config.name, self.source)


def full_reason(exc: JournalFull) -> str:
    """What is full: "mirror" (the mirrors' datastore) or "journal" (its limit or its disk)."""
    return "mirror" if isinstance(exc, MirrorFull) else "journal"


def journal_label(vpg: str, source: str) -> str:
    return f"{vpg}/{source}" if source else vpg


def open_journal(config: TargetVpg, journal_dir: Path, source: str = "") -> Journal:
    """The journal of a VPG's disks from ``source`` (all its disks for a one-host VPG)."""
    disks = [DiskSpec(d.disk, d.name, d.size, d.mirror) for d in config.disks if d.source == source]
    for disk in disks:
        disk.mirror.parent.mkdir(parents=True, exist_ok=True)
    directory = journal_dir / journal_label(config.name, source)
    directory.mkdir(parents=True, exist_ok=True)
    return Journal(
        directory,
        disks,
        retention_seconds=config.retention_hours * 3600,
        size_limit_bytes=config.journal_size_limit,
        # Undo is kept per block: 4 KiB, the guests' usual write size, so that a 4 KiB write
        # into a block that holds data costs 4 KiB of undo, not 64.
        block_size=UNDO_BLOCK_SIZE,
    )


class TargetServer:
    def __init__(
        self, vpgs: dict[str, TargetVpgState], failed: dict[str, str],
        refused: Callable[[str], str | None],
    ) -> None:  # fmt: skip
        self.vpgs = vpgs
        self.failed = failed  # journals that could not be opened: their sources are refused
        self.refused = refused  # why a VPG's source may not write here (a failover), if so

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            await self._session(reader, writer)
        except JournalFull as exc:
            full = full_reason(exc)
            what = "mirror datastore full" if full == "mirror" else "journal full"
            log.error("source %s: %s, refusing further writes: %s", peer, what, exc)
            with contextlib.suppress(Exception):
                # journal_full: what sources before the "full" reason read (they back off).
                message = {"error": f"{what}: {exc}", "journal_full": True, "full": full}
                writer.write(json_frame(FrameType.ERROR, message))
                await writer.drain()
        except (ReplicationProtocolError, ValueError) as exc:
            log.error("source %s: %s", peer, exc)
            with contextlib.suppress(Exception):
                writer.write(json_frame(FrameType.ERROR, {"error": str(exc)}))
                await writer.drain()
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
            log.warning("source %s: connection lost: %s", peer, exc)
        except asyncio.CancelledError:
            # A newer connection of the source replaced this one (or the service stops): the
            # end of this connection, not an error (asyncio logged a traceback for it).
            log.info("source %s: connection replaced or closed", peer)
        finally:
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stream = FrameStream(reader)
        hello = await stream.next()
        if hello.type is not FrameType.HELLO:
            raise ReplicationProtocolError(f"expected HELLO, got {hello.type.name}")
        info = parse_json(hello.payload)
        name, source = str(info.get("vpg")), str(info.get("source"))
        certified = certificate_name(writer.get_extra_info("peercert"))
        if source != certified:
            # A VDSA speaks for itself only: its HELLO must name the host its certificate names.
            raise ReplicationProtocolError(
                f"source {source!r} presents the certificate of {certified!r}"
            )
        for label in (journal_label(name, source), name):
            if label in self.failed:
                raise ReplicationProtocolError(
                    f"the journal of {label} cannot be used ({self.failed[label]}): "
                    "repair its mirrors' datastore, or recreate it and resync the VPG fully"
                )
        refusal = self.refused(name)
        if refusal is not None:
            raise ReplicationProtocolError(refusal)
        vpg = self.vpgs.get(journal_label(name, source)) or self.vpgs.get(name)
        if vpg is None:
            raise ReplicationProtocolError(f"no VPG {name!r} from {source!r} is replicated here")
        current = asyncio.current_task()
        if vpg.session is not None and vpg.session is not current:
            log.info("%s: a new source connection replaces the previous one", vpg.label)
            vpg.session.cancel()
        vpg.session = current
        async with vpg.lock:  # the replaced session finishes its batch first
            cache_bytes = info.get("dedup_cache_bytes", 0)
            if type(cache_bytes) is not int or cache_bytes < 0:
                raise ReplicationProtocolError(f"HELLO with dedup_cache_bytes {cache_bytes!r}")
            cache_bytes = min(cache_bytes, MAX_DEDUP_CACHE_BYTES)
            applier = BatchApplier(vpg, BlockCache(cache_bytes))
            # A replaced session's batch may still be finishing in its thread: wait for it.
            last_seq, fresh = await asyncio.to_thread(vpg.resume_point)
            if await asyncio.to_thread(vpg.note_source, source):
                log.warning("%s: its disks moved to host %s: comparing them by hash",
                            vpg.label, source)  # fmt: skip
                fresh = True
            hashes: list[bytes] = []
            block_size = info.get("hash_block")
            if fresh and isinstance(block_size, int) and _valid_hash_block(block_size):
                hashes = await asyncio.to_thread(_mirror_hash_frames, vpg, block_size)
            writer.write(json_frame(FrameType.WELCOME, {
                "vpg": vpg.config.name, "last_seq": last_seq, "fresh": fresh,
                "hash_frames": len(hashes),
            }))  # fmt: skip
            writer.writelines(hashes)
            log.info(
                "%s: source %s connected at sequence %d",
                vpg.config.name,
                info.get("source"),
                last_seq,
            )
            codec = BatchCodec()
            while True:
                received = await stream.next()
                if received.type is not FrameType.BATCH:
                    raise ReplicationProtocolError(f"unexpected {received.type.name} frame")
                entries = codec.batch_entries(received)
                last = await asyncio.to_thread(applier.apply, entries)
                writer.write(ack_frame(last))
                await writer.drain()


# Mirror hashes go out in frames of at most this many blocks.
_HASHES_PER_FRAME = 65536


def _valid_hash_block(size: int) -> bool:
    return 4096 <= size <= 64 * 1024 * 1024 and not size & (size - 1)


def _mirror_hash_frames(vpg: TargetVpgState, block_size: int) -> list[bytes]:
    """HASHES frames for every block of the VPG's mirrors that holds data (holes are zeroes,
    which the source elides anyway)."""
    frames = []
    for disk in vpg.config.disks:
        if disk.source != vpg.source or not disk.mirror.exists():
            continue
        mirror = Disk(disk.mirror, read_only=True)
        try:
            digests: list[tuple[int, bytes]] = []
            for block in _data_blocks(mirror, block_size):
                offset = block * block_size
                digests.append(
                    (block, block_hash(mirror.read(offset, min(block_size, disk.size - offset))))
                )
                if len(digests) == _HASHES_PER_FRAME:
                    frames.append(encode_hashes(disk.disk, block_size, digests))
                    digests = []
            if digests:
                frames.append(encode_hashes(disk.disk, block_size, digests))
        finally:
            mirror.close()
    return frames


def _data_blocks(disk: Disk, block_size: int) -> Iterator[int]:
    """The blocks of ``disk`` that hold any data, skipping holes without reading them."""
    offset = 0
    while offset < disk.size:
        data_at = disk.next_data(offset)
        if data_at >= disk.size:
            return
        block = data_at // block_size
        yield block
        offset = (block + 1) * block_size


class BatchApplier:
    """Turns a batch's entries into journal records (in a worker thread)."""

    def __init__(self, vpg: TargetVpgState, cache: BlockCache) -> None:
        self._vpg = vpg
        self._mirrors = {d.disk: d.mirror for d in vpg.config.disks if d.source == vpg.source}
        self._journal = vpg.journal
        self._disk_sizes = {d.disk: d.size for d in vpg.config.disks if d.source == vpg.source}
        self._cache = cache

    def apply(self, entries: list[Entry]) -> int:
        """Journal a batch; the highest durable sequence after it. Whatever part of the batch
        went in is committed even when the rest fails (a full journal, a bad entry), so that the
        source resumes exactly after it."""
        with self._vpg.journal_lock:
            return self._apply(entries)

    def _apply(self, entries: list[Entry]) -> int:
        journal = self._journal
        records: list[JournalWrite | JournalZero] = []
        try:
            for entry in entries:
                if entry.kind is EntryKind.CHECKPOINT:
                    journal.append(records)
                    records = []
                    info = entry.checkpoint_info()
                    journal.checkpoint(
                        tag=str(info.get("tag", "")),
                        description=str(info.get("description", "")),
                        time_ns=int(info["time_ns"]),
                        seq=entry.seq,
                    )
                    # The mirrors took this checkpoint and every one pending before it.
                    self._vpg.full = None
                    if not self._vpg.views_open:
                        # History past the retention window or the size limit; kept while a
                        # view may be reading it (only a full journal reclaims it then).
                        journal.reclaim()
                else:
                    records.append(self._record(entry))
            journal.append(records)
            if self._vpg.full == "journal":
                # Writes fit again. A full mirror datastore is not over until a checkpoint
                # is applied: batches of writes alone still go into the journal meanwhile.
                self._vpg.full = None
        except JournalFull as exc:
            self._vpg.full = full_reason(exc)
            raise
        finally:
            journal.commit()
            self._vpg.snapshot()
        return journal.last_seq

    def _mirror_read(self, entry: Entry) -> bytes:
        mirror = Disk(self._mirrors[entry.disk], read_only=True)
        try:
            return mirror.read(entry.offset, entry.length)
        finally:
            mirror.close()

    def _record(self, entry: Entry) -> JournalWrite | JournalZero:
        size = self._disk_sizes.get(entry.disk)
        if size is None:
            raise ReplicationProtocolError(f"entry for unknown disk {entry.disk} (seq {entry.seq})")
        if entry.offset + entry.length > size:
            raise ReplicationProtocolError(f"entry beyond the end of disk {entry.disk}")
        if entry.kind is EntryKind.ZERO:
            return JournalZero(entry.seq, entry.disk, entry.offset, entry.length)
        if entry.kind is EntryKind.SAME:
            # The source found this block equal to our mirror's: journal what the mirror holds.
            return JournalWrite(entry.seq, entry.disk, entry.offset, self._mirror_read(entry))
        if entry.kind is EntryKind.REF:
            data = self._cache.get(bytes(entry.body))
            if data is None:
                raise ReplicationProtocolError(f"reference to a block not held (seq {entry.seq})")
            if len(data) != entry.length:
                raise ReplicationProtocolError(f"reference of the wrong length (seq {entry.seq})")
        else:
            data = entry.body
            if len(data) >= MIN_DEDUP_BYTES:
                self._cache.put(block_hash(data), data)
        return JournalWrite(entry.seq, entry.disk, entry.offset, data)
