"""The source role's side of the taps: each tap connection's frames become items of their VPG,
and each copy is acknowledged to its tap once every target of its VPG has it (decision 0005)."""

from __future__ import annotations

import logging
from collections import deque

from hvds.link.wire import Frame, FrameFlag, FrameType
from hvds.replication.wire import EntryKind
from hvds.vdsa.receiver import CopySession, Tap
from hvds.vdsa.source import Item, VpgSource

log = logging.getLogger(__name__)


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

    def close_all(self) -> None:
        for session in list(self._sessions):
            session.close_tap()

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
            item = Item(
                EntryKind.WRITE,
                disk,
                frame.offset,
                len(frame.payload),
                frame.payload,
                resync=bool(frame.flags & FrameFlag.RESYNC),
            )
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

    def close_tap(self) -> None:
        self._tap.close()

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
                place[0].forget_tap(self._tap)
        self._router.session_closed(self)
