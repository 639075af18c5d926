"""Conformance of the sans-I/O NBD server core: bytes in, bytes and events out."""

from __future__ import annotations

import struct
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nbd_fuzz import go_data, meta_data, option

from hvds.nbd.constants import (
    IHAVEOPT,
    MAX_OPTION_LENGTH,
    MAX_PAYLOAD,
    NBDMAGIC,
    OPTION_REPLY_MAGIC,
    REQUEST_MAGIC,
    SIMPLE_REPLY_MAGIC,
    STRUCTURED_REPLY_MAGIC,
    ChunkType,
    Command,
    CommandFlag,
    Errno,
    HandshakeFlag,
    Info,
    Option,
    OptionReply,
    TransmissionFlag,
)
from hvds.nbd.server import (
    ConnectionClosed,
    ExportInfo,
    ExportSelected,
    Request,
    ServerConnection,
)

SIZE = 1 << 20


class Catalog:
    def __init__(self, exports: Iterable[ExportInfo]) -> None:
        self.exports = {e.name: e for e in exports}

    def lookup(self, name: str) -> ExportInfo | None:
        return self.exports.get(name)

    def names(self) -> list[str]:
        return list(self.exports)


def catalog() -> Catalog:
    return Catalog(
        [
            ExportInfo("disk0", SIZE, description="first disk"),
            ExportInfo("ro", SIZE, read_only=True),
        ]
    )


def request(command: int, handle: int, offset: int = 0, length: int = 0, flags: int = 0) -> bytes:
    return struct.pack(">IHHQQI", REQUEST_MAGIC, flags, command, handle, offset, length)


def option_replies(data: bytes) -> list[tuple[int, int, bytes]]:
    """(option, reply type, payload) of each option reply in ``data``."""
    out = []
    pos = 0
    while pos < len(data):
        magic, opt, kind, length = struct.unpack_from(">QIII", data, pos)
        assert magic == OPTION_REPLY_MAGIC
        out.append((opt, kind, data[pos + 20 : pos + 20 + length]))
        pos += 20 + length
    return out


def sent(conn: ServerConnection) -> bytes:
    return b"".join(conn.data_to_send())


def handshaken(name: str = "disk0", structured: bool = False, allocation: bool = False):
    conn = ServerConnection(catalog())
    conn.receive_data(struct.pack(">I", HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES))
    if structured:
        conn.receive_data(option(Option.STRUCTURED_REPLY))
    if allocation:
        conn.receive_data(option(Option.SET_META_CONTEXT, meta_data(name, ["base:allocation"])))
    conn.receive_data(option(Option.GO, go_data(name)))
    events = conn.events()
    assert isinstance(events[-1], ExportSelected)
    sent(conn)
    return conn


def test_greeting_is_fixed_newstyle_with_no_zeroes() -> None:
    greeting = ServerConnection(catalog()).greeting()
    magic, opt, flags = struct.unpack(">QQH", greeting)
    assert (magic, opt) == (NBDMAGIC, IHAVEOPT)
    assert flags == HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES


def test_unknown_client_flags_close_the_session() -> None:
    conn = ServerConnection(catalog())
    conn.receive_data(struct.pack(">I", 0x80))
    assert conn.closed
    assert isinstance(conn.events()[0], ConnectionClosed)


def test_bad_option_magic_closes() -> None:
    conn = ServerConnection(catalog())
    conn.receive_data(struct.pack(">I", 1) + struct.pack(">QII", 0xDEADBEEF, Option.GO, 0))
    assert conn.closed


def test_unknown_and_unsupported_options_get_err_unsup() -> None:
    conn = ServerConnection(catalog())
    conn.receive_data(struct.pack(">I", 1) + option(99) + option(Option.STARTTLS))
    replies = option_replies(sent(conn))
    assert [(o, k) for o, k, _ in replies] == [
        (99, OptionReply.ERR_UNSUP),
        (Option.STARTTLS, OptionReply.ERR_UNSUP),
    ]
    assert not conn.closed


def test_list_names_every_export_then_acks() -> None:
    conn = ServerConnection(catalog())
    conn.receive_data(struct.pack(">I", 1) + option(Option.LIST))
    replies = option_replies(sent(conn))
    names = [p[4:].decode() for _, k, p in replies if k == OptionReply.SERVER]
    assert names == ["disk0", "ro"]
    assert replies[-1][1] == OptionReply.ACK


