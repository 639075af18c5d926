"""The VDSA's source role: the copies of a protection group's writes, in order, to every target.

Flow: the tap's copies arrive through the receiver (``source_taps.SourceTapSession``) and become
*items* of their VPG, in arrival order, which is the order the tap completed them to the VMs. A
timer adds a checkpoint item every ``checkpoint_interval`` (or, for a VPG spread over hosts, the
coordinator's barrier does, decision 0009): everything before it in the VPG's order is the
consistent cut. Each target has a ``target_link.TargetLink`` that sends the items on.

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
from typing import TYPE_CHECKING

from hvds.replication.wire import EntryKind
from hvds.vdsa.config import SourceVpg
from hvds.vdsa.receiver import Tap
from hvds.vdsa.target_link import TargetLink

if TYPE_CHECKING:
    from hvds.vdsa.source_taps import SourceRouter

log = logging.getLogger(__name__)

# Longer than any barrier should take; the taps let go on their own a little later.
HOLD_TIMEOUT_SECONDS = 0.5


@dataclass(eq=False, slots=True)
class Item:
    """One write, zeroing or checkpoint of a VPG, held until every target has it."""

    kind: EntryKind
    disk: int = 0
    offset: int = 0
    length: int = 0
    data: bytes | bytearray = b""  # WRITE: the data; CHECKPOINT: JSON
    done: bool = False
    time_ns: int = 0  # CHECKPOINT: when the cut was taken
    resync: bool = False  # WRITE: a block resent from the disk, not a write of the VM


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
        # Disks out of write order. At start every disk is: the copies of the target's journal
        # may end inside a resync that a previous run of this VDSA left half sent, and only the
        # disk's tap can say (EXPORT clean, or RESYNC_DONE) that it is whole again.
        self._resyncing: set[int] = {disk.disk for disk in config.disks}
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

    def forget_tap(self, tap: Tap) -> None:
        self._flows.discard(tap)

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
