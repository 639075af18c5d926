"""Frames read one at a time from an asyncio stream."""

from __future__ import annotations

import asyncio
from collections import deque

from hvds.replication.wire import Frame, FrameReader


class FrameStream:
    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self._frames = FrameReader()
        self._pending: deque[Frame] = deque()

    async def next(self) -> Frame:
        while not self._pending:
            data = await self._reader.read(1 << 20)
            if not data:
                raise ConnectionResetError("the peer closed the connection")
            self._pending.extend(self._frames.feed(data))
        return self._pending.popleft()
