"""Fuzz of the real hvds-tap's configuration loading: its TOML file damaged and its drop-in
directory (``exports_dir``, written by the VDSA during recovery) filled with random, mutated and
hostile files (tests/control_fuzz.py), applied by SIGHUP or by the tap's own watch of the
directory; then hvds-tap started on random files.

While running: after every change the tap is up, answers NBD (its export list), applies the
change or refuses it with one log line, and never serves a disk its (accepted) detached list
names. Afterwards, with the good files back: it serves exactly its disk, byte for byte, takes
writes, and logged no traceback. A start on a bad file ends with status 2 and one line saying
what is wrong (no traceback), within a few seconds, or the tap starts.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import time
import tomllib
from pathlib import Path

import tomli_w
from control_fuzz import drop_in, mutate_toml
from fuzzing import Figures, RandomChooser, examples, seed
from harness import BIN, Lab, make_image, qemu_io

from hvds.vdsa.config import VdsaConfig
from hvds.vdsa.heartbeat import _exports

MiB = 1024 * 1024
RELOADED = ("exports reloaded", "reload refused")


def served(lab: Lab) -> set[str]:
    """The export names the tap offers now (NBD LIST), within a few seconds or it hangs."""
    result = subprocess.run(
        ["nbdinfo", "--list", "--json", f"nbd+unix://?socket={lab.tap_socket}"],
        capture_output=True, text=True, timeout=10, check=True,
        env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    return {export["export-name"] for export in json.loads(result.stdout)["exports"]}


def reloads(log: Path) -> list[str]:
    return [line for line in log.read_text(errors="replace").splitlines()
            if any(word in line for word in RELOADED)]  # fmt: skip


def detached_names(exports_dir: Path) -> set[str]:
    """What the detached list says, read independently of the tap; empty if it does not parse
    (then the tap refuses the reload and keeps what it served)."""
    try:
        data = tomllib.loads((exports_dir / "detached.toml").read_text())
        names = data.get("detached", [])
        return {n for n in names if isinstance(n, str)} if isinstance(names, list) else set()
    except (OSError, ValueError):
        return set()


def test_the_tap_survives_random_configuration_files(lab: Lab, tmp_path: Path) -> None:
    base = lab.add_disk("base", MiB)
    pattern = random.Random(7).randbytes(MiB)
    base.write_bytes(pattern)
    exports_dir = lab.root / "exports.d"
    exports_dir.mkdir()
    images = [str(lab.add_disk(f"img{n}", 64 * 1024)) for n in range(3)]
    del lab.exports["img0"], lab.exports["img1"], lab.exports["img2"]  # drop-ins may name them
    (tmp_path / "a-directory").mkdir()
    os.mkfifo(tmp_path / "a-fifo")  # opened read-only, it would wait for a writer
    lab.start_sink(discard=True)
    lab.start_tap(vdsa_socket=str(lab.vdsa_socket), exports_dir=str(exports_dir))
    assert lab.tap is not None and lab.tap.proc is not None
    good = lab.config_path.read_bytes()
    log = lab.root / "tap.log"
    vdsa_config = VdsaConfig.model_validate({"vdsa": {"id": "h1", "tap_config": lab.config_path}})
    run_seed = seed()
    rng = random.Random(run_seed)
    c = RandomChooser(rng)
    figures = Figures("tap.configuration", seed=run_seed)
    outcomes = {"applied": 0, "refused": 0}
    files = [*(f"d{n}.toml" for n in range(4)), "detached.toml"]
    for n in range(examples(150)):
        written = 0
        before = len(reloads(log))  # before the change: the watch may see it at once
        if c.chance(0.4):  # a fresh start now and then, so that changes get applied too
            for path in exports_dir.glob("*.toml"):
                path.unlink()
            lab.config_path.write_bytes(good)
        own_file = c.chance(0.25)
        if own_file:  # the tap's own file
            data = good if c.chance(0.3) else mutate_toml(c, good)
            lab.config_path.write_bytes(data)
            written += len(data)
        else:
            for name in rng.sample(files, c.integer(1, 3)):
                path = exports_dir / name
                if c.chance(0.2) and path.exists():
                    path.unlink()
                    continue
                data = drop_in(c, ["base", "img0", "img1", "fuzz-0"],
                               [*images, *(str(tmp_path / n) for n in ("a-directory", "a-fifo"))],
                               tmp_path)  # fmt: skip
                path.write_bytes(data)
                written += len(data)
        # A reload after the whole change: the one SIGHUP asks for, or the watch's (it looks
        # every second; one it made in the middle of the change is followed by another).
        signalled = own_file or written == 0 or c.chance(0.85)
        if signalled:
            before = len(reloads(log))
            lab.tap.proc.send_signal(signal.SIGHUP)
        timeout = 5.0
        deadline = time.monotonic() + timeout
        while len(reloads(log)) == before and time.monotonic() < deadline:
            time.sleep(0.02)
        assert lab.tap.proc.poll() is None, f"the tap died at input {n} (seed {run_seed})"
        assert len(reloads(log)) > before, (
            f"no reload logged within {timeout} s at input {n} (seed {run_seed})"
        )
        if not signalled:
            time.sleep(1.2)
        done = reloads(log)
        now = served(lab)  # it answers NBD
        # The VDSA reads the same files for its heartbeats (the host's disks): never an error
        # out of it, which would end its heartbeats (the host would look down for good).
        assert isinstance(_exports(vdsa_config), list)
        if "exports reloaded" in done[-1]:
            outcomes["applied"] += 1
            assert not now & detached_names(exports_dir), (now, done[-1])
        else:
            outcomes["refused"] += 1
        figures.add(written)

    # The good files back: exactly its disk, byte for byte, and writes taken.
    lab.config_path.write_bytes(good)
    for path in exports_dir.glob("*.toml"):
        path.unlink()
    before = len(reloads(log))
    lab.tap.proc.send_signal(signal.SIGHUP)
    lab.wait_for(lambda: len(reloads(log)) > before, 5, "the last reload")
    assert "exports reloaded" in reloads(log)[-1]
    assert served(lab) == {"base"}
    copy = tmp_path / "copy.raw"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", lab.uri("base"), str(copy)],
                   check=True)  # fmt: skip
    assert copy.read_bytes() == pattern
    qemu_io(lab.uri("base"), "write -P 0x5a 0 64k")
    text = log.read_text(errors="replace")
    for bad in ("Traceback", "Unhandled exception", "exception was never retrieved",
                "Exception in callback"):  # fmt: skip
        assert bad not in text, text[max(0, text.index(bad) - 3000) : text.index(bad) + 3000]
    figures.extra.update(outcomes)
    figures.report()


def test_the_tap_starts_or_says_why_on_random_configuration_files(tmp_path: Path) -> None:
    """hvds-tap started on a random file and drop-in: it serves, or it ends with status 2 and a
    last line that says what is wrong (no traceback)."""
    base = make_image(tmp_path / "base.raw", MiB)
    images = [str(make_image(tmp_path / f"img{n}.raw", 64 * 1024)) for n in range(2)]
    os.mkfifo(tmp_path / "a-fifo")
    run_seed = seed()
    c = RandomChooser(random.Random(run_seed))
    figures = Figures("tap.start", seed=run_seed)
    started = refused_at_start = 0
    for n in range(examples(12)):
        root = tmp_path / f"start{n}"
        (root / "exports.d").mkdir(parents=True)
        config = root / "tap.toml"
        text_config = tomli_w.dumps({
            "tap": {"unix_socket": str(root / "tap.sock"), "state_dir": str(root / "state"),
                    "exports_dir": str(root / "exports.d")},
            "export": [{"name": "base", "path": str(base)}],
        }).encode()  # fmt: skip
        config.write_bytes(mutate_toml(c, text_config) if c.chance(0.6) else text_config)
        if c.chance(0.6):
            paths = [*images, "/nonexistent", str(tmp_path / "a-fifo")]
            drop = drop_in(c, ["base", "img0"], paths, tmp_path)
            (root / "exports.d" / "d0.toml").write_bytes(drop)
        # stderr to a file: a message larger than a pipe holds would block the tap's exit.
        stderr = (root / "stderr").open("w+b")
        # In tmp_path: a random file may name relative paths, which must not land in the checkout.
        proc = subprocess.Popen([str(BIN / "hvds-tap"), "--config", str(config)],
                                stdout=subprocess.PIPE, stderr=stderr, cwd=tmp_path)  # fmt: skip
        assert proc.stdout is not None
        # Its first line says it is ready; an end of output, that it gave up.
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, f"hvds-tap neither started nor gave up within 30 s (seed {run_seed})"
        if proc.stdout.readline().startswith(b"hvds-tap ready"):
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=10)
            started += 1
        else:
            proc.communicate(timeout=10)
            err = (root / "stderr").read_bytes()
            message = err.decode(errors="replace")
            assert len(err) < 8192, f"a message of {len(err)} bytes"
            assert b"Traceback" not in err, message
            assert proc.returncode == 2, (proc.returncode, message)
            assert message.splitlines()[-1].startswith("hvds-tap: "), message  # says why
            refused_at_start += 1
        stderr.close()
        figures.add(config.stat().st_size)
    figures.extra.update(started=started, refused_at_start=refused_at_start)
    figures.report()


def test_what_the_configuration_fuzz_found(lab: Lab, tmp_path: Path) -> None:
    """Each bug the fuzz found, made deterministic (each failed on the code before the fix)."""
    lab.add_disk("base", MiB)
    exports_dir = lab.root / "exports.d"
    exports_dir.mkdir()
    lab.start_sink(discard=True)
    lab.start_tap(vdsa_socket=str(lab.vdsa_socket), exports_dir=str(exports_dir))
    assert lab.tap is not None and lab.tap.proc is not None
    log = lab.root / "tap.log"

    def change(name: str, content: bytes, signalled: bool = True) -> str:
        """Write a drop-in, let the tap see it (SIGHUP, or its own watch); its last word."""
        before = len(reloads(log))
        (exports_dir / name).write_bytes(content)
        if signalled:
            assert lab.tap is not None and lab.tap.proc is not None
            lab.tap.proc.send_signal(signal.SIGHUP)
        lab.wait_for(lambda: len(reloads(log)) > before, 5, f"the tap to take {name}")
        return reloads(log)[-1]

    # A drop-in not in UTF-8 raised out of the reload: the watch of exports_dir died with it
    # (no drop-in was ever applied again) and SIGHUP logged a traceback.
    assert "not UTF-8" in change("bad.toml", b"\xff\xfe", signalled=False)
    (exports_dir / "bad.toml").unlink()
    image = make_image(tmp_path / "one.raw", MiB)
    one = f'[[export]]\nname = "one"\npath = "{image}"\n'.encode()
    assert "exports reloaded: 2 served" in change("one.toml", one, signalled=False)
    assert "not UTF-8" in change("bad.toml", b"\xff\xfe")
    (exports_dir / "bad.toml").unlink()
    # Nested too deep for tomllib: RecursionError, out of the reload.
    assert "nested too deep" in change("deep.toml", b"a = " + b"[" * 3000 + b"]" * 3000)
    (exports_dir / "deep.toml").unlink()
    # A FIFO as a read-only disk: opening it waited for a writer, the tap's loop with it.
    os.mkfifo(tmp_path / "fifo")
    fifo = f'[[export]]\nname = "f"\npath = "{tmp_path / "fifo"}"\nread_only = true\n'.encode()
    assert "exports reloaded: 2 served" in change("fifo.toml", fifo)
    assert "export f not added" in log.read_text()
    # /dev/null was served as a disk of size 0; removing it failed its fdatasync (EINVAL)
    # out of the reload, which stopped half-way.
    null = b'[[export]]\nname = "null"\npath = "/dev/null"\n'
    assert "exports reloaded: 2 served" in change("null.toml", null)
    assert served(lab) == {"base", "one"}
    # A NUL in a path raised ValueError out of the VDSA's heartbeat reader of these files
    # (its heartbeats ended) and out of the tap's reload.
    nul = b'[[export]]\nname = "nul"\npath = "/x\\u0000y"\n'
    assert "exports reloaded: 2 served" in change("nul.toml", nul)
    vdsa = VdsaConfig.model_validate({"vdsa": {"id": "h1", "tap_config": lab.config_path}})
    reported = {e["name"] for e in _exports(vdsa)}  # raised ValueError
    assert {"base", "one"} <= reported and "nul" not in reported
    (exports_dir / "nul.toml").unlink()
    # A [tap] change is not applied by a reload, but its exports_dir was: the tap then
    # watched, read and reported another directory, and missed the VDSA's drop-ins.
    good = lab.config_path.read_text()
    lab.config_path.write_text(good.replace(str(exports_dir), str(tmp_path / "elsewhere")))
    before = len(reloads(log))
    lab.tap.proc.send_signal(signal.SIGHUP)
    lab.wait_for(lambda: len(reloads(log)) > before, 5, "the reload of the changed [tap]")
    assert "need a restart" in log.read_text()
    assert "exports reloaded: 2 served" in change("fifo.toml", b"", signalled=False)
    assert not (tmp_path / "elsewhere").exists()
    lab.config_path.write_text(good)
    # An export whose image is gone kept the tap from starting at all (every VM's disk).
    lab.stop()
    image.unlink()
    for name in ("fifo.toml", "null.toml"):
        (exports_dir / name).unlink()
    lab.start_tap(vdsa_socket=str(lab.vdsa_socket), exports_dir=str(exports_dir))
    assert served(lab) == {"base"}
    assert "export one not served" in log.read_text()
    text = log.read_text()
    assert "Traceback" not in text and "Exception in callback" not in text, text[-3000:]
