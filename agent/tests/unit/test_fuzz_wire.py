"""Fuzz of the two wire formats and their framing (hvds.framing): the site-to-site replication
link (hvds.replication.wire: frames, batches, zstd, entries, JSON, ACK, HASHES) and the
tap-to-VDSA link (hvds.link.wire). Streams of valid frames, mutated or cut anywhere, and raw
bytes, fed in chunks of any size.

Checked for every input: the decoders raise nothing but their protocol error
(ReplicationProtocolError, LinkProtocolError); every frame and entry they return is valid
(known type and flags, payload within the maximum, entry bodies of the right size, a
checkpoint's info an object with a time, JSON objects, 8-byte ACKs); unmutated streams come
out exactly as they went in, whatever the split; a decoder holds at most its receive buffer and
one frame's payload; a batch never decompresses to more than MAX_FRAME_PAYLOAD (a zstd bomb is
refused). CI-sized by default; the long run is ``make fuzz``."""

from __future__ import annotations

import random

import pytest
import zstandard
from fuzzing import (
    Chooser,
    DrawChooser,
    Figures,
    RandomChooser,
    examples,
    fuzz_settings,
    peak_rss_mib,
    seed,
    watchdog,
)
from hypothesis import given
from hypothesis import strategies as st
from wire_fuzz import chunks, link_stream, stream

from hvds.link import wire as link
from hvds.replication.wire import (
    MAX_ENTRY_LENGTH,
    MAX_FRAME_PAYLOAD,
    BatchCodec,
    Entry,
    EntryKind,
    Frame,
    FrameFlag,
    FrameReader,
    FrameType,
    ReplicationProtocolError,
    decode_entries,
    decode_hashes,
    frame,
    parse_ack,
    parse_json,
)

SCRATCH = 256 * 1024
U64 = (1 << 64) - 1


# -- checks -----------------------------------------------------------------------------------


def check_entry(entry: Entry) -> None:
    assert isinstance(entry.kind, EntryKind)
    size = {EntryKind.WRITE: entry.length, EntryKind.CHECKPOINT: entry.length,
            EntryKind.REF: 16}.get(entry.kind, 0)  # fmt: skip
    assert len(entry.body) == size
    if entry.kind is not EntryKind.ZERO:
        assert entry.length <= MAX_ENTRY_LENGTH
    if entry.kind is EntryKind.CHECKPOINT:
        try:
            info = entry.checkpoint_info()
        except ReplicationProtocolError:
            return
        assert isinstance(info, dict) and isinstance(info["time_ns"], int)
        assert isinstance(info.get("tag", ""), str) and isinstance(info.get("description", ""), str)


def check_frame(received: Frame, codec: BatchCodec) -> int:
    """Everything a receiver would decode from the frame; the entries' count."""
    assert isinstance(received.type, FrameType)
    assert not received.flags & ~FrameFlag.COMPRESSED
    assert len(received.payload) <= MAX_FRAME_PAYLOAD
    try:
        if received.type is FrameType.BATCH:
            entries = codec.batch_entries(received)
            for entry in entries:
                check_entry(entry)
            return len(entries)
        if received.type is FrameType.ACK:
            assert 0 <= parse_ack(received.payload) <= U64
        elif received.type is FrameType.HASHES:
            _, _, digests = decode_hashes(received.payload)
            assert all(len(d) == 16 for d in digests.values())
        else:
            assert isinstance(parse_json(received.payload), dict)
    except ReplicationProtocolError:
        pass
    return 0


def feed_replication(c: Chooser, data: bytes, valid: bool) -> int:
    reader, codec = FrameReader(), BatchCodec()
    received: list[Frame] = []
    try:
        for chunk in chunks(c, data):
            received += reader.feed(chunk)
            splitter = reader._splitter
            assert len(splitter._scratch) == SCRATCH
            assert len(splitter._payload) <= MAX_FRAME_PAYLOAD
    except ReplicationProtocolError:
        assert not valid, "a valid stream was refused"
    entries = sum(check_frame(f, codec) for f in received)
    if valid:  # exactly what went in
        out = b"".join(frame(f.type, bytes(f.payload), f.flags) for f in received)
        assert out == data
    return entries


def feed_link(c: Chooser, data: bytes, valid: bool) -> int:
    decoder = link.FrameDecoder()
    got: list[link.Frame] = []
    try:
        for chunk in chunks(c, data):
            got += decoder.feed(chunk)
    except link.LinkProtocolError:
        assert not valid, "a valid link stream was refused"
    for f in got:
        assert isinstance(f.type, link.FrameType) and not f.flags & ~3
        assert len(f.payload) <= link.MAX_PAYLOAD
    if valid:
        assert b"".join(link.encode(f) for f in got) == data
    return len(got)


