"""Fuzz of the real hvds-tap over its unix socket: random and mutated NBD sessions (the
generator of tests/nbd_fuzz.py), then clients that pipeline requests without reading the replies.
Afterwards the tap must still be up, serve qemu-img and qemu-io correctly (a disk the fuzz never
named, byte for byte; the fuzzed disk as its image file holds it, and so its replica), have
logged no traceback, and its memory must have stayed bounded throughout."""

from __future__ import annotations

import contextlib
import itertools
import random
import socket
import subprocess
import threading
import time
import tomllib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import tomli_w
from fuzzing import Figures, examples, seed
from harness import BIN, Lab, Service, sha256_file
from nbd_fuzz import Session, go_data, option, random_sessions, request

from hvds.nbd.constants import MAX_PAYLOAD, Command, CommandFlag, Option

MiB = 1024 * 1024
# What the tap may grow by while hostile clients hold it: per client one turn of replies being
# built and one in its transport's buffer (2 x 32 MiB at most), for the three flooding
# clients, plus slack for the allocator.
GROWTH_LIMIT = 3 * 2 * (MAX_PAYLOAD + MiB) + 64 * MiB
# The watchdog kills the tap beyond this: a regression must not take the machine's memory.
KILL_AT = 1024 * MiB


def rss(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


class MemoryWatch:
    """Samples the tap's RSS every 10 ms; kills it beyond KILL_AT."""

    def __init__(self, service: Service) -> None:
        assert service.proc is not None
        self.service = service
        self.pid = service.proc.pid
        self.base = rss(self.pid)
        self.peak = self.base
        self.killed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            try:
                now = rss(self.pid)
            except (OSError, KeyError):
                return
            self.peak = max(self.peak, now)
            if now > KILL_AT:
                self.killed = True
                self.service.kill()
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def tap(lab: Lab) -> Iterator[Lab]:
    lab.add_disk("disk0", MiB)  # the fuzz's own disk: its writes land here
    lab.add_disk("ro", 64 * 1024)
    lab.add_disk("big", 64 * MiB)  # sparse: where the floods read 32 MiB at a time
    good = lab.add_disk("good", 4 * MiB)  # never named by the fuzz
    with good.open("r+b") as f:
        f.write(random.Random(7).randbytes(4 * MiB))
    lab.start_sink()
    lab.write_config()
    config = tomllib.loads(lab.config_path.read_text())
    for export in config["export"]:
        export["read_only"] = export["name"] in ("ro", "good")
    lab.config_path.write_text(tomli_w.dumps(config))
    argv = [str(BIN / "hvds-tap"), "--config", str(lab.config_path)]
    lab.tap = Service(argv, lab.root / "tap.log").start()
    yield lab


def play(path: Path, s: Session) -> int:
    """One session on a fresh connection: send it, half-close or not, take what comes back."""
    received = 0
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(2)
        sock.connect(str(path))
        try:
            for chunk in s.chunks:
                sock.sendall(chunk)
            if s.eof:
                sock.shutdown(socket.SHUT_WR)
            sock.settimeout(0.05 if not s.eof else 1)
            while data := sock.recv(1 << 20):
                received += len(data)
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            pass  # the tap hung up (a protocol violation) or waits for more: both are fine
    return received


def flood(path: Path, export: bytes, requests: bytes) -> socket.socket:
    """A client that sends its requests and never reads a reply; returns its open socket."""
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(path))
    sock.sendall(b"\x00\x00\x00\x03" + option(Option.GO, go_data(export)))
    sock.settimeout(3)
    with contextlib.suppress(TimeoutError, BrokenPipeError, ConnectionResetError):
        sock.sendall(requests)  # blocks, then times out, once the tap stops reading
    return sock


def qemu_compare(lab: Lab, export: str, reference: Path) -> None:
    subprocess.run(
        ["qemu-img", "compare", "-f", "raw", "-F", "raw", lab.uri(export), str(reference)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip


def test_the_tap_survives_fuzzing_and_still_serves(tap: Lab) -> None:
    assert tap.tap is not None and tap.tap.proc is not None
    watch = MemoryWatch(tap.tap)
    run_seed = seed()
    figures = Figures("tap.sessions", seed=run_seed)
    count = examples(400)
    try:
        sessions = iter(random_sessions(run_seed, count))
        with ThreadPoolExecutor(8) as pool:
            while batch := list(itertools.islice(sessions, 256)):  # a batch in memory at a time
                for s, received in zip(batch, pool.map(lambda s: play(tap.tap_socket, s), batch),
                                       strict=True):  # fmt: skip
                    figures.add(s.size)
                    received_before = figures.extra.get("bytes_received", 0)
                    figures.extra["bytes_received"] = received_before + received
        assert tap.tap.proc.poll() is None, f"the tap died (seed {run_seed})"
        after_sessions = watch.peak

        # Hostile clients: pipelined 32 MiB READs (9,000 of them: 300 GB of replies), a stream
        # of FUA writes (syncs), and more READs on a second connection; none reads a reply.
        reads = b"".join(request(Command.READ, 0, h, 0, MAX_PAYLOAD) for h in range(9000))
        block = b"\xa5" * 65536
        fua = int(CommandFlag.FUA)
        writes = b"".join(
            request(Command.WRITE, fua, h, 0, len(block)) + block for h in range(2000)
        )
        floods: list[socket.socket] = []
        try:
            for export, requests in ((b"big", reads), (b"disk0", writes), (b"big", reads)):
                floods.append(flood(tap.tap_socket, export, requests))
            time.sleep(1)
            # Meanwhile the tap serves everyone else.
            qemu_compare(tap, "good", tap.exports["good"])
            held = watch.peak
        except (OSError, subprocess.CalledProcessError):
            assert not watch.killed, f"the tap grew beyond {KILL_AT >> 20} MiB: killed"
            raise
        finally:
            for sock in floods:
                sock.close()
    finally:
        watch.stop()
    assert tap.tap.proc.poll() is None, "the tap died"

    # Still serving correctly: the untouched disk byte for byte, the fuzzed one as its file
    # holds it (reads go through the tap) and, once replicated, as the replica holds it.
    qemu_compare(tap, "good", tap.exports["good"])
    subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x3c 4096 8192", tap.uri("disk0")],
                   check=True, capture_output=True, timeout=30)  # fmt: skip
    qemu_compare(tap, "disk0", tap.exports["disk0"])
    tap.wait_for(lambda: tap.metric("hvds_tap_dirty_bytes", "disk0") == 0, what="copies acked")
    assert sha256_file(tap.replica("disk0")) == sha256_file(tap.exports["disk0"])
    log = (tap.root / "tap.log").read_text()
    assert "Traceback" not in log and "Fatal error" not in log, log[-3000:]

    growth = max(after_sessions, held) - watch.base
    figures.extra.update(
        tap_base_rss_mib=round(watch.base / MiB, 1),
        tap_peak_rss_mib=round(watch.peak / MiB, 1),
        tap_peak_after_sessions_mib=round(after_sessions / MiB, 1),
        tap_peak_under_floods_mib=round(held / MiB, 1),
    )
    figures.report()
    assert growth < GROWTH_LIMIT, f"the tap grew by {growth / MiB:.0f} MiB"