def test_list_with_data_is_invalid() -> None:
    conn = ServerConnection(catalog())
    conn.receive_data(struct.pack(">I", 1) + option(Option.LIST, b"x"))
    assert option_replies(sent(conn))[0][1] == OptionReply.ERR_INVALID


def test_info_reports_size_flags_name_description_block_size() -> None:
    conn = ServerConnection(catalog())
    infos = [Info.NAME, Info.DESCRIPTION, Info.BLOCK_SIZE]
    conn.receive_data(struct.pack(">I", 1) + option(Option.INFO, go_data("disk0", infos)))
    replies = option_replies(sent(conn))
    by_type = {
        struct.unpack_from(">H", p)[0]: p[2:] for _, k, p in replies if k == OptionReply.INFO
    }
    size, flags = struct.unpack(">QH", by_type[Info.EXPORT])
    assert size == SIZE
    assert flags & TransmissionFlag.SEND_FLUSH and flags & TransmissionFlag.SEND_FUA
    assert not flags & TransmissionFlag.READ_ONLY
    assert by_type[Info.NAME] == b"disk0"
    assert by_type[Info.DESCRIPTION] == b"first disk"
    assert struct.unpack(">III", by_type[Info.BLOCK_SIZE])[2] == MAX_PAYLOAD
    assert replies[-1][1] == OptionReply.ACK
    assert not conn.in_transmission  # INFO does not end the handshake


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (go_data("nope"), OptionReply.ERR_UNKNOWN),
        (b"\x00\x00", OptionReply.ERR_INVALID),
        (go_data("disk0") + b"\x00", OptionReply.ERR_INVALID),
        (struct.pack(">I", 1000) + b"disk0\x00\x00", OptionReply.ERR_INVALID),
    ],
)
def test_go_refusals(data: bytes, expected: int) -> None:
    conn = ServerConnection(catalog())
    conn.receive_data(struct.pack(">I", 1) + option(Option.GO, data))
    assert option_replies(sent(conn))[-1][1] == expected
    assert not conn.in_transmission and not conn.closed


def test_go_on_read_only_export_advertises_read_only() -> None:
    conn = ServerConnection(catalog())
    conn.receive_data(struct.pack(">I", 1) + option(Option.GO, go_data("ro")))
    replies = option_replies(sent(conn))
    _, flags = struct.unpack(">QH", replies[0][2][2:])
    assert flags & TransmissionFlag.READ_ONLY
    assert not flags & TransmissionFlag.SEND_TRIM
    assert conn.in_transmission


def test_option_too_long_is_refused_and_skipped() -> None:
    conn = ServerConnection(catalog())
    conn.receive_data(struct.pack(">I", 1))
    huge = MAX_OPTION_LENGTH + 1
    conn.receive_data(struct.pack(">QII", IHAVEOPT, Option.GO, huge))
    conn.receive_data(b"\x00" * huge)
    conn.receive_data(option(Option.LIST))
    replies = option_replies(sent(conn))
    assert replies[0][1] == OptionReply.ERR_TOO_BIG
    assert replies[-1][1] == OptionReply.ACK


def test_export_name_unknown_closes_known_enters_transmission() -> None:
    conn = ServerConnection(catalog())
    conn.receive_data(struct.pack(">I", 0) + option(Option.EXPORT_NAME, b"nope"))
    assert conn.closed
    conn = ServerConnection(catalog())
    conn.receive_data(struct.pack(">I", 0) + option(Option.EXPORT_NAME, b"disk0"))
    reply = sent(conn)
    assert len(reply) == 8 + 2 + 124  # zeroes padding, as the client did not refuse it
    assert struct.unpack_from(">Q", reply)[0] == SIZE
    assert conn.in_transmission


def test_abort_acks_and_closes() -> None:
    conn = ServerConnection(catalog())
    conn.receive_data(struct.pack(">I", 1) + option(Option.ABORT))
    assert option_replies(sent(conn))[0][1] == OptionReply.ACK
    assert conn.closed


