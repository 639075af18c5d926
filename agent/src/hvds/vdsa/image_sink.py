"""A consumer that applies every copy, in order, to an image per export in a directory.

Without a directory it only checks, counts and acknowledges the copies: what a VDSA's intake
costs the host, without a replica disk (the tap benchmark uses it so).

It stands in for the replication pipeline until the journal exists: what it writes must equal
the tap's disks. With ``record`` it also logs each frame as a JSON line, so tests can count what
was sent (and resent) and in which order.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import IO
from urllib.parse import quote

from hvds.disk import Disk
from hvds.link.wire import Frame, FrameFlag, FrameType, LinkProtocolError
from hvds.vdsa.receiver import CopySession, Tap

log = logging.getLogger(__name__)


class ImageSink:
    def __init__(self, directory: Path | None, record: Path | None = None) -> None:
        self.directory = directory
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
        self._record: IO[str] | None = record.open("a", buffering=1 << 20) if record else None

    def open_session(self, peer: str, tap: Tap) -> ImageSinkSession:
        log.info("tap %s connected", peer)
        return ImageSinkSession(self, peer, tap)

    def image_path(self, export_name: str) -> Path | None:
        if self.directory is None:
            return None
        return self.directory / f"{quote(export_name, safe='')}.img"

    def record(self, peer: str, frame: Frame, export_name: str) -> None:
        if self._record is None:
            return
        entry = {
            "tap": peer,
            "seq": frame.seq,
            "type": frame.type.name,
            "export": export_name,
            "offset": frame.offset,
            "length": frame.length,
            "resync": bool(frame.flags & FrameFlag.RESYNC),
        }
        self._record.write(json.dumps(entry) + "\n")

    def flush_record(self) -> None:
        if self._record is not None:
            self._record.flush()


class ImageSinkSession(CopySession):
    def __init__(self, sink: ImageSink, peer: str, tap: Tap) -> None:
        self._sink = sink
        self._peer = peer
        self._tap = tap
        self._last_seq = 0
        self._disks: dict[int, tuple[str, int, Disk | None]] = {}  # name, size, image

    def take(self, frame: Frame) -> None:
        self._last_seq = frame.seq
        if frame.type is FrameType.EXPORT:
            self._open(frame)
            return
        if frame.export not in self._disks:
            raise LinkProtocolError(f"{frame.type.name} for undeclared export {frame.export}")
        name, size, disk = self._disks[frame.export]
        self._sink.record(self._peer, frame, name)
        if frame.type not in (FrameType.WRITE, FrameType.ZERO):
            return
        if frame.offset + frame.length > size:
            raise LinkProtocolError(f"{frame.type.name} beyond the end of {name}")
        if disk is None:
            return
        if frame.type is FrameType.WRITE:
            disk.write(frame.offset, frame.payload)
        else:
            disk.zero(frame.offset, frame.length, may_trim=True)

    def _open(self, frame: Frame) -> None:
        name = frame.payload.decode()
        old = self._disks.pop(frame.export, None)
        if old is not None and old[2] is not None:
            old[2].close()
        path = self._sink.image_path(name)
        if path is None:
            self._disks[frame.export] = (name, frame.offset, None)
            return
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size != frame.offset:
                os.ftruncate(fd, frame.offset)
        finally:
            os.close(fd)
        self._disks[frame.export] = (name, frame.offset, Disk(path))

    def batch_done(self) -> None:
        self._sink.flush_record()
        self._tap.acknowledge(self._last_seq)  # applied to the replica images

    def close(self) -> None:
        self._sink.flush_record()
        for _, _, disk in self._disks.values():
            if disk is not None:
                disk.close()
        self._disks.clear()
