"""Fuzzing the sans-I/O NBD server core (hvds.nbd.server): client sessions made of valid,
mutated and garbage messages, fed with flow control as the adapter does, every output checked.

One generator (``session``) draws its choices from a ``Chooser``: ``RandomChooser`` (seeded,
fast: the long runs and the fuzz of the real tap) or the hypothesis one in
tests/unit/test_fuzz_nbd.py (shrinks a failure to a small session). ``SessionChecker`` feeds
the bytes and checks, after every turn of parsing:

- the core raises nothing (a protocol violation closes the session, it is not an exception);
- every buffer it sends is one well-formed reply: an option reply, the EXPORT_NAME reply, or an
  error reply of the transmission phase (simple, or a structured error chunk once negotiated),
  with an error value the protocol defines, never an option reply after the handshake;
- every request it hands to the adapter is valid by the protocol's rules (checked here from the
  spec, not with the core's code): a known command, allowed flags, inside the export, at most
  MAX_PAYLOAD, no change to a read-only export, BLOCK_STATUS only once negotiated, a WRITE's
  payload exactly its length; the adapter's replies to them are well-formed too;
- one export selection at most, after its GO ACK or EXPORT_NAME reply; one ConnectionClosed at
  most, last; nothing at all comes out after it, whatever is fed;
- memory: a turn calls for at most ``TURN_LIMIT`` bytes (data of reads and writes, replies) and
  the connection holds at most ``MEMORY_LIMIT`` (receive buffer, a write payload, a turn); while
  it is backlogged nothing is fed (the adapter stops reading).
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from fuzzing import Chooser, RandomChooser

from hvds.nbd import server as core
from hvds.nbd.constants import (
    IHAVEOPT,
    MAX_OPTION_LENGTH,
    MAX_PAYLOAD,
    OPTION_REPLY_MAGIC,
    REQUEST_MAGIC,
    SIMPLE_REPLY_MAGIC,
    STRUCTURED_REPLY_MAGIC,
    ChunkType,
    Command,
    Errno,
    Info,
    Option,
    OptionReply,
)
from hvds.nbd.server import (
    ConnectionClosed,
    ExportInfo,
    ExportSelected,
    Request,
    ServerConnection,
)

KiB = 1024
MiB = 1024 * KiB
U64_MAX = (1 << 64) - 1
U32_MAX = (1 << 32) - 1

# Sizes at the edges: a small disk, a read-only one, and one at the top of the u64 range (where
# offset + length overflows 64 bits).
EXPORTS = (
    ExportInfo("disk0", MiB, description="first disk"),
    ExportInfo("ro", 64 * KiB, read_only=True),
    ExportInfo("huge", U64_MAX - 4095),
)
EXPORT_SIZES = {e.size for e in EXPORTS}

SCRATCH = 256 * KiB
TURN_LIMIT = max(core.TURN_BYTES, MAX_PAYLOAD + core.REQUEST_COST) + 64 * KiB
MEMORY_LIMIT = SCRATCH + MAX_PAYLOAD + TURN_LIMIT

# From the protocol (doc/proto.md), not from hvds.nbd: the flags each command may carry.
FUA, NO_HOLE, DF, REQ_ONE, FAST_ZERO = 1, 2, 4, 8, 16
SPEC_FLAGS = {0: DF, 1: FUA, 2: 0, 3: 0, 4: FUA, 5: 0, 6: FUA | NO_HOLE | FAST_ZERO, 7: REQ_ONE}
SPEC_ERRORS = {int(e) for e in Errno}
SPEC_OPTION_REPLIES = {int(r) for r in OptionReply}
READ, WRITE, DISC, TRIM, WRITE_ZEROES, BLOCK_STATUS = 0, 1, 2, 4, 6, 7
RANGED = {0, 1, 4, 5, 6, 7}
MODIFYING = {WRITE, TRIM, WRITE_ZEROES}

_ZEROES = bytes(MAX_PAYLOAD)


class Catalog:
    def __init__(self, exports: Iterable[ExportInfo] = EXPORTS) -> None:
        self.exports = {e.name: e for e in exports}

    def lookup(self, name: str) -> ExportInfo | None:
        return self.exports.get(name)

    def names(self) -> list[str]:
        return list(self.exports)


# -- client messages -------------------------------------------------------------------------


def option(kind: int, data: bytes = b"", length: int | None = None) -> bytes:
    """An option; ``length`` lies about the data's length when given."""
    return struct.pack(">QII", IHAVEOPT, kind, len(data) if length is None else length) + data


