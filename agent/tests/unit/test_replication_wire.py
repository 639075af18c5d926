"""The site-to-site frames, batches and the dedup cache, fed bytes (no sockets)."""

from __future__ import annotations

import contextlib
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hvds.replication.dedup import BlockCache, block_hash
from hvds.replication.wire import (
    MAX_FRAME_PAYLOAD,
    BatchCodec,
    Entry,
    EntryKind,
    FrameFlag,
    FrameReader,
    FrameType,
    ReplicationProtocolError,
    ack_frame,
    decode_entries,
    decode_hashes,
    encode_entries,
    encode_hashes,
    frame,
    json_frame,
    parse_ack,
    parse_json,
)

ENTRIES = [
    Entry(EntryKind.WRITE, 1, 1, 4096, 5, b"hello"),
    Entry(EntryKind.ZERO, 2, 1, 0, 1 << 30),
    Entry(EntryKind.REF, 3, 2, 8192, 4096, b"\x01" * 16),
    Entry(EntryKind.CHECKPOINT, 4, 0, 0, 13, b'{"tag": "x"}\n'),
]


def test_entries_round_trip() -> None:
    assert decode_entries(encode_entries(ENTRIES)) == ENTRIES


@pytest.mark.parametrize("compress", [False, True])
def test_batches_round_trip_through_frames_split_anywhere(compress: bool) -> None:
    sender, receiver = BatchCodec(), BatchCodec()
    entries = [*ENTRIES, Entry(EntryKind.WRITE, 5, 1, 0, 65536, b"a" * 65536)]
    batch, raw_size = sender.batch_frame(entries, compress)
    assert raw_size == len(encode_entries(entries))
    if compress:
        assert len(batch) < raw_size / 10  # 64 KiB of "a" compresses
    stream = json_frame(FrameType.HELLO, {"vpg": "v"}) + batch + ack_frame(7)
    for split in (1, 33, len(stream)):
        reader = FrameReader()
        frames = []
        for i in range(0, len(stream), split):
            frames += reader.feed(stream[i : i + split])
        assert [f.type for f in frames] == [FrameType.HELLO, FrameType.BATCH, FrameType.ACK]
        assert bool(frames[1].flags & FrameFlag.COMPRESSED) == compress
        assert receiver.batch_entries(frames[1]) == entries
        assert parse_json(frames[0].payload) == {"vpg": "v"}
        assert parse_ack(frames[2].payload) == 7


def test_incompressible_batches_are_sent_as_they_are() -> None:
    batch, _ = BatchCodec().batch_frame(
        [Entry(EntryKind.WRITE, 1, 1, 0, 4096, os.urandom(4096))], True
    )
    assert not FrameReader().feed(batch)[0].flags & FrameFlag.COMPRESSED


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00" * 12, "magic"),
        (frame(FrameType.ACK)[:4] + b"\x63\x00\x00\x00\x00\x00\x00\x00", "type"),
        (frame(FrameType.ACK)[:5] + b"\x80\x00\x00\x00\x00\x00\x00", "flags"),
        (frame(FrameType.ACK)[:8] + (MAX_FRAME_PAYLOAD + 1).to_bytes(4, "big"), "too large"),
    ],
)
def test_bad_frames_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(ReplicationProtocolError, match=message):
        FrameReader().feed(data)


def test_bad_batches_are_refused() -> None:
    codec = BatchCodec()
    with pytest.raises(ReplicationProtocolError, match="decompress"):
        codec.batch_entries(
            FrameReader().feed(frame(FrameType.BATCH, b"junk", FrameFlag.COMPRESSED))[0]
        )
    with pytest.raises(ReplicationProtocolError, match="kind"):
        decode_entries(b"\x09" + b"\x00" * 24)
    with pytest.raises(ReplicationProtocolError, match="ends inside"):
        decode_entries(encode_entries(ENTRIES)[:-3])
    with pytest.raises(ReplicationProtocolError):
        parse_ack(b"\x00")
    with pytest.raises(ReplicationProtocolError):
        parse_json(b"[1, 2]")


@given(st.binary(max_size=300))
def test_garbage_entries_raise_only_protocol_errors(data: bytes) -> None:
    with contextlib.suppress(ReplicationProtocolError):
        decode_entries(data)


def test_caches_fed_the_same_operations_stay_in_step() -> None:
    source, target = BlockCache(3 * 4096), BlockCache(3 * 4096)
    blocks = [bytes([n]) * 4096 for n in range(5)]
    for n in (0, 1, 2, 0, 3, 4, 0, 1):  # hits, misses and evictions, in the same order
        digest = block_hash(blocks[n])
        sent_reference = source.get(digest) is not None
        if not sent_reference:
            source.put(digest, blocks[n])
            target.put(digest, blocks[n])
        else:
            assert target.get(digest) == blocks[n]  # what a REF resolves to at the target
    assert len(source) == len(target) == 3


def test_mirror_hashes_round_trip_and_bad_sizes_are_refused() -> None:
    digests = [(0, b"\x01" * 16), (7, b"\x02" * 16)]
    hashes = FrameReader().feed(encode_hashes(3, 65536, digests))[0]
    assert hashes.type is FrameType.HASHES
    assert decode_hashes(hashes.payload) == (3, 65536, dict(digests))
    with pytest.raises(ReplicationProtocolError, match="size"):
        decode_hashes(hashes.payload[:-1])
