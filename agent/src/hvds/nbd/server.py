"""The server side of the NBD protocol as a state machine, with no I/O of its own (sans-I/O).

An adapter feeds it the bytes a client sent and reads back two things: the bytes to send and the
events to act on (an export was chosen, a request arrived). The handshake is handled here in
full; in the transmission phase every request is validated here (range, flags, read-only,
negotiated features) so that the adapter only ever sees requests it can carry out, and a
malformed one gets the protocol's error reply without reaching it.

Receiving follows asyncio's BufferedProtocol: ``get_buffer()`` hands out the memory the next
bytes should land in and ``buffer_updated(n)`` says how many did. Large write payloads are read
straight into their own buffer, so a 1 MiB write is copied once, from the kernel.

Memory is bounded whatever a client sends. The connection holds a 256 KiB receive buffer, at
most one write payload (``MAX_PAYLOAD``) and the events and replies of one *turn*: each
``buffer_updated`` (or ``resume``) parses requests until they call for ``TURN_BYTES`` (the data
of reads and writes, plus ``REQUEST_COST`` a request) and leaves the rest of the input
unparsed: ``backlogged`` is then True, and the adapter should stop reading from the client,
carry out the events, and call ``resume`` once the client has taken the replies (its transport
is not paused for writing). A turn calls for at most ``max(TURN_BYTES, MAX_PAYLOAD +
REQUEST_COST)`` bytes, plus the replies of one handshake option: without this, 256 KiB of
pipelined 32 MiB READs would call for 300 GB of replies in one go. Bytes that arrive after the
session is closed are dropped.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import Protocol

from hvds.nbd.constants import (
    ALLOWED_COMMAND_FLAGS,
    BASE_ALLOCATION,
    BASE_ALLOCATION_ID,
    IHAVEOPT,
    MAX_OPTION_LENGTH,
    MAX_PAYLOAD,
    MIN_BLOCK_SIZE,
    NBDMAGIC,
    OPTION_REPLY_MAGIC,
    PREFERRED_BLOCK_SIZE,
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
    ReplyFlag,
    TransmissionFlag,
)

_OPTION_HEADER = struct.Struct(">QII")  # IHAVEOPT, option, length
_OPTION_REPLY = struct.Struct(">QIII")  # magic, option, reply type, length
_REQUEST = struct.Struct(">IHHQQI")  # magic, flags, type, handle, offset, length
_SIMPLE_REPLY = struct.Struct(">IIQ")  # magic, error, handle
_CHUNK = struct.Struct(">IHHQI")  # magic, flags, type, handle, length
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")

_SCRATCH_SIZE = 256 * 1024
# What one turn of parsing may call for (see the module's docstring).
TURN_BYTES = 8 * 1024 * 1024
# What a request (or option) counts for on top of its data: its event, its reply.
REQUEST_COST = 1024
# A payload with at least this much still to come is read straight into its own buffer.
_DIRECT_READ_THRESHOLD = 64 * 1024

_KNOWN_CLIENT_FLAGS = HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES

# Commands whose range must lie inside the export.
_RANGED = frozenset(
    {
        Command.READ,
        Command.WRITE,
        Command.TRIM,
        Command.CACHE,
        Command.WRITE_ZEROES,
        Command.BLOCK_STATUS,
    }
)
_MODIFYING = frozenset({Command.WRITE, Command.TRIM, Command.WRITE_ZEROES})
# Plain ints on the request path: constructing enum members costs microseconds per request.
_COMMANDS: dict[int, Command] = {command.value: command for command in Command}
_FORBIDDEN_FLAGS: dict[Command, int] = {
    command: ~int(allowed) for command, allowed in ALLOWED_COMMAND_FLAGS.items()
}
_DF = int(CommandFlag.DF)
_PLAIN_DATA = frozenset({int(Command.READ), int(Command.WRITE)})
_OFFSET_DATA_CHUNK = struct.Struct(">IHHQIQ")  # chunk header, then the offset of the data
_DONE = int(ReplyFlag.DONE)
_OFFSET_DATA = int(ChunkType.OFFSET_DATA)

# Commands whose error reply must be a structured chunk once structured replies are on.
_STRUCTURED_ERRORS = frozenset({Command.READ, Command.BLOCK_STATUS})


@dataclass(frozen=True, slots=True)
class ExportInfo:
    """What a client learns about an export during the handshake."""

    name: str
    size: int
    read_only: bool = False
    description: str = ""


class ExportCatalog(Protocol):
    """The exports a connection may choose from, asked at the moment the client chooses."""

    def lookup(self, name: str) -> ExportInfo | None: ...

    def names(self) -> Iterable[str]: ...


@dataclass(slots=True)
class Request:
    """A validated transmission-phase request. ``payload`` is set for WRITE only; ``flags`` is
    a plain int of CommandFlag bits."""

    command: Command
    flags: int
    handle: int
    offset: int
    length: int
    payload: bytes | bytearray | None = None


@dataclass(frozen=True, slots=True)
class ExportSelected:
    export: ExportInfo
    structured_replies: bool
    base_allocation: bool


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The session is over; the adapter should close the transport after sending what is left."""

    reason: str


