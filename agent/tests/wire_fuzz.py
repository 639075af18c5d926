"""Generators of replication-link streams for the fuzz tests (tests/unit/test_fuzz_wire.py,
tests/integration/test_fuzz_vdsa.py): frames of every type with valid content, then mutated
(bits flipped, bytes inserted or deleted, lengths and magics planted) or left valid."""

from __future__ import annotations

import json
from collections.abc import Iterator

from fuzzing import Chooser

from hvds.link import wire as link
from hvds.replication.wire import (
    FRAME_HEADER,
    MAGIC,
    MAX_FRAME_PAYLOAD,
    BatchCodec,
    Entry,
    EntryKind,
    FrameType,
    ack_frame,
    encode_hashes,
    json_frame,
)

U64 = (1 << 64) - 1


def entry(c: Chooser, seq: int) -> Entry:
    kind = c.pick(list(EntryKind))
    disk, offset = c.integer(0, 3), c.pick([0, 4096, c.integer(0, U64)])
    if kind is EntryKind.WRITE:
        body = c.blob(300)
        return Entry(kind, seq, disk, offset, len(body), body)
    if kind is EntryKind.REF:
        return Entry(kind, seq, disk, offset, 4096, c.blob(16).ljust(16, b"\x00"))
    if kind is EntryKind.CHECKPOINT:
        info = {"time_ns": c.integer(0, U64), "tag": c.pick(["", "t", "é" * 3])}
        body = json.dumps(info).encode()
        return Entry(kind, seq, 0, 0, len(body), body)
    return Entry(kind, seq, disk, offset, c.pick([0, 4096, c.integer(0, (1 << 32) - 1)]))


def one_frame(c: Chooser, codec: BatchCodec, seq: int) -> bytes:
    kind = c.pick([FrameType.BATCH, FrameType.BATCH, *FrameType])
    if kind is FrameType.BATCH:
        entries = [entry(c, seq + i) for i in range(c.integer(0, 6))]
        return codec.batch_frame(entries, c.chance(0.5))[0]
    if kind is FrameType.ACK:
        return ack_frame(c.integer(0, U64))
    if kind is FrameType.HASHES:
        digests = [(c.integer(0, 1 << 20), c.blob(16).ljust(16, b"\x01")) for _ in range(3)]
        return encode_hashes(c.integer(0, 3), 65536, digests)
    value = c.pick([{"vpg": "v", "source": "a", "last_seq": 3}, {"error": "x"}, {}])
    return json_frame(kind, value)


def mutate(c: Chooser, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(c.integer(1, 4)):
        at = c.integer(0, len(buf))
        what = c.integer(0, 4)
        if what == 0 and buf:
            buf[min(at, len(buf) - 1)] ^= 1 << c.integer(0, 7)
        elif what == 1:
            buf[at:at] = c.blob(12)
        elif what == 2:
            del buf[at : at + c.integer(1, 12)]
        elif what == 3:  # an interesting length or magic where a header field may be
            buf[at : at + 4] = c.pick([0, 0xFFFFFFFF, MAX_FRAME_PAYLOAD, MAGIC]).to_bytes(4, "big")
        else:
            buf[at:at] = FRAME_HEADER.pack(MAGIC, c.integer(0, 9), c.integer(0, 3), 0,
                                           c.pick([0, 8, 100, MAX_FRAME_PAYLOAD + 1]))  # fmt: skip
    return bytes(buf)


def stream(c: Chooser) -> tuple[bytes, bool]:
    """A replication stream and whether it was left valid."""
    codec = BatchCodec()
    data = b"".join(one_frame(c, codec, 1 + 10 * i) for i in range(c.integer(0, 8)))
    if c.chance(0.6):
        return mutate(c, data), False
    return data, True


def chunks(c: Chooser, data: bytes) -> Iterator[bytes]:
    while data:
        n = c.pick([1, 3, 32, 4096, len(data)])
        yield data[:n]
        data = data[n:]


LINK_PAYLOADS = (link.FrameType.HELLO, link.FrameType.EXPORT, link.FrameType.WRITE,
                 link.FrameType.HOLD)  # fmt: skip


def link_stream(c: Chooser) -> tuple[bytes, bool]:
    frames = []
    for seq in range(1, c.integer(1, 8)):
        kind = c.pick(list(link.FrameType))
        payload = c.blob(200) if kind in LINK_PAYLOADS else b""
        flags = link.FrameFlag(c.pick([0, 1, 2, 3]))
        export, offset, length = c.integer(0, 9), c.integer(0, U64), c.integer(0, 1 << 20)
        frames.append(link.encode(link.Frame(kind, seq, export, offset, length, flags, payload)))
    data = b"".join(frames)
    if c.chance(0.6):
        return mutate(c, data), False
    return data, True
