"""Fuzz of the sans-I/O NBD server core: generated, mutated and raw client sessions, every
output checked (tests/nbd_fuzz.py says what). CI-sized by default; the long run is
``make fuzz`` (docs/reliability.md)."""

from __future__ import annotations

import random
import struct

from fuzzing import DrawChooser, Figures, examples, fuzz_settings, seed, watchdog
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from nbd_fuzz import (
    EXPORTS,
    MEMORY_LIMIT,
    Session,
    SessionChecker,
    _option_message,
    _request_message,
    go_data,
    meta_data,
    option,
    random_sessions,
    request,
    session,
)

from hvds.nbd.constants import MAX_PAYLOAD, Command, Option
from hvds.nbd.server import TURN_BYTES, Request


def count(figures: dict[str, Figures], name: str, s: Session, checker: SessionChecker) -> None:
    f = figures.setdefault(name, Figures(f"nbd.{name}"))
    f.add(s.size)
    f.extra["requests_released"] = f.extra.get("requests_released", 0) + checker.requests
    f.extra["errors_replied"] = f.extra.get("errors_replied", 0) + checker.errors
    peak = max(f.extra.get("peak_connection_bytes", 0), checker.peak_memory)
    f.extra["peak_connection_bytes"] = peak


@st.composite
def sessions(draw: st.DrawFn) -> Session:
    return session(DrawChooser(draw))


@fuzz_settings(600)
@given(sessions())
def test_generated_sessions(figures: dict[str, Figures], s: Session) -> None:
    checker = SessionChecker()
    with watchdog():
        checker.run(s)
    count(figures, "generated_sessions", s, checker)


@fuzz_settings(500)
@given(handshake=st.booleans(), chunks=st.lists(st.binary(max_size=300), max_size=20))
def test_raw_bytes(figures: dict[str, Figures], handshake: bool, chunks: list[bytes]) -> None:
    """Bytes with no structure at all, from the start or after a good handshake."""
    prefix = [b"\x00\x00\x00\x03", option(Option.GO, go_data(b"disk0"))] if handshake else []
    s = Session([*prefix, *chunks], eof=False)
    checker = SessionChecker()
    with watchdog():
        checker.run(s)
    count(figures, "raw_bytes", s, checker)


def test_random_sessions(figures: dict[str, Figures]) -> None:
    """The same generator fed by a seeded random source: fast, for the million-input run."""
    run_seed = seed()
    f = figures.setdefault("random_sessions", Figures("nbd.random_sessions", seed=run_seed))
    for s in random_sessions(run_seed, examples(3000)):
        checker = SessionChecker()
        try:
            with watchdog():
                checker.run(s)
        except AssertionError as exc:
            raise AssertionError(f"seed {run_seed}, input {f.inputs}: {exc}\n{s}") from exc
        count(figures, "random_sessions", s, checker)


@fuzz_settings(300)
@given(st.data())
def test_valid_requests_all_reach_the_adapter_in_order(data: st.DataObject) -> None:
    """The other side of the checks: nothing valid is refused or lost, payloads intact."""
    export = data.draw(st.sampled_from(EXPORTS))
    structured = data.draw(st.booleans())
    flags = struct.pack(">I", 3)
    opts = option(Option.STRUCTURED_REPLY) if structured else b""
    if structured:
        opts += option(Option.SET_META_CONTEXT,
                       meta_data(export.name.encode(), [b"base:allocation"]))  # fmt: skip
    opts += option(Option.GO, go_data(export.name.encode()))
    commands = [Command.READ, Command.FLUSH, Command.CACHE]
    if not export.read_only:
        commands += [Command.WRITE, Command.TRIM, Command.WRITE_ZEROES]
    if structured:
        commands.append(Command.BLOCK_STATUS)
    wanted = []
    stream = flags + opts
    for handle in range(data.draw(st.integers(0, 30))):
        command = data.draw(st.sampled_from(commands))
        length = data.draw(st.integers(0 if command != Command.BLOCK_STATUS else 1, 70_000))
        length = min(length, export.size)
        offset = data.draw(st.integers(0, export.size - length))
        wanted.append((command, handle, offset, length))
        stream += request(command, 0, handle, offset, length)
        if command is Command.WRITE:
            stream += bytes([handle % 256]) * length
    split = data.draw(st.integers(1, 70_000))
    checker = SessionChecker()
    with watchdog():
        checker.run(Session([stream[i : i + split] for i in range(0, len(stream), split)], False))
    assert checker.requests == len(wanted) and checker.errors == 0
    assert checker.selected is not None and checker.selected.export == export