Event = Request | ExportSelected | ConnectionClosed


class ProtocolViolationError(Exception):
    """The client broke the protocol in a way that leaves no choice but to hang up."""


class _Phase(Enum):
    CLIENT_FLAGS = auto()
    OPTIONS = auto()
    TRANSMISSION = auto()
    CLOSED = auto()


@dataclass(slots=True)
class _PendingPayload:
    request: Request
    buffer: bytearray
    filled: int = 0


@dataclass(slots=True)
class _Skip:
    """Bytes to read and throw away, then a reply to send (a refused write's payload)."""

    remaining: int
    reply: bytes


@dataclass(slots=True)
class _MetaSelection:
    export_name: str = ""
    base_allocation: bool = False


@dataclass
class ServerConnection:
    catalog: ExportCatalog
    _phase: _Phase = _Phase.CLIENT_FLAGS
    _scratch: bytearray = field(default_factory=lambda: bytearray(_SCRATCH_SIZE))
    _start: int = 0
    _end: int = 0
    _direct: bool = False
    _payload: _PendingPayload | None = None
    _skip: _Skip | None = None
    _no_zeroes: bool = False
    _structured: bool = False
    _meta: _MetaSelection = field(default_factory=_MetaSelection)
    _export: ExportInfo | None = None
    _events: list[Event] = field(default_factory=list)
    _outgoing: list[bytes] = field(default_factory=list)
    _turn: int = 0  # what this turn has called for so far
    _held: bool = False  # the turn's budget is spent and input is left unparsed

    # -- state -----------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._phase is _Phase.CLOSED

    @property
    def in_transmission(self) -> bool:
        return self._phase is _Phase.TRANSMISSION

    @property
    def export(self) -> ExportInfo | None:
        return self._export

    @property
    def backlogged(self) -> bool:
        """Input is left unparsed because this turn's budget is spent: stop reading, carry out
        the events, then ``resume()``."""
        return self._held

    @property
    def buffered_bytes(self) -> int:
        """The memory this connection holds: receive buffer, write payload, replies not taken."""
        held = len(self._scratch) + sum(len(out) for out in self._outgoing)
        if self._payload is not None:
            held += len(self._payload.buffer)
        for event in self._events:
            if isinstance(event, Request) and event.payload is not None:
                held += len(event.payload)
        return held

    def greeting(self) -> bytes:
        flags = HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES
        return _U64.pack(NBDMAGIC) + _U64.pack(IHAVEOPT) + _U16.pack(flags)

    def events(self) -> list[Event]:
        """Take the events produced so far."""
        events, self._events = self._events, []
        return events

    def data_to_send(self) -> list[bytes]:
        """Take the bytes the protocol itself wants sent (handshake replies, error replies)."""
        out, self._outgoing = self._outgoing, []
        return out

    # -- receiving -------------------------------------------------------------------------

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        pending = self._payload
        if pending is not None and len(pending.buffer) - pending.filled >= _DIRECT_READ_THRESHOLD:
            self._direct = True
            return memoryview(pending.buffer)[pending.filled :]
        self._direct = False
        if len(self._scratch) - self._end < _DIRECT_READ_THRESHOLD:
            self._compact()
        return memoryview(self._scratch)[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        if self._direct:
            assert self._payload is not None
            self._payload.filled += nbytes
        else:
            self._end += nbytes
        self._parse()

    def resume(self) -> None:
        """Parse the next turn of input left by a spent budget."""
        self._parse()

    def receive_data(self, data: bytes) -> None:
        """Feed bytes that arrived, every turn of them: a convenience over get_buffer and
        buffer_updated with no flow control (the caller takes all the events at the end)."""
        view = memoryview(data)
        while view:
            buf = self.get_buffer(len(view))
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            view = view[n:]
            self.buffer_updated(n)
            while self._held:
                self.resume()

    def receive_eof(self) -> None:
        if self._phase is not _Phase.CLOSED:
            self._close("client closed the connection")

    def _compact(self) -> None:
        remaining = self._end - self._start
        if remaining > len(self._scratch) - _DIRECT_READ_THRESHOLD:
            # A client that sends a header larger than the scratch buffer is refused in
            # _parse_option before it gets here; this only guards the invariant.
            raise ProtocolViolationError("receive buffer overflow")
        self._scratch[:remaining] = self._scratch[self._start : self._end]
        self._start, self._end = 0, remaining

    def _available(self) -> int:
        return self._end - self._start

    def _parse(self) -> None:
        # A write payload still to come is handed out in this turn: it counts here.
        self._turn = len(self._payload.buffer) if self._payload is not None else 0
        self._held = False
        try:
            while self._phase is not _Phase.CLOSED and self._step():
                pass
        except ProtocolViolationError as exc:
            self._close(str(exc))
        if self._phase is _Phase.CLOSED:
            self._start = self._end = 0  # nothing more is parsed: drop what came after
            self._held = False

    def _spend(self, cost: int) -> bool:
        """Count a unit of input against this turn; False (and held) if it must wait."""
        if self._turn and self._turn + cost > TURN_BYTES:
            self._held = True
            return False
        self._turn += cost
        return True

    def _step(self) -> bool:
        """Consume one unit of input; False when more bytes are needed."""
        if self._payload is not None:
            return self._fill_payload()
        if self._skip is not None:
            return self._discard()
        if self._phase is _Phase.CLIENT_FLAGS:
            return self._parse_client_flags()
        if self._phase is _Phase.OPTIONS:
            return self._parse_option()
        return self._parse_request()

    def _take(self, n: int) -> memoryview:
        view = memoryview(self._scratch)[self._start : self._start + n]
        self._start += n
        return view

    def _fill_payload(self) -> bool:
        pending = self._payload
        assert pending is not None
        n = min(self._available(), len(pending.buffer) - pending.filled)
        if n:
            pending.buffer[pending.filled : pending.filled + n] = self._take(n)
            pending.filled += n
        if pending.filled < len(pending.buffer):
            return False
        pending.request.payload = pending.buffer
        self._events.append(pending.request)
        self._payload = None
        return True

    def _discard(self) -> bool:
        skip = self._skip
        assert skip is not None
        n = min(self._available(), skip.remaining)
        self._start += n
        skip.remaining -= n
        if skip.remaining:
            return False
        self._outgoing.append(skip.reply)
        self._skip = None
        return True

    # -- handshake -------------------------------------------------------------------------

    def _parse_client_flags(self) -> bool:
        if self._available() < 4:
            return False
        (flags,) = _U32.unpack(self._take(4))
        if flags & ~int(_KNOWN_CLIENT_FLAGS):
            raise ProtocolViolationError(f"unknown client flags {flags:#x}")
        self._no_zeroes = bool(flags & HandshakeFlag.NO_ZEROES)
        self._phase = _Phase.OPTIONS
        return True

    def _parse_option(self) -> bool:
        if self._available() < _OPTION_HEADER.size:
            return False
        magic, option, length = _OPTION_HEADER.unpack_from(self._scratch, self._start)
        if magic != IHAVEOPT:
            raise ProtocolViolationError(f"bad option magic {magic:#x}")
        if length > MAX_OPTION_LENGTH:
            self._start += _OPTION_HEADER.size
            reply = self._option_reply(option, OptionReply.ERR_TOO_BIG, b"option too long")
            self._skip = _Skip(length, reply)
            return True
        if self._available() < _OPTION_HEADER.size + length:
            return False
        if not self._spend(REQUEST_COST + length):
            return False
        self._start += _OPTION_HEADER.size
        data = bytes(self._take(length))
        queued = len(self._outgoing)
        self._handle_option(option, data)
        self._turn += sum(len(out) for out in self._outgoing[queued:])
        return True

    def _option_reply(self, option: int, reply: OptionReply, data: bytes = b"") -> bytes:
        return _OPTION_REPLY.pack(OPTION_REPLY_MAGIC, option, reply, len(data)) + data

    def _reply_option(self, option: int, reply: OptionReply, data: bytes = b"") -> None:
        self._outgoing.append(self._option_reply(option, reply, data))

    def _handle_option(self, option: int, data: bytes) -> None:
        if option == Option.EXPORT_NAME:
            self._export_name(data)
        elif option == Option.ABORT:
            self._reply_option(option, OptionReply.ACK)
            self._close("client aborted the handshake")
        elif option == Option.LIST:
            self._list(data)
        elif option in (Option.INFO, Option.GO):
            self._info_or_go(Option(option), data)
        elif option == Option.STRUCTURED_REPLY:
            if data:
                self._reply_option(option, OptionReply.ERR_INVALID, b"no data expected")
            else:
                self._structured = True
                self._reply_option(option, OptionReply.ACK)
        elif option in (Option.LIST_META_CONTEXT, Option.SET_META_CONTEXT):
            self._meta_context(Option(option), data)
        else:
            # STARTTLS, EXTENDED_HEADERS and options this server does not know.
            self._reply_option(option, OptionReply.ERR_UNSUP, b"option not supported")

    def _export_name(self, data: bytes) -> None:
        export = self._lookup(data)
        if export is None:
            # The protocol gives EXPORT_NAME no way to refuse but hanging up.
            self._close("unknown export requested with NBD_OPT_EXPORT_NAME")
            return
        reply = _U64.pack(export.size) + _U16.pack(self._transmission_flags(export))
        if not self._no_zeroes:
            reply += bytes(124)
        self._outgoing.append(reply)
        self._enter_transmission(export)

    def _lookup(self, raw_name: bytes) -> ExportInfo | None:
        try:
            name = raw_name.decode("utf-8")
        except UnicodeDecodeError:
            return None
        return self.catalog.lookup(name)

    def _list(self, data: bytes) -> None:
        if data:
            self._reply_option(Option.LIST, OptionReply.ERR_INVALID, b"no data expected")
            return
        for name in self.catalog.names():
            encoded = name.encode()
            self._reply_option(Option.LIST, OptionReply.SERVER, _U32.pack(len(encoded)) + encoded)
        self._reply_option(Option.LIST, OptionReply.ACK)

    def _info_or_go(self, option: Option, data: bytes) -> None:
        parsed = _parse_info_request(data)
        if parsed is None:
            self._reply_option(option, OptionReply.ERR_INVALID, b"malformed request")
            return
        raw_name, requested = parsed
        export = self._lookup(raw_name)
        if export is None:
            self._reply_option(option, OptionReply.ERR_UNKNOWN, b"no such export")
            return
        flags = self._transmission_flags(export)
        self._reply_option(
            option,
            OptionReply.INFO,
            _U16.pack(Info.EXPORT) + _U64.pack(export.size) + _U16.pack(flags),
        )
        if Info.NAME in requested:
            self._reply_option(option, OptionReply.INFO, _U16.pack(Info.NAME) + raw_name)
        if Info.DESCRIPTION in requested and export.description:
            text = export.description.encode()
            self._reply_option(option, OptionReply.INFO, _U16.pack(Info.DESCRIPTION) + text)
        if Info.BLOCK_SIZE in requested:
            sizes = struct.pack(">III", MIN_BLOCK_SIZE, PREFERRED_BLOCK_SIZE, MAX_PAYLOAD)
            self._reply_option(option, OptionReply.INFO, _U16.pack(Info.BLOCK_SIZE) + sizes)
        self._reply_option(option, OptionReply.ACK)
        if option is Option.GO:
            if self._meta.export_name != export.name:
                self._meta = _MetaSelection()
            self._enter_transmission(export)

    def _meta_context(self, option: Option, data: bytes) -> None:
        if option is Option.SET_META_CONTEXT and not self._structured:
            self._reply_option(option, OptionReply.ERR_INVALID, b"structured replies first")
            return
        parsed = _parse_meta_request(data)
        if parsed is None:
            self._reply_option(option, OptionReply.ERR_INVALID, b"malformed request")
            return
        raw_name, queries = parsed
        export = self._lookup(raw_name)
        if export is None:
            self._reply_option(option, OptionReply.ERR_UNKNOWN, b"no such export")
            return
        if option is Option.LIST_META_CONTEXT:
            matches = not queries or any(q in ("base:", BASE_ALLOCATION) for q in queries)
        else:
            matches = BASE_ALLOCATION in queries
            self._meta = _MetaSelection(export.name, matches)
        if matches:
            context = _U32.pack(BASE_ALLOCATION_ID) + BASE_ALLOCATION.encode()
            self._reply_option(option, OptionReply.META_CONTEXT, context)
        self._reply_option(option, OptionReply.ACK)

    def _transmission_flags(self, export: ExportInfo) -> int:
        flags = (
            TransmissionFlag.HAS_FLAGS
            | TransmissionFlag.SEND_FLUSH
            | TransmissionFlag.SEND_FUA
            | TransmissionFlag.SEND_CACHE
            | TransmissionFlag.CAN_MULTI_CONN
        )
        if export.read_only:
            flags |= TransmissionFlag.READ_ONLY
        else:
            flags |= (
                TransmissionFlag.SEND_TRIM
                | TransmissionFlag.SEND_WRITE_ZEROES
                | TransmissionFlag.SEND_FAST_ZERO
            )
        if self._structured:
            flags |= TransmissionFlag.SEND_DF
        return int(flags)

    def _enter_transmission(self, export: ExportInfo) -> None:
        self._export = export
        self._phase = _Phase.TRANSMISSION
        base_allocation = self._meta.base_allocation and self._meta.export_name == export.name
        self._meta = _MetaSelection(export.name, base_allocation)
        self._events.append(ExportSelected(export, self._structured, base_allocation))

    # -- transmission ----------------------------------------------------------------------

    def _parse_request(self) -> bool:
        if self._available() < _REQUEST.size:
            return False
        magic, flags, kind, handle, offset, length = _REQUEST.unpack_from(
            self._scratch, self._start
        )
        if magic != REQUEST_MAGIC:
            raise ProtocolViolationError(f"bad request magic {magic:#x}")
        data = length if kind in _PLAIN_DATA and length <= MAX_PAYLOAD else 0
        if not self._spend(REQUEST_COST + data):
            return False
        self._start += _REQUEST.size
        error = self._validate(kind, flags, offset, length)
        if error is not None:
            errno, message = error
            reply = self._error_reply(kind, handle, errno, message)
            if kind == Command.WRITE and length:
                self._skip = _Skip(length, reply)
            else:
                self._outgoing.append(reply)
            return True
        request = Request(_COMMANDS[kind], flags, handle, offset, length)
        if request.command is Command.WRITE and length:
            self._payload = _PendingPayload(request, bytearray(length))
            return True
        if request.command is Command.WRITE:
            request.payload = b""
        self._events.append(request)
        if request.command is Command.DISC:
            self._close("client disconnected")
        return True

    def _validate(
        self, kind: int, flags: int, offset: int, length: int
    ) -> tuple[Errno, str] | None:
        export = self._export
        assert export is not None
        if (
            kind in _PLAIN_DATA
            and not flags
            and length <= MAX_PAYLOAD
            and offset + length <= export.size
            and not (kind == Command.WRITE and export.read_only)
        ):
            return None  # the common case: a plain read or write inside the export
        command = _COMMANDS.get(kind)
        if command is None:
            return Errno.EINVAL, f"unknown command {kind}"
        if flags & _FORBIDDEN_FLAGS[command]:
            return Errno.EINVAL, f"flags {flags:#x} not valid for {command.name}"
        if flags & _DF and not self._structured:
            return Errno.EINVAL, "DF needs structured replies"
        if command in _MODIFYING and export.read_only:
            return Errno.EPERM, "export is read-only"
        if command in (Command.READ, Command.WRITE) and length > MAX_PAYLOAD:
            return Errno.EINVAL, f"length {length} exceeds the maximum {MAX_PAYLOAD}"
        if command in _RANGED and offset + length > export.size:
            return Errno.EINVAL, f"range {offset}+{length} beyond the export size {export.size}"
        if command is Command.BLOCK_STATUS:
            if not self._meta.base_allocation:
                return Errno.EINVAL, "no metadata context negotiated"
            if length == 0:
                return Errno.EINVAL, "zero-length block status"
        return None

    def _close(self, reason: str) -> None:
        self._phase = _Phase.CLOSED
        self._payload = None
        self._skip = None
        self._events.append(ConnectionClosed(reason))

    # -- replies ---------------------------------------------------------------------------

    def reply(self, handle: int, errno: int = 0) -> bytes:
        """A simple reply: the result of WRITE, FLUSH, TRIM, WRITE_ZEROES, CACHE."""
        return _SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, errno, handle)

    def reply_read(self, handle: int, offset: int, data: bytes) -> list[bytes]:
        """The reply to a successful READ, as buffers to write in order (data is not copied)."""
        if self._structured:
            header = _OFFSET_DATA_CHUNK.pack(
                STRUCTURED_REPLY_MAGIC, _DONE, _OFFSET_DATA, handle, 8 + len(data), offset
            )
            return [header, data]
        return [_SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, 0, handle), data]

    def reply_error(self, request: Request, errno: int, message: str = "") -> bytes:
        return self._error_reply(request.command, request.handle, errno, message)

    def _error_reply(self, kind: int, handle: int, errno: int, message: str) -> bytes:
        if self._structured and kind in _STRUCTURED_ERRORS:
            text = message.encode()[:4096]
            body = _U32.pack(errno) + _U16.pack(len(text)) + text
            header = _CHUNK.pack(
                STRUCTURED_REPLY_MAGIC, ReplyFlag.DONE, ChunkType.ERROR, handle, len(body)
            )
            return header + body
        return _SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, errno, handle)

    def reply_block_status(self, handle: int, extents: Sequence[tuple[int, int]]) -> bytes:
        """The reply to BLOCK_STATUS: (length, base:allocation flags) pairs from the offset."""
        body = bytearray(_U32.pack(BASE_ALLOCATION_ID))
        for length, flags in extents:
            body += struct.pack(">II", length, flags)
        header = _CHUNK.pack(
            STRUCTURED_REPLY_MAGIC, ReplyFlag.DONE, ChunkType.BLOCK_STATUS, handle, len(body)
        )
        return header + bytes(body)