def test_meta_context_needs_structured_replies() -> None:
    conn = ServerConnection(catalog())
    conn.receive_data(
        struct.pack(">I", 1)
        + option(Option.SET_META_CONTEXT, meta_data("disk0", ["base:allocation"]))
    )
    assert option_replies(sent(conn))[0][1] == OptionReply.ERR_INVALID


def test_set_and_list_meta_context() -> None:
    conn = ServerConnection(catalog())
    conn.receive_data(struct.pack(">I", 1) + option(Option.STRUCTURED_REPLY))
    conn.receive_data(option(Option.LIST_META_CONTEXT, meta_data("disk0", [])))
    conn.receive_data(
        option(Option.SET_META_CONTEXT, meta_data("disk0", ["base:allocation", "x:y"]))
    )
    replies = option_replies(sent(conn))
    contexts = [p[4:].decode() for _, k, p in replies if k == OptionReply.META_CONTEXT]
    assert contexts == ["base:allocation", "base:allocation"]
    conn.receive_data(option(Option.GO, go_data("disk0")))
    selected = conn.events()[-1]
    assert isinstance(selected, ExportSelected) and selected.base_allocation


def test_pipelined_requests_arrive_in_order_with_payloads() -> None:
    conn = handshaken()
    data = request(Command.WRITE, 1, 0, 4) + b"abcd"
    data += request(Command.READ, 2, 0, 4) + request(Command.FLUSH, 3)
    data += request(Command.WRITE, 4, 4096, 3, CommandFlag.FUA) + b"xyz"
    conn.receive_data(data)
    events = conn.events()
    assert [(e.command, e.handle) for e in events if isinstance(e, Request)] == [
        (Command.WRITE, 1),
        (Command.READ, 2),
        (Command.FLUSH, 3),
        (Command.WRITE, 4),
    ]
    assert bytes(events[0].payload) == b"abcd"  # type: ignore[union-attr, arg-type]
    assert bytes(events[3].payload) == b"xyz"  # type: ignore[union-attr, arg-type]
    assert events[3].flags & CommandFlag.FUA  # type: ignore[union-attr]


def test_large_write_split_in_small_pieces_is_reassembled() -> None:
    conn = handshaken()
    payload = bytes(range(256)) * 4096  # 1 MiB
    stream = request(Command.WRITE, 7, 0, len(payload)) + payload + request(Command.FLUSH, 8)
    for i in range(0, len(stream), 1000):
        conn.receive_data(stream[i : i + 1000])
    events = [e for e in conn.events() if isinstance(e, Request)]
    assert [e.handle for e in events] == [7, 8]
    assert bytes(events[0].payload or b"") == payload


def simple_errors(data: bytes) -> list[tuple[int, int]]:
    out = []
    for pos in range(0, len(data), 16):
        magic, error, handle = struct.unpack_from(">IIQ", data, pos)
        assert magic == SIMPLE_REPLY_MAGIC
        out.append((handle, error))
    return out


@pytest.mark.parametrize(
    ("raw", "handle", "errno"),
    [
        (request(42, 1), 1, Errno.EINVAL),
        (request(Command.READ, 2, SIZE - 10, 11), 2, Errno.EINVAL),
        (request(Command.READ, 3, 0, MAX_PAYLOAD + 1), 3, Errno.EINVAL),
        (request(Command.READ, 4, 0, 10, CommandFlag.FUA), 4, Errno.EINVAL),
        (request(Command.READ, 5, 0, 10, CommandFlag.DF), 5, Errno.EINVAL),
        (request(Command.BLOCK_STATUS, 6, 0, 10), 6, Errno.EINVAL),
        (request(Command.TRIM, 7, SIZE, 1), 7, Errno.EINVAL),
        (request(Command.FLUSH, 8, 0, 0, 0x80), 8, Errno.EINVAL),
    ],
)
def test_malformed_requests_get_errors_and_the_session_goes_on(
    raw: bytes, handle: int, errno: int
) -> None:
    conn = handshaken()
    conn.receive_data(raw + request(Command.FLUSH, 99))
    assert simple_errors(sent(conn)) == [(handle, errno)]
    requests = [e for e in conn.events() if isinstance(e, Request)]
    assert [r.handle for r in requests] == [99]


