"""The tap-to-VDSA link frames."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hvds.link.wire import (
    HEADER,
    MAX_PAYLOAD,
    Frame,
    FrameDecoder,
    FrameFlag,
    FrameType,
    LinkProtocolError,
    encode,
    encode_header,
)


def test_frames_round_trip_across_any_split() -> None:
    frames = [
        Frame(FrameType.HELLO, 1, length=6, payload=b"host-a"),
        Frame(FrameType.EXPORT, 2, export=1, offset=1 << 30, length=9, payload=b"vm1-disk0"),
        Frame(FrameType.WRITE, 3, export=1, offset=4096, length=5, payload=b"hello"),
        Frame(FrameType.ZERO, 4, export=1, offset=0, length=1 << 20),
        Frame(FrameType.WRITE, 5, 1, 0, 3, FrameFlag.RESYNC, b"abc"),
    ]
    stream = b"".join(encode(f) for f in frames)
    for split in (1, 7, 32, len(stream)):
        decoder = FrameDecoder()
        out = []
        for i in range(0, len(stream), split):
            out += decoder.feed(stream[i : i + split])
        assert out == frames


def test_bad_magic_unknown_type_flags_and_huge_payload_are_refused() -> None:
    with pytest.raises(LinkProtocolError, match="magic"):
        FrameDecoder().feed(b"\x00" * HEADER.size)
    with pytest.raises(LinkProtocolError, match="type"):
        FrameDecoder().feed(encode_header(99, 1))  # type: ignore[arg-type]
    with pytest.raises(LinkProtocolError, match="flags"):
        FrameDecoder().feed(encode_header(FrameType.WRITE, 1, flags=0x80))
    with pytest.raises(LinkProtocolError, match="too large"):
        FrameDecoder().feed(encode_header(FrameType.WRITE, 1, length=MAX_PAYLOAD + 1))


@given(st.binary(max_size=400))
def test_garbage_raises_only_link_protocol_error(data: bytes) -> None:
    with contextlib.suppress(LinkProtocolError):
        FrameDecoder().feed(data)
