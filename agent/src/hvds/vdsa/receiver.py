"""The VDSA's I/O receiver: takes the write copies of every tap on the host over a unix socket.

Each tap connection is decoded into frames and handed, in order, to a consumer; once the consumer
has taken a batch, the receiver acknowledges its last sequence so the tap can clear those blocks
from its dirty bitmap.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol, cast

from hvds.link.wire import Frame, FrameDecoder, FrameType, LinkProtocolError, encode_header

log = logging.getLogger(__name__)


class CopyConsumer(Protocol):
    """What the receiver hands frames to (the image sink here; the sequencer later)."""

    def open_session(self, peer: str) -> CopySession: ...


class CopySession(Protocol):
    def take(self, frame: Frame) -> None: ...

    def batch_done(self) -> None: ...

    def close(self) -> None: ...


class TapConnection(asyncio.Protocol):
    def __init__(self, consumer: CopyConsumer) -> None:
        self._consumer = consumer
        self._decoder = FrameDecoder()
        self._transport: asyncio.Transport | None = None
        self._session: CopySession | None = None
        self._expected_seq = 1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without inheriting from it.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        try:
            frames = self._decoder.feed(data)
            for frame in frames:
                self._take(frame)
        except (LinkProtocolError, OSError) as exc:
            log.error("dropping tap connection: %s", exc)
            self._transport.abort()
            return
        if frames and self._session is not None:
            self._session.batch_done()
            self._transport.write(encode_header(FrameType.ACK, self._expected_seq - 1))

    def _take(self, frame: Frame) -> None:
        if frame.seq != self._expected_seq:
            raise LinkProtocolError(f"sequence {frame.seq} where {self._expected_seq} was due")
        self._expected_seq += 1
        if frame.type is FrameType.HELLO:
            if self._session is not None:
                raise LinkProtocolError("second HELLO on one connection")
            self._session = self._consumer.open_session(frame.payload.decode(errors="replace"))
            return
        if self._session is None:
            raise LinkProtocolError(f"{frame.type.name} before HELLO")
        if frame.type is FrameType.ACK:
            raise LinkProtocolError("a tap does not send ACK")
        self._session.take(frame)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._session is not None:
            self._session.close()
