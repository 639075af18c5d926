"""Fuzz of the real VDSAs' control sockets (one JSON request per line): requests of every op with
fields missing, of wrong types or hostile (tests/control_fuzz.py), lines that are not JSON,
not UTF-8, nested past the recursion limit or over the 64 KiB limit, on several connections at
once, against a source VDSA (with its tap and the tap's drop-in directory) and a target VDSA
(with a replica, a spare replica the fuzz may fail over, a datastore and a recovery script).

Every line must get one answer, a JSON object with a boolean "ok" and, when not ok, an error
message, within 20 s (the longest wait of an op is the tap's 10 s), an over-long line too (and
the connection goes on); a field of a type its op does not read must be refused. Afterwards:
both VDSAs are up and answer, grew by less than 64 MiB, logged no traceback, no file was made,
changed or removed outside their directories (names that climb out: ``../escaped``, absolute
paths to canary files), the tap still takes a drop-in change, and replication is still exact.
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from control_fuzz import (
    Names,
    control_request,
    encode,
    raw_line,
    reply_problem,
    wrong_type,
)
from fuzzing import Figures, RandomChooser, examples, seed
from harness import make_image, readable, sha256_file, write_random
from test_fuzz_tap import MemoryWatch
from test_replication import Sites, sites  # noqa: F401 - the fixture

from hvds.vdsa.control import request

MiB = 1024 * 1024
ANSWER_WITHIN = 20.0  # seconds; the tap's drop-in changes may take 10


class Session:
    """One connection: its lines, then every answer read back and judged."""

    def __init__(self, path: Path, lines: list[tuple[bytes, dict[str, Any] | None]]) -> None:
        self.path = path
        self.lines = [line for line, _ in lines]
        self.requests = [request for _, request in lines]  # None: a raw line
        self.answers: list[Any] = []

    def run(self) -> list[str]:
        problems = []
        expected = len(self.lines)
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(ANSWER_WITHIN)
            sock.connect(str(self.path))
            for line in self.lines:
                sock.sendall(line)
            sock.shutdown(socket.SHUT_WR)
            data = b""
            deadline = time.monotonic() + ANSWER_WITHIN * max(1, expected)
            try:
                while data.count(b"\n") < expected and time.monotonic() < deadline:
                    chunk = sock.recv(1 << 16)
                    if not chunk:
                        break
                    data += chunk
            except TimeoutError:
                problems.append(f"hang: no answer within {ANSWER_WITHIN:.0f} s")
            except ConnectionResetError:
                pass
        replies = data.split(b"\n")[:-1]
        if len(replies) != expected:
            problems.append(f"{len(replies)} answers to {expected} lines")
        for reply, sent in zip(replies, self.requests, strict=False):
            try:
                answer = json.loads(reply)
            except ValueError:
                problems.append(f"answer not JSON: {reply[:200]!r}")
                continue
            self.answers.append(answer)
            problem = reply_problem(answer)
            if problem:
                problems.append(problem)
            wrong = None if sent is None else wrong_type(sent)
            if wrong is not None and isinstance(answer, dict) and answer.get("ok") is not False:
                problems.append(f"a field of the wrong type accepted ({wrong}): {answer!r}")
        if problems:
            shown = [line[:300] for line in self.lines]
            problems = [f"{p}; lines sent: {shown}" for p in problems]
        return problems


def lines_of_a_session(c: RandomChooser, names: Names) -> list[tuple[bytes, dict[str, Any] | None]]:
    lines: list[tuple[bytes, dict[str, Any] | None]] = []
    for _ in range(c.integer(1, 4)):
        if c.chance(0.2):
            lines.append((raw_line(c), None))
        else:
            request = control_request(c, names)
            lines.append((encode(request), request))
    return lines


# What the VDSA names files after: a VM's console, a drop-in, a restored image, a failover.
SUFFIXES = ("", ".console", ".toml", ".raw", ".json")


def plant_canaries(escape: Path) -> dict[Path, bytes]:
    """Files where the hostile absolute names (``escape/escaped-N`` + a suffix) point: none may
    be changed or removed."""
    canaries = {}
    for n in range(100):
        for suffix in SUFFIXES:
            path = escape / f"escaped-{n}{suffix}"
            path.write_bytes(f"canary {n}{suffix}\n".encode())
            canaries[path] = path.read_bytes()
    return canaries


def escaped_files(tmp_path: Path, canaries: dict[Path, bytes]) -> list[str]:
    """Files the fuzz's hostile names (``escaped-N``) made, changed or removed, wherever they
    could land: under the test's directory (the tap's bitmaps of exports so named excepted:
    their names are quoted) and in every directory above it."""
    found = [p for p in tmp_path.rglob("*escaped*") if "%2F" not in p.name]
    for parent in tmp_path.parents:
        found += parent.glob("escaped*")
    problems = [f"made: {p}" for p in found if p not in canaries]
    for path, content in canaries.items():
        if not path.exists():
            problems.append(f"removed: {path}")
        elif path.read_bytes() != content:
            problems.append(f"changed: {path}")
    return problems


def test_the_control_sockets_survive_fuzzing(sites: Sites, tmp_path: Path) -> None:  # noqa: F811
    sites.protect({"vm1-disk0": 16 * MiB})
    vdsa_a, vdsa_b, host = sites.vdsa_a, sites.vdsa_b, sites.host_a
    vdsa_b.replicate_here("spare", {1: ("spare-disk0", MiB)})  # the fuzz may fail it over
    datastore = tmp_path / "ds1"
    datastore.mkdir()
    vdsa_b.sections["datastore"] = [{"name": "ds1", "path": str(datastore)}]
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "hello").write_text("#!/bin/sh\necho hello $HVDS_X\n")
    (scripts / "hello").chmod(0o755)
    vdsa_b.settings["scripts_dir"] = str(scripts)
    exports_dir = host.root / "exports.d"
    exports_dir.mkdir()
    vdsa_a.settings["tap_config"] = str(host.config_path)
    vdsa_b.start()
    vdsa_a.start()
    host.start_tap(vdsa_socket=str(vdsa_a.tap_socket), exports_dir=str(exports_dir))
    sites.wait_in_sync(timeout=60)
    uri = host.uri("vm1-disk0")
    write_random(uri, 0, 2 * MiB, host.root)
    sites.tagged_checkpoint("before")

    names = Names(
        vpgs=("vpg1", "spare", "nope"), safe_vpgs=("spare", "nope"),
        disks=("vm1-disk0", "spare-disk0", "nope"), datastore="ds1", script="hello",
        exports=("fuzz-a", "fuzz-b", "nope"), escape=tmp_path,
    )  # fmt: skip
    canaries = plant_canaries(tmp_path)
    run_seed = seed()
    rng = random.Random(run_seed)
    chooser = RandomChooser(rng)
    figures = Figures("vdsa.control_socket", seed=run_seed)
    watches = {vdsa.name: MemoryWatch(vdsa.service) for vdsa in (vdsa_a, vdsa_b)
               if vdsa.service is not None}  # fmt: skip
    problems: list[str] = []
    ops: Counter[str] = Counter()
    answers: Counter[str] = Counter()
    lines = 0
    total = examples(300)
    with ThreadPoolExecutor(max_workers=6) as pool:
        for first in range(0, total, 500):  # a batch at a time: the long run's lines add up
            sessions = [
                Session(rng.choice([vdsa_a.control_socket, vdsa_b.control_socket]),
                        lines_of_a_session(chooser, names))
                for _ in range(min(500, total - first))
            ]  # fmt: skip
            for session, found in zip(sessions, pool.map(Session.run, sessions), strict=True):
                problems += found
                figures.add(sum(len(line) for line in session.lines))
                lines += len(session.lines)
                for sent in session.requests:
                    if sent is not None:
                        ops[str(sent.get("op"))[:20]] += 1
                for answer in session.answers:
                    ok = isinstance(answer, dict) and answer.get("ok")
                    answers["ok" if ok else "refused"] += 1
                    # What the fuzz opened, it closes, so that views do not pile up.
                    if ok and "export" in answer:
                        with contextlib.suppress(OSError, ValueError):
                            request(vdsa_b.control_socket,
                                    {"op": "view_close", "export": answer["export"]})  # fmt: skip
            assert not problems, "\n".join(problems[:20])
    growth = {}
    for name, watch in watches.items():
        watch.stop()
        growth[name] = round((watch.peak - watch.base) / MiB, 1)
    figures.extra.update(lines=lines, answers=dict(answers), vdsa_growth_mib=growth,
                         ops=dict(ops.most_common()))  # fmt: skip
    figures.report()
    # The VDSAs hold nothing per request once it is answered: 1 MiB lines, hundreds of refused
    # views and failovers leave no more than allocator slack.
    assert all(mib < 64 for mib in growth.values()), growth

    for vdsa in (vdsa_a, vdsa_b):
        assert vdsa.service is not None and vdsa.service.proc is not None
        assert vdsa.service.proc.poll() is None, f"{vdsa.name} died"
        assert vdsa.status()["id"] == vdsa.name  # still answers a valid request
        log = (vdsa.root / "vdsa.log").read_text()
        for bad in ("Traceback", "Unhandled exception", "exception was never retrieved"):
            assert bad not in log, log[max(0, log.index(bad) - 3000) : log.index(bad) + 3000]
    assert escaped_files(tmp_path, canaries) == []

    # The tap still takes a change of its drop-ins: a disk published now is served.
    image = make_image(tmp_path / "check.raw", MiB)
    published = vdsa_a.control(op="tap_publish", group="check", disks={"check-disk": str(image)})
    assert readable(published["uris"]["check-disk"])
    # And replication is still exact.
    write_random(uri, 4 * MiB, 2 * MiB, host.root)
    sites.tagged_checkpoint("after")
    assert sha256_file(vdsa_b.mirror("vm1-disk0")) == sha256_file(host.exports["vm1-disk0"])


def ask_raw(path: Path, *lines: bytes) -> list[dict[str, Any]]:
    """Send raw lines on one connection; every answer, read until the VDSA hangs up."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(ANSWER_WITHIN)
        sock.connect(str(path))
        for line in lines:
            sock.sendall(line)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(1 << 16):
            data += chunk
    return [json.loads(line) for line in data.splitlines()]