def _raw(text: str | bytes) -> bytes:
    return text.encode() if isinstance(text, str) else text


def go_data(name: str | bytes, infos: Iterable[int] = ()) -> bytes:
    """NBD_OPT_GO/INFO data: the export's name, then the information requests."""
    infos = list(infos)
    raw = _raw(name)
    return (
        struct.pack(">I", len(raw))
        + raw
        + struct.pack(">H", len(infos))
        + b"".join(struct.pack(">H", i) for i in infos)
    )


def meta_data(name: str | bytes, queries: Iterable[str | bytes]) -> bytes:
    """NBD_OPT_SET/LIST_META_CONTEXT data: the export's name, then the queries."""
    raw, wanted = _raw(name), [_raw(q) for q in queries]
    out = struct.pack(">I", len(raw)) + raw + struct.pack(">I", len(wanted))
    return out + b"".join(struct.pack(">I", len(q)) + q for q in wanted)


def request(command: int, flags: int, handle: int, offset: int, length: int) -> bytes:
    return struct.pack(">IHHQQI", REQUEST_MAGIC, flags, command, handle, offset, length)


# -- the generator -----------------------------------------------------------------------------


NAMES = (b"disk0", b"ro", b"huge", b"", b"nope", b"\xff\xfe", b"disk0\x00", b"x" * 300)
QUERIES = (b"base:allocation", b"base:", b"qemu:dirty-bitmap:x", b"", b"\xc3\x28")


def _number(c: Chooser, edges: Sequence[int], bits: int, usual: int) -> int:
    """An edge value, a usual one (below ``usual``) or any of ``bits`` bits."""
    roll = c.integer(0, 19)
    if roll < 7:
        return c.pick(edges)
    if roll < 17:
        return c.integer(0, usual)
    return c.integer(0, (1 << bits) - 1)


def _option_message(c: Chooser) -> bytes:
    kind = c.pick([
        Option.GO, Option.GO, Option.INFO, Option.EXPORT_NAME, Option.LIST,
        Option.STRUCTURED_REPLY, Option.STRUCTURED_REPLY, Option.SET_META_CONTEXT,
        Option.SET_META_CONTEXT, Option.LIST_META_CONTEXT, Option.ABORT, Option.STARTTLS,
        Option.EXTENDED_HEADERS, 0, 4, 12, 0xFFFF, U32_MAX,
    ])  # fmt: skip
    name = c.pick(NAMES)
    if kind in (Option.GO, Option.INFO):
        infos = [c.pick([*Info, 4, 0xFFFF]) for _ in range(c.integer(0, 4))]
        data = go_data(name, infos)
        if c.chance(0.1):  # a name length that lies
            data = struct.pack(">I", c.pick([0, 1, 1000, U32_MAX])) + data[4:]
    elif kind in (Option.SET_META_CONTEXT, Option.LIST_META_CONTEXT):
        data = meta_data(name, [c.pick(QUERIES) for _ in range(c.integer(0, 3))])
        if c.chance(0.1):
            data = data[: c.integer(0, len(data))]
    elif kind == Option.EXPORT_NAME:
        data = name
    elif c.chance(0.8):
        data = b""
    else:
        data = c.blob(64)
    length = None
    if c.chance(0.08):
        length = c.pick([0, len(data) + 1, MAX_OPTION_LENGTH, MAX_OPTION_LENGTH + 1, U32_MAX])
    return option(kind, data, length)


