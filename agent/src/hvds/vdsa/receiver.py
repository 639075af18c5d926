"""The VDSA's I/O receiver: takes the write copies of every tap on the host over a unix socket.

Each tap connection is decoded into frames and handed, in order, to a session of a consumer. The
session says when the tap may forget a copy (``Tap.acknowledge``: the sink once it applied it, the
replication source once every target made it durable), may stop the reading while it is full
(the tap then keeps further writes in its dirty bitmap), and may ask for a full sync.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
from pathlib import Path
from typing import Protocol, cast

from hvds.link.wire import Frame, FrameDecoder, FrameType, LinkProtocolError, encode_header

log = logging.getLogger(__name__)


class Tap(Protocol):
    """What a session may ask of the tap it serves."""

    def acknowledge(self, seq: int) -> None: ...

    def request_full_sync(self, export: int) -> None: ...

    def hold(self, cut: int, exports: list[int]) -> None: ...

    def release(self, cut: int) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def close(self) -> None: ...


class CopySession(Protocol):
    def take(self, frame: Frame) -> None: ...

    def batch_done(self) -> None: ...

    def close(self) -> None: ...


class CopyConsumer(Protocol):
    """What the receiver hands frames to: the image sink, or the replication source."""

    def open_session(self, peer: str, tap: Tap) -> CopySession: ...


class TapConnection(asyncio.BufferedProtocol):
    def __init__(self, consumer: CopyConsumer) -> None:
        self._consumer = consumer
        self._decoder = FrameDecoder()
        self._transport: asyncio.Transport | None = None
        self._session: CopySession | None = None
        self._expected_seq = 1
        self._acknowledged = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without inheriting from it.
        self._transport = cast(asyncio.Transport, transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._decoder.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        assert self._transport is not None
        try:
            frames = self._decoder.buffer_updated(nbytes)
            for frame in frames:
                self._take(frame)
        except (LinkProtocolError, OSError, ValueError) as exc:
            log.error("dropping tap connection: %s", exc)
            self._transport.abort()
            return
        if frames and self._session is not None:
            self._session.batch_done()

    def acknowledge(self, seq: int) -> None:
        """Tell the tap that every copy up to ``seq`` is taken care of."""
        if seq > self._acknowledged and self._transport is not None:
            self._acknowledged = seq
            self._transport.write(encode_header(FrameType.ACK, seq))

    def request_full_sync(self, export: int) -> None:
        """Ask the tap to send every block of ``export`` again (a target starts empty)."""
        if self._transport is not None:
            self._transport.write(encode_header(FrameType.FULL_SYNC, 0, export))

    def hold(self, cut: int, exports: list[int]) -> None:
        """Checkpoint barrier, phase one: the tap holds these exports' answers, marks the cut."""
        if self._transport is not None:
            payload = struct.pack(f">{len(exports)}I", *exports)
            self._transport.write(encode_header(FrameType.HOLD, 0, 0, cut, len(payload)) + payload)

    def release(self, cut: int) -> None:
        if self._transport is not None:
            self._transport.write(encode_header(FrameType.RELEASE, 0, 0, cut))

    def pause_reading(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._transport is not None:
            self._transport.resume_reading()

    def close(self) -> None:
        """The roles restart: the tap reconnects and resends what was not acknowledged."""
        if self._transport is not None:
            self._transport.close()

    def _take(self, frame: Frame) -> None:
        if frame.seq != self._expected_seq:
            raise LinkProtocolError(f"sequence {frame.seq} where {self._expected_seq} was due")
        self._expected_seq += 1
        if frame.type is FrameType.HELLO:
            if self._session is not None:
                raise LinkProtocolError("second HELLO on one connection")
            assert self._transport is not None
            peer = frame.payload.decode(errors="replace")
            self._session = self._consumer.open_session(peer, self)
            return
        if self._session is None:
            raise LinkProtocolError(f"{frame.type.name} before HELLO")
        if frame.type is FrameType.ACK:
            raise LinkProtocolError("a tap does not send ACK")
        self._session.take(frame)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._session is not None:
            self._session.close()


async def serve_taps(consumer: CopyConsumer, path: str) -> asyncio.Server:
    """Listen for taps on a unix socket that only this host's root and group may use."""
    socket_path = Path(path)
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    socket_path.unlink(missing_ok=True)
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(lambda: TapConnection(consumer), path)
    os.chmod(socket_path, 0o660)
    return server