def test_what_the_control_fuzz_found(sites: Sites, tmp_path: Path) -> None:  # noqa: F811
    """Each bug the fuzz found, as one request (each failed on the code before the fix)."""
    sites.protect({"vm1-disk0": 4 * MiB})
    vdsa, host = sites.vdsa_a, sites.host_a
    exports_dir = host.root / "exports.d"
    exports_dir.mkdir()
    vdsa.settings["tap_config"] = str(host.config_path)
    sites.vdsa_b.start()
    vdsa.start()
    host.start_tap(vdsa_socket=str(vdsa.tap_socket), exports_dir=str(exports_dir))
    control = vdsa.control_socket

    def refused(line: bytes, *words: str) -> None:
        (answer,) = ask_raw(control, line)
        assert answer["ok"] is False and all(w in answer["error"] for w in words), answer

    # Lines that raised out of the connection: no answer, the connection dropped, a traceback.
    refused(b"[" * 5000 + b"]" * 5000 + b"\n", "not JSON")  # RecursionError
    refused(b'{"op": "hold", "vpg": "vpg1", "cut": ' + b"9" * 5000 + b"}\n", "not JSON")
    refused(b'{"op": "hold", "vpg": "vpg1", "cut": 1e999}\n', "cut")  # OverflowError
    # An over-long line: answered, and the connection goes on (it was dropped unanswered).
    long = b'{"op": "status", "pad": "' + b"x" * 70000 + b'"}\n'
    answers = ask_raw(control, long, b'{"op": "status"}\n')
    assert "at most 65536 bytes" in answers[0]["error"] and answers[1]["ok"], answers
    # Wrong types were taken: a string as the list of disks to detach detached each letter.
    refused(encode({"op": "tap_detach", "exports": "abc"}), "exports")
    refused(encode({"op": "hold", "vpg": "vpg1", "cut": "12"}), "cut")
    refused(encode({"op": "release", "vpg": "vpg1", "cut": True}), "cut")
    refused(encode({"op": "checkpoints"}), "vpg", "Field required")  # was just "'vpg'"
    # A VM's name made its console a file anywhere, removed first.
    canary = tmp_path / "canary.console"
    canary.write_text("canary")
    refused(encode({"op": "vm_start", "name": str(tmp_path / "canary"),
                    "disks": ["/nonexistent"]}), "did not start")  # fmt: skip
    assert canary.read_text() == "canary"
    # A published disk named as one the tap serves: the tap refused the drop-in, and with it
    # every later change of its drop-ins (a failover's detaching too).
    refused(encode({"op": "tap_publish", "group": "g1",
                    "disks": {"vm1-disk0": str(make_image(tmp_path / "x.raw", MiB))}}),
            "serves 'vm1-disk0' already")  # fmt: skip
    refused(encode({"op": "tap_publish", "group": "detached", "disks": {}}), "detached")
    refused(encode({"op": "tap_publish", "group": "g2", "disks": {"n": "/nonexistent"}}),
            "No such file")  # fmt: skip
    assert sorted(p.name for p in exports_dir.glob("*.toml")) == []
    vdsa.control(op="tap_detach", exports=["vm1-disk0"])  # the tap still takes changes
    assert not readable(host.uri("vm1-disk0"))
    vdsa.control(op="tap_detach", exports=["vm1-disk0"], detached=False)
    assert readable(host.uri("vm1-disk0"))
    log = (vdsa.root / "vdsa.log").read_text()
    assert "Traceback" not in log and "Unhandled exception" not in log, log[-3000:]
