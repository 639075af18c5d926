"""A service's log: to stderr always, to ``log_file`` too when its configuration names one; and
the tail of it read back for the site manager's log bundles (decision 0015).

Under systemd stderr goes to the journal, so a host's log is found either in the file the service
was told to write, or in the journal of its unit (``journalctl -u``); a log bundle takes the
last ``TAIL_BYTES`` of it, starting at a whole line.
"""

from __future__ import annotations

import asyncio
import logging
import logging.handlers
import os
from pathlib import Path
from typing import Any

FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
TAIL_BYTES = 1 << 20
JOURNAL_LINES = 50_000
JOURNAL_TIMEOUT = 20.0


def setup(level: str, log_file: Path | None = None) -> None:
    logging.basicConfig(level=level, format=FORMAT)
    if log_file is not None:
        also_to(log_file)


def also_to(log_file: Path) -> None:
    """Also write the log records to ``log_file``: reopened when logrotate moves it away."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.WatchedFileHandler(log_file)
    handler.setFormatter(logging.Formatter(FORMAT))
    logging.getLogger().addHandler(handler)


def tail(data: bytes, limit: int = TAIL_BYTES, whole: bool = True) -> tuple[str, bool]:
    """The last ``limit`` bytes of a log as text, from the start of a line; whether anything
    was left out. ``whole``: ``data`` starts at the start of the log (else it was cut before)."""
    start = max(0, len(data) - limit)
    if start == 0 and whole:
        return data.decode(errors="replace"), False
    newline = data.find(b"\n", max(0, start - 1))
    if 0 <= newline < len(data) - 1:
        start = newline + 1  # else one line longer than ``limit``: its end is kept
    return data[start:].decode(errors="replace"), True


def tail_file(path: Path, limit: int = TAIL_BYTES) -> tuple[str, bool]:
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        start = max(0, size - limit - 1)  # one byte more: does the first line start whole?
        f.seek(start)
        data = f.read(size - start)
    return tail(data, limit, whole=start == 0)


def under_systemd() -> bool:
    """Whether this process is a systemd service (systemd sets INVOCATION_ID for each)."""
    return bool(os.environ.get("INVOCATION_ID"))


async def journal_tail(unit: str, limit: int = TAIL_BYTES) -> tuple[str, bool]:
    argv = ["journalctl", "--no-pager", "--quiet", "-o", "short-iso-precise",
            "-n", str(JOURNAL_LINES), "-u", unit]  # fmt: skip
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
    except OSError as exc:
        raise OSError(f"cannot run journalctl: {exc}") from exc
    try:
        out, err = await asyncio.wait_for(process.communicate(), JOURNAL_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    if process.returncode != 0:
        raise OSError(f"journalctl -u {unit}: {err.decode(errors='replace').strip()}")
    text, cut = tail(out, limit)
    if not text and err:  # e.g. no permission to read the system journal
        text = f"journalctl -u {unit}: {err.decode(errors='replace').strip()}\n"
    return text, cut


async def read_log(unit: str, log_file: Path | None, limit: int = TAIL_BYTES) -> dict[str, Any]:
    """The tail of a service's log: its log_file if it has one, else its unit's journal.
    ``{source, text, truncated}``; ``source`` is "none" (and ``text`` says why) when neither
    can be read."""
    try:
        if log_file is not None:
            text, cut = await asyncio.to_thread(tail_file, log_file, limit)
            return {"source": f"file:{log_file}", "text": text, "truncated": cut}
        if under_systemd():
            text, cut = await journal_tail(unit, limit)
            return {"source": f"journal:{unit}", "text": text, "truncated": cut}
        reason = f"no log_file is configured for {unit} and this host is not run by systemd\n"
    except (OSError, TimeoutError) as exc:
        reason = f"cannot read the log of {unit}: {exc or 'journalctl did not answer in time'}\n"
    return {"source": "none", "text": reason, "truncated": False}