def _parse_info_request(data: bytes) -> tuple[bytes, set[int]] | None:
    """Decode NBD_OPT_INFO/GO data: name, then the info types asked for."""
    if len(data) < 6:
        return None
    (name_length,) = _U32.unpack_from(data, 0)
    if 4 + name_length + 2 > len(data):
        return None
    name = data[4 : 4 + name_length]
    (count,) = _U16.unpack_from(data, 4 + name_length)
    rest = data[6 + name_length :]
    if len(rest) != 2 * count:
        return None
    requested = {_U16.unpack_from(rest, 2 * i)[0] for i in range(count)}
    return name, requested


def _parse_meta_request(data: bytes) -> tuple[bytes, list[str]] | None:
    """Decode NBD_OPT_LIST/SET_META_CONTEXT data: export name, then the queries."""
    if len(data) < 8:
        return None
    (name_length,) = _U32.unpack_from(data, 0)
    pos = 4 + name_length
    if pos + 4 > len(data):
        return None
    name = data[4:pos]
    (count,) = _U32.unpack_from(data, pos)
    pos += 4
    queries: list[str] = []
    for _ in range(count):
        if pos + 4 > len(data):
            return None
        (length,) = _U32.unpack_from(data, pos)
        pos += 4
        if pos + length > len(data):
            return None
        try:
            queries.append(data[pos : pos + length].decode("utf-8"))
        except UnicodeDecodeError:
            return None
        pos += length
    if pos != len(data):
        return None
    return name, queries