def test_pipelined_huge_reads_are_parsed_a_bounded_turn_at_a_time() -> None:
    """9,000 pipelined 32 MiB READs (300 GB of replies) in 256 KiB: a turn at a time."""
    huge = EXPORTS[2]
    checker = SessionChecker()
    checker.feed(b"\x00\x00\x00\x03" + option(Option.GO, go_data(huge.name.encode())))
    stream = b"".join(request(Command.READ, 0, h, 0, MAX_PAYLOAD) for h in range(9000))
    conn = checker.conn
    buf = conn.get_buffer()
    buf[: len(stream)] = stream
    conn.buffer_updated(len(stream))
    turns = 0
    while True:
        events = conn.events()
        assert len(events) == 1 and isinstance(events[0], Request)  # one 32 MiB read a turn
        assert conn.buffered_bytes <= MEMORY_LIMIT
        turns += 1
        if not conn.backlogged:
            break
        conn.resume()
    assert turns == 9000
    # Small requests still go many to a turn.
    small = b"".join(request(Command.READ, 0, h, 0, 4096) for h in range(4000))
    conn.get_buffer()[: len(small)] = small
    conn.buffer_updated(len(small))
    assert len(conn.events()) == min(4000, TURN_BYTES // (4096 + 1024))


def test_bytes_after_close_are_dropped_not_buffered() -> None:
    checker = SessionChecker()
    checker.feed(b"\x00\x00\x00\x03" + option(Option.ABORT))
    assert checker.closed
    for _ in range(10):  # 2.5 MiB after the close: more than the receive buffer
        checker.feed(random.randbytes(256 * 1024))
    assert checker.conn.buffered_bytes <= 256 * 1024


class NbdMachine(RuleBasedStateMachine):
    """Step by step: messages of either phase, garbage, EOF, in any order; the checker runs
    after each step (SessionChecker.feed)."""

    def __init__(self) -> None:
        super().__init__()
        self.checker = SessionChecker()
        self.fed = 0

    def _feed(self, data: bytes) -> None:
        self.fed += len(data)
        with watchdog():
            self.checker.feed(data)

    @rule(flags=st.sampled_from([3, 1, 2, 0, 0x80]))
    def client_flags(self, flags: int) -> None:
        self._feed(struct.pack(">I", flags))

    @rule(name=st.sampled_from([b"disk0", b"ro", b"huge", b"nope"]), go=st.booleans())
    def choose_export(self, name: bytes, go: bool) -> None:
        self._feed(option(Option.GO, go_data(name)) if go else option(Option.EXPORT_NAME, name))

    @rule(data=st.data())
    def an_option(self, data: st.DataObject) -> None:
        self._feed(_option_message(DrawChooser(data.draw)))

    @rule(data=st.data())
    def a_request(self, data: st.DataObject) -> None:
        self._feed(_request_message(DrawChooser(data.draw)))

    @rule(garbage=st.binary(min_size=1, max_size=64))
    def garbage(self, garbage: bytes) -> None:
        self._feed(garbage)

    @precondition(lambda self: not self.checker.closed)
    @rule()
    def eof(self) -> None:
        self.checker.conn.receive_eof()
        self.checker.after_turn()
        assert self.checker.closed

    @invariant()
    def closed_means_closed(self) -> None:
        conn = self.checker.conn
        assert conn.closed == self.checker.closed
        assert not conn.backlogged
        assert conn.buffered_bytes <= MEMORY_LIMIT


NbdMachine.TestCase.settings = fuzz_settings(200)
test_state_machine = NbdMachine.TestCase


def test_disc_then_requests_closes_and_drops_the_rest() -> None:
    checker = SessionChecker()
    checker.feed(b"\x00\x00\x00\x03" + option(Option.GO, go_data(b"disk0")))
    checker.feed(request(Command.FLUSH, 0, 1, 0, 0) + request(Command.DISC, 0, 2, 0, 0))
    checker.feed(request(Command.FLUSH, 0, 3, 0, 0) * 100)
    assert checker.closed and checker.requests == 2
