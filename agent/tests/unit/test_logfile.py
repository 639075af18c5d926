"""The tail of a service's log for the manager's log bundles: whole lines, bounded, and what
is said when there is no log to read."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hvds.logfile import read_log, tail, tail_file


def test_a_tail_starts_at_a_whole_line() -> None:
    log = b"aaa\nbbb\nccc\n"
    assert tail(log, 100) == ("aaa\nbbb\nccc\n", False)
    assert tail(log, 8) == ("bbb\nccc\n", True)
    assert tail(log, 7) == ("ccc\n", True)
    assert tail(b"xaaa\nbbb\n", 8, whole=False) == ("bbb\n", True)  # "aaa" was cut before
    assert tail(b"\nbbb\n", 4, whole=False) == ("bbb\n", True)  # "bbb" starts a line
    assert tail(b"0123456789", 4) == ("6789", True)  # one line longer than the bound: its end


def test_a_file_tail_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "vdsa.log"
    lines = [f"line {n:07d}\n" for n in range(200_000)]  # 2.6 MB
    path.write_text("".join(lines))
    text, cut = tail_file(path, 1 << 20)
    assert cut and len(text.encode()) <= 1 << 20 and len(text.encode()) > (1 << 20) - 20
    assert text.splitlines(keepends=True) == lines[-len(text.splitlines()) :]
    small = tmp_path / "tap.log"
    small.write_bytes(b"one\n\xfftwo\n")  # not UTF-8: replaced, not refused
    assert tail_file(small) == ("one\n\ufffdtwo\n", False)


def test_without_a_file_or_systemd_the_reason_is_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    answer = asyncio.run(read_log("hvds-tap.service", None))
    assert answer["source"] == "none" and "not run by systemd" in answer["text"]
    missing = asyncio.run(read_log("hvds-tap.service", tmp_path / "absent.log"))
    assert missing["source"] == "none" and "absent.log" in missing["text"]
