"""What the fuzz tests share: how many inputs (CI-sized or long), a watchdog for hangs, the
hypothesis chooser, and the figures of a run.

    HVDS_FUZZ_EXAMPLES=N   every fuzz test runs N inputs instead of its CI default
    HVDS_FUZZ_SCALE=X      or X times its CI default (make fuzz: see the Makefile)
    HVDS_FUZZ_SEED=S       the seed of the random (non-hypothesis) runs; printed otherwise
    HVDS_FUZZ_REPORT=FILE  append one JSON line of figures per test to FILE

A test's figures (inputs, bytes, seconds, hangs, peak RSS of the process) are printed with
``pytest -s``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import resource
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Protocol, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

T = TypeVar("T")

# A single input that takes longer than this is a hang (the cores are pure: milliseconds).
HANG_SECONDS = 10.0


def examples(default: int) -> int:
    """The number of inputs of a fuzz test: its CI-sized default, or what the run asks for."""
    if "HVDS_FUZZ_EXAMPLES" in os.environ:
        return int(os.environ["HVDS_FUZZ_EXAMPLES"])
    return max(1, int(default * float(os.environ.get("HVDS_FUZZ_SCALE", "1"))))


def long_run() -> bool:
    return "HVDS_FUZZ_EXAMPLES" in os.environ or "HVDS_FUZZ_SCALE" in os.environ


def fuzz_settings(default: int) -> settings:
    """hypothesis settings of a fuzz test: no deadline (the watchdog catches hangs), no health
    check about slow or large data, no example database in a long run (it would grow without
    use)."""
    return settings(
        max_examples=examples(default),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None if long_run() else settings.default.database,
    )


def seed() -> int:
    value = os.environ.get("HVDS_FUZZ_SEED")
    return int(value) if value else random.SystemRandom().randrange(1 << 32)


class Hang(AssertionError):
    """One input ran longer than HANG_SECONDS."""


@contextlib.contextmanager
def watchdog(seconds: float = HANG_SECONDS) -> Iterator[None]:
    """Fail the input if it spins for more than ``seconds`` of CPU time (SIGVTALRM: the cores
    are pure code, a hang is a loop; SIGALRM stays pytest-timeout's)."""

    def expired(signum: int, frame: FrameType | None) -> None:
        raise Hang(f"an input ran for more than {seconds} s of CPU")

    previous = signal.signal(signal.SIGVTALRM, expired)
    signal.setitimer(signal.ITIMER_VIRTUAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_VIRTUAL, 0)
        signal.signal(signal.SIGVTALRM, previous)


class Chooser(Protocol):
    """Where a generator's choices come from: a seeded random source or hypothesis."""

    def chance(self, p: float) -> bool: ...

    def integer(self, low: int, high: int) -> int: ...

    def pick(self, options: Sequence[T]) -> T: ...

    def blob(self, max_size: int) -> bytes: ...


class RandomChooser:
    """Choices from a seeded random source: fast, for the long runs."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def integer(self, low: int, high: int) -> int:
        return self.rng.randint(low, high)

    def pick(self, options: Sequence[T]) -> T:
        return options[self.rng.randrange(len(options))]

    def blob(self, max_size: int) -> bytes:
        return self.rng.randbytes(self.rng.randint(0, max_size))


class DrawChooser:
    """The generators' choices drawn by hypothesis (so that a failure shrinks)."""

    def __init__(self, draw: Callable[[Any], Any]) -> None:
        self.draw = draw

    def chance(self, p: float) -> bool:
        return bool(self.draw(st.integers(0, 999)) < p * 1000)

    def integer(self, low: int, high: int) -> int:
        return int(self.draw(st.integers(low, high)))

    def pick(self, options: Sequence[T]) -> T:
        return options[self.draw(st.integers(0, len(options) - 1))]  # type: ignore[no-any-return]

    def blob(self, max_size: int) -> bytes:
        return bytes(self.draw(st.binary(max_size=max_size)))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class Figures:
    """The figures of one fuzz test, reported at its end."""

    name: str
    inputs: int = 0
    bytes: int = 0
    hangs: int = 0
    seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    finished: float = 0.0

    def add(self, nbytes: int) -> None:
        """One more input done."""
        self.inputs += 1
        self.bytes += nbytes
        self.finished = time.monotonic()

    def report(self) -> dict[str, Any]:
        figures = {
            "test": self.name,
            "inputs": self.inputs,
            "bytes": self.bytes,
            "seconds": round((self.finished or time.monotonic()) - self.started, 1),
            "crashes": 0,  # a crash fails the test before it reports
            "hangs": self.hangs,
            "peak_rss_mib": round(peak_rss_mib(), 1),
            **({"seed": self.seed} if self.seed is not None else {}),
            **self.extra,
        }
        print(f"\nfuzz {json.dumps(figures)}")
        path = os.environ.get("HVDS_FUZZ_REPORT")
        if path:
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(figures) + "\n")
        return figures