COMMANDS = (0, 0, 1, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0xFFFF)
OFFSETS = (0, 1, 4095, 4096, 64 * KiB - 1, 64 * KiB, MiB - 1, MiB, U64_MAX - 4095, U64_MAX)
LENGTHS = (0, 1, 512, 4096, 4096, 65536, 70000, MAX_PAYLOAD, MAX_PAYLOAD + 1, U32_MAX)


def _request_message(c: Chooser) -> bytes:
    command = c.pick(COMMANDS)
    roll = c.integer(0, 9)
    flags = 0 if roll < 6 else c.integer(0, 31) if roll < 9 else c.integer(0, 0xFFFF)
    handle = c.integer(0, U64_MAX)
    offset = _number(c, OFFSETS, 64, MiB - 1)
    length = _number(c, LENGTHS, 32, 65536)
    header = request(command, flags, handle, offset, length)
    if command != WRITE:
        return header
    # A write's payload: whole when small, cut short otherwise (the session ends inside it).
    if length <= 80 * KiB and c.chance(0.9):
        return header + (bytes(length) if length > 256 else c.blob(length).ljust(length, b"."))
    return header + c.blob(256)


def _mutate(c: Chooser, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(c.integer(1, 4)):
        what = c.integer(0, 3)
        at = c.integer(0, len(buf)) if buf else 0
        if what == 0 and buf:  # flip a byte
            at = min(at, len(buf) - 1)
            buf[at] ^= c.integer(1, 255)
        elif what == 1:  # insert bytes
            buf[at:at] = c.blob(16)
        elif what == 2:  # delete bytes
            del buf[at : at + c.integer(1, 16)]
        else:  # overwrite with an interesting number
            value = c.pick([0, 0xFF, 0x7F, 0x80, 0xFFFFFFFF, REQUEST_MAGIC, IHAVEOPT])
            buf[at : at + 8] = value.to_bytes(8, "big")
    return bytes(buf)


@dataclass
class Session:
    """Bytes as a client would send them, split into reads; then EOF or not."""

    chunks: list[bytes]
    eof: bool
    after_close: bytes = b""  # fed once the session is over: must change nothing

    @property
    def size(self) -> int:
        return sum(map(len, self.chunks))


def session(c: Chooser, max_messages: int = 24) -> Session:
    parts: list[bytes] = []
    if c.chance(0.95):
        parts.append(struct.pack(">I", c.pick([3, 3, 3, 3, 3, 3, 1, 2, 0, U32_MAX])))
    if c.chance(0.5):
        parts.append(option(Option.STRUCTURED_REPLY))
        if c.chance(0.7):
            parts.append(option(Option.SET_META_CONTEXT, meta_data(b"disk0", [b"base:allocation"])))
    for _ in range(c.integer(0, 4) if c.chance(0.5) else 0):
        parts.append(_option_message(c))
    if c.chance(0.9):  # choose an export, usually one that exists
        name = c.pick([b"disk0", b"disk0", b"disk0", b"huge", b"ro", b"nope"])
        parts.append(
            option(Option.EXPORT_NAME, name) if c.chance(0.2) else option(Option.GO, go_data(name))
        )
    for _ in range(c.integer(0, max_messages)):
        roll = c.integer(0, 59)  # most messages are requests; a few end the session
        if roll < 56:
            parts.append(_request_message(c))
        elif roll < 57:
            parts.append(_option_message(c))  # an option in the transmission phase
        elif roll < 58:
            parts.append(c.blob(40))
        elif roll < 59:
            parts.append(request(DISC, 0, c.integer(0, 99), 0, 0))
        else:
            parts.append(struct.pack(">I", c.integer(0, U32_MAX)) + bytes(24))  # bad magic
    data = b"".join(parts)
    if c.chance(0.2):
        data = _mutate(c, data)
    if c.chance(0.05):
        data = data[: c.integer(0, len(data))]
    chunks: list[bytes] = []
    while data:
        n = c.pick([1, 7, 28, 4096, 65536, len(data)]) if c.chance(0.5) else len(data)
        chunks.append(data[:n])
        data = data[n:]
    return Session(chunks, eof=c.chance(0.5), after_close=c.blob(64))


# -- the checker --------------------------------------------------------------------------------


class FuzzFailure(AssertionError):
    pass


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise FuzzFailure(message)


@dataclass
class SessionChecker:
    """Feeds one session to a fresh connection, acting as its adapter, checking everything."""

    catalog: Catalog = field(default_factory=Catalog)
    conn: ServerConnection = field(init=False)
    selected: ExportSelected | None = None
    entries: int = 0  # GO ACKs and EXPORT_NAME replies: ways into the transmission phase
    closed: bool = False
    structured_seen: bool = False
    requests: int = 0
    errors: int = 0
    peak_memory: int = 0

    def __post_init__(self) -> None:
        self.conn = ServerConnection(self.catalog)

    def run(self, s: Session) -> None:
        for chunk in s.chunks:
            self.feed(chunk)
        if s.eof:
            self.conn.receive_eof()
            self.after_turn()
            _check(self.conn.closed, "EOF did not close the session")
        if self.conn.closed and s.after_close:
            self.feed(s.after_close)

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            _check(not self.conn.backlogged, "fed while backlogged")
            buf = self.conn.get_buffer(len(view))
            _check(len(buf) > 0, "get_buffer handed out no room")
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            view = view[n:]
            self.conn.buffer_updated(n)
            self.after_turn()
            while self.conn.backlogged:
                _check(not self.conn.closed, "backlogged after close")
                self.conn.resume()
                self.after_turn()

    def after_turn(self) -> None:
        conn = self.conn
        memory = conn.buffered_bytes
        self.peak_memory = max(self.peak_memory, memory)
        _check(memory <= MEMORY_LIMIT, f"the connection holds {memory} bytes")
        was_closed = self.closed
        out = conn.data_to_send()
        events = conn.events()
        if was_closed:
            _check(not out and not events, f"output after the session closed: {events} {out}")
            return
        cost = 0
        for item in out:
            cost += len(item)
            self._check_sent(item)
        for event in events:
            _check(not self.closed, f"{event} after ConnectionClosed")
            if isinstance(event, ExportSelected):
                _check(self.selected is None, "a second export selection")
                _check(self.entries == 1, "export selected without GO ACK or EXPORT_NAME reply")
                _check(self.catalog.lookup(event.export.name) == event.export, "unknown export")
                _check(event.structured_replies == self.structured_seen, "structured replies")
                self.selected = event
            elif isinstance(event, Request):
                cost += self._check_request(event)
            else:
                _check(isinstance(event, ConnectionClosed), f"unknown event {event}")
                self.closed = True
        _check(cost <= TURN_LIMIT, f"a turn called for {cost} bytes")
        _check(conn.closed == self.closed, "closed without ConnectionClosed (or the reverse)")
        after = conn.buffered_bytes
        _check(after <= SCRATCH + MAX_PAYLOAD, f"{after} bytes held between turns")

    def _check_sent(self, item: bytes) -> None:
        if len(item) >= 20 and struct.unpack_from(">Q", item)[0] == OPTION_REPLY_MAGIC:
            _magic, opt, kind, length = struct.unpack_from(">QIII", item)
            _check(self.entries == 0, "an option reply after the handshake")
            _check(length == len(item) - 20, "option reply length does not match")
            _check(kind in SPEC_OPTION_REPLIES, f"unknown option reply {kind:#x}")
            if opt == Option.GO and kind == OptionReply.ACK:
                self.entries += 1
            if opt == Option.STRUCTURED_REPLY and kind == OptionReply.ACK:
                self.structured_seen = True
            return
        if self.entries == 0:  # the reply to EXPORT_NAME: size, flags, maybe 124 zeroes
            _check(len(item) in (10, 134), f"bad EXPORT_NAME reply of {len(item)} bytes")
            _check(struct.unpack_from(">Q", item)[0] in EXPORT_SIZES, "EXPORT_NAME reply size")
            _check(not any(item[10:]), "EXPORT_NAME reply padding is not zero")
            self.entries += 1
            return
        magic = struct.unpack_from(">I", item)[0] if len(item) >= 4 else None
        if magic == SIMPLE_REPLY_MAGIC:
            _check(len(item) == 16, "simple error reply of a wrong length")
            error = struct.unpack_from(">I", item, 4)[0]
            _check(error in SPEC_ERRORS, f"error {error} is not one the protocol defines")
        else:
            _check(magic == STRUCTURED_REPLY_MAGIC, f"unknown reply {item[:8].hex()}")
            _check(self.structured_seen, "structured reply without structured replies")
            _, flags, kind, _, length = struct.unpack_from(">IHHQI", item)
            _check(flags == 1 and kind == ChunkType.ERROR, "core chunk other than a final error")
            _check(length == len(item) - 20 and length >= 6, "error chunk length")
            error, text = struct.unpack_from(">IH", item, 20)
            _check(error in SPEC_ERRORS and text == length - 6, "error chunk body")
        self.errors += 1

    def _check_request(self, r: Request) -> int:
        chosen = self.selected
        _check(chosen is not None, "a request before an export was selected")
        assert chosen is not None
        export = chosen.export
        kind = int(r.command)
        _check(kind in SPEC_FLAGS, f"unknown command {kind} reached the adapter")
        _check(not r.flags & ~SPEC_FLAGS[kind], f"flags {r.flags:#x} on command {kind}")
        _check(not r.flags & DF or chosen.structured_replies, "DF without structured replies")
        _check(not (export.read_only and kind in MODIFYING), "a change to a read-only export")
        if kind in (READ, WRITE):
            _check(r.length <= MAX_PAYLOAD, f"{r.length} bytes in one request")
        if kind in RANGED:
            _check(r.offset + r.length <= export.size, "a request beyond the export")
        if kind == BLOCK_STATUS:
            _check(chosen.base_allocation and r.length > 0, "BLOCK_STATUS not negotiated")
        if kind == WRITE:
            _check(r.payload is not None and len(r.payload) == r.length, "write payload length")
        else:
            _check(r.payload is None, "payload on a request other than WRITE")
        self.requests += 1
        self._check_adapter_reply(r)
        if kind in (READ, WRITE):
            return r.length
        return 0

    def _check_adapter_reply(self, r: Request) -> None:
        """The replies the adapter builds with the core's helpers are well-formed too."""
        conn = self.conn
        if r.command is Command.READ:
            header, data = conn.reply_read(r.handle, r.offset, memoryview(_ZEROES)[: r.length])
            _check(len(data) == r.length, "read reply data")
            if self.selected is not None and self.selected.structured_replies:
                magic, flags, kind, handle, length, offset = struct.unpack(">IHHQIQ", header)
                _check((magic, flags, kind) == (STRUCTURED_REPLY_MAGIC, 1, ChunkType.OFFSET_DATA)
                       and (handle, offset) == (r.handle, r.offset) and length == 8 + r.length,
                       "read chunk")  # fmt: skip
            else:
                _check(header == struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, 0, r.handle), "read")
        elif r.command is Command.BLOCK_STATUS:
            reply = conn.reply_block_status(r.handle, [(r.length, 0)])
            _check(len(reply) == 20 + 12 and reply[4:6] == b"\x00\x01", "block status reply")
        elif r.command is not Command.DISC:
            _check(len(conn.reply(r.handle)) == 16, "simple reply")
            _check(len(conn.reply_error(r, Errno.EIO, "x" * 5000)) <= 20 + 6 + 4096, "error")


def random_sessions(seed: int, count: int) -> Iterable[Session]:
    rng = random.Random(seed)
    chooser = RandomChooser(rng)
    for _ in range(count):
        yield session(chooser)