def test_refused_write_payload_is_skipped_not_parsed_as_requests() -> None:
    conn = handshaken()
    # The payload holds something that looks like a request: it must not be taken as one.
    fake = request(Command.DISC, 66).ljust(64, b"\x00")
    conn.receive_data(request(Command.WRITE, 1, SIZE - 8, 64) + fake + request(Command.FLUSH, 2))
    assert simple_errors(sent(conn)) == [(1, Errno.EINVAL)]
    assert [e.handle for e in conn.events() if isinstance(e, Request)] == [2]
    assert not conn.closed


def test_write_to_read_only_export_is_eperm() -> None:
    conn = handshaken("ro")
    conn.receive_data(request(Command.WRITE, 1, 0, 4) + b"abcd" + request(Command.TRIM, 2, 0, 4))
    assert simple_errors(sent(conn)) == [(1, Errno.EPERM), (2, Errno.EPERM)]


def test_oversized_write_is_skipped_without_buffering_it() -> None:
    conn = handshaken()
    length = MAX_PAYLOAD + 1
    conn.receive_data(request(Command.WRITE, 1, 0, length))
    chunk = b"\x00" * (1 << 20)
    for _ in range(length // len(chunk)):
        conn.receive_data(chunk)
    conn.receive_data(b"\x00" * (length % len(chunk)) + request(Command.FLUSH, 2))
    assert simple_errors(sent(conn)) == [(1, Errno.EINVAL)]
    assert [e.handle for e in conn.events() if isinstance(e, Request)] == [2]


def test_bad_request_magic_closes() -> None:
    conn = handshaken()
    conn.receive_data(b"\xff" * 28)
    assert conn.closed
    assert isinstance(conn.events()[-1], ConnectionClosed)


def test_disc_closes_after_the_requests_before_it() -> None:
    conn = handshaken()
    conn.receive_data(
        request(Command.FLUSH, 1) + request(Command.DISC, 2) + request(Command.FLUSH, 3)
    )
    events = conn.events()
    assert [e.handle for e in events if isinstance(e, Request)] == [1, 2]
    assert isinstance(events[-1], ConnectionClosed)


def test_structured_read_error_is_an_error_chunk() -> None:
    conn = handshaken(structured=True)
    conn.receive_data(request(Command.READ, 5, SIZE, 1))
    data = sent(conn)
    magic, flags, kind, handle, _length = struct.unpack_from(">IHHQI", data)
    assert (magic, kind, handle) == (STRUCTURED_REPLY_MAGIC, ChunkType.ERROR, 5)
    assert flags & 1  # DONE
    assert struct.unpack_from(">I", data, 20)[0] == Errno.EINVAL


def test_structured_read_reply_is_offset_data_chunk() -> None:
    conn = handshaken(structured=True)
    header, data = conn.reply_read(9, 4096, b"hello")
    magic, _flags, kind, handle, length = struct.unpack_from(">IHHQI", header)
    assert (magic, kind, handle, length) == (STRUCTURED_REPLY_MAGIC, ChunkType.OFFSET_DATA, 9, 13)
    assert struct.unpack_from(">Q", header, 20)[0] == 4096
    assert data == b"hello"


def test_block_status_allowed_once_negotiated() -> None:
    conn = handshaken(structured=True, allocation=True)
    conn.receive_data(request(Command.BLOCK_STATUS, 1, 0, 4096))
    assert [e.handle for e in conn.events() if isinstance(e, Request)] == [1]
    reply = conn.reply_block_status(1, [(4096, 3)])
    assert struct.unpack_from(">IHHQI", reply)[2] == ChunkType.BLOCK_STATUS
    assert struct.unpack_from(">III", reply, 20) == (1, 4096, 3)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=20))
def test_garbage_after_handshake_never_raises(chunks: list[bytes]) -> None:
    conn = handshaken(structured=True)
    for chunk in chunks:
        conn.receive_data(chunk)
        conn.events()
        conn.data_to_send()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=100), max_size=20))
def test_garbage_during_handshake_never_raises(chunks: list[bytes]) -> None:
    conn = ServerConnection(catalog())
    conn.receive_data(struct.pack(">I", 1))
    for chunk in chunks:
        conn.receive_data(chunk)
        conn.events()
        conn.data_to_send()