# -- the tests --------------------------------------------------------------------------------


@st.composite
def replication_inputs(draw: st.DrawFn) -> tuple[bytes, bool, int]:
    c = DrawChooser(draw)
    data, valid = stream(c)
    return data, valid, draw(st.integers(0, 1 << 32))


@fuzz_settings(400)
@given(replication_inputs())
def test_replication_streams(figures: dict[str, Figures], case: tuple[bytes, bool, int]) -> None:
    data, valid, split_seed = case
    with watchdog():
        feed_replication(RandomChooser(random.Random(split_seed)), data, valid)
    figures.setdefault("replication", Figures("wire.replication.hypothesis")).add(len(data))


@fuzz_settings(300)
@given(st.lists(st.binary(max_size=200), max_size=10))
def test_raw_bytes_to_every_decoder(figures: dict[str, Figures], parts: list[bytes]) -> None:
    data = b"".join(parts)
    with watchdog():
        feed_replication(RandomChooser(random.Random(len(data))), data, valid=False)
        feed_link(RandomChooser(random.Random(len(data))), data, valid=False)
        try:
            for entry in decode_entries(data):
                check_entry(entry)
        except ReplicationProtocolError:
            pass
        check_entry(Entry(EntryKind.CHECKPOINT, 1, 0, 0, len(data), data))  # any JSON body
        codec = BatchCodec()
        for flags in (FrameFlag.NONE, FrameFlag.COMPRESSED):
            check_frame(Frame(FrameType.BATCH, flags, data), codec)
    figures.setdefault("raw", Figures("wire.raw_bytes")).add(len(data))


def test_random_streams(figures: dict[str, Figures]) -> None:
    """Both links, a seeded random source: fast, for the million-input run."""
    run_seed = seed()
    rng = random.Random(run_seed)
    c = RandomChooser(rng)
    f = figures.setdefault("random", Figures("wire.random_streams", seed=run_seed))
    entries = frames = 0
    for n in range(examples(3000)):
        data, valid = stream(c) if n % 2 else link_stream(c)
        try:
            with watchdog():
                if n % 2:
                    entries += feed_replication(c, data, valid)
                else:
                    frames += feed_link(c, data, valid)
        except AssertionError as exc:
            raise AssertionError(f"seed {run_seed}, input {n}: {exc}") from exc
        f.add(len(data))
    f.extra.update(entries_decoded=entries, link_frames_decoded=frames)


@pytest.mark.parametrize("declared", [True, False])
def test_a_zstd_bomb_is_refused_without_inflating_it(declared: bool) -> None:
    """Found by the fuzz: zstd's max_output_size binds only frames that do not declare their
    size, so 6 KiB that declared 200 MiB were inflated whole (a 64 MiB frame: terabytes)."""
    huge = (2 if declared else 1) * MAX_FRAME_PAYLOAD + 1
    sink = _Sink()
    with zstandard.ZstdCompressor().stream_writer(
        sink, size=huge if declared else -1, closefd=False
    ) as writer:
        for _ in range(huge // (1 << 20)):
            writer.write(bytes(1 << 20))
        writer.write(bytes(huge % (1 << 20)))
    bomb = sink.data
    assert len(bomb) < 64 * 1024
    size = zstandard.get_frame_parameters(bomb).content_size
    assert size == (huge if declared else zstandard.CONTENTSIZE_UNKNOWN)
    before = peak_rss_mib()
    received = FrameReader().feed(frame(FrameType.BATCH, bomb, FrameFlag.COMPRESSED))
    with pytest.raises(ReplicationProtocolError, match="decompress"):
        BatchCodec().batch_entries(received[0])
    assert peak_rss_mib() - before < 1.5 * MAX_FRAME_PAYLOAD / (1 << 20)


class _Sink:
    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> int:
        self.data += data
        return len(data)


def test_checkpoint_info_that_is_not_what_a_source_sends_is_a_protocol_error() -> None:
    for body in (b"\xff", b"[]", b"{}", b'{"time_ns": "x"}', b'{"time_ns": 1, "tag": 5}',
                 b'{"time_ns": -1}', b'{"time_ns": 1e400}'):  # fmt: skip
        with pytest.raises(ReplicationProtocolError):
            Entry(EntryKind.CHECKPOINT, 1, 0, 0, len(body), body).checkpoint_info()
    info = Entry(EntryKind.CHECKPOINT, 1, 0, 0, 0, b'{"time_ns": 5, "tag": "t"}').checkpoint_info()
    assert info == {"time_ns": 5, "tag": "t"}
