"""Exports added and removed at run time (SIGHUP) without dropping the other clients."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from harness import Lab, sha256_file

MiB = 1024 * 1024

# A client that writes, says so, waits for the test's go-ahead, then reads its write back.
LONG_LIVED_CLIENT = """
import os, time
h.pwrite(b"k" * 4096, 0)
open(os.environ["READY"], "w").close()
while not os.path.exists(os.environ["GO"]):
    time.sleep(0.02)
print(h.pread(4096, 0) == b"k" * 4096)
"""


def start_client(lab: Lab, export: str, tag: str) -> tuple[subprocess.Popen[str], Path, Path]:
    ready, go = lab.root / f"{tag}.ready", lab.root / f"{tag}.go"
    env = {"PATH": "/usr/bin:/bin", "READY": str(ready), "GO": str(go)}
    proc = subprocess.Popen(
        ["nbdsh", "-u", lab.uri(export), "-c", LONG_LIVED_CLIENT],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, ready, go


def exports_listed(lab: Lab) -> set[str]:
    out = subprocess.run(
        ["nbdinfo", "--json", "--list", f"nbd://127.0.0.1:{lab.tcp_port}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {e["export-name"] for e in json.loads(out)["exports"]}


def test_sighup_adds_and_removes_exports_keeping_other_clients(lab: Lab) -> None:
    lab.add_disk("keep", 8 * MiB)
    lab.add_disk("drop", 8 * MiB)
    lab.start_sink()
    tap = lab.start_tap()
    keeper, keeper_ready, keeper_go = start_client(lab, "keep", "keeper")
    dropped, dropped_ready, dropped_go = start_client(lab, "drop", "dropped")
    lab.wait_for(lambda: keeper_ready.exists() and dropped_ready.exists(), what="clients")

    del lab.exports["drop"]
    lab.add_disk("new", 4 * MiB)
    lab.write_config()
    assert tap.proc is not None
    tap.proc.send_signal(signal.SIGHUP)
    lab.wait_for(lambda: exports_listed(lab) == {"keep", "new"}, what="reload")

    keeper_go.touch()
    dropped_go.touch()
    assert keeper.communicate(timeout=30)[0].strip() == "True"
    assert keeper.returncode == 0
    dropped.communicate(timeout=30)
    assert dropped.returncode != 0, "a client of a removed export must be disconnected"

    subprocess.run(
        ["qemu-io", "-f", "raw", "-c", "write -P 7 0 1M", lab.uri("new")],
        check=True,
        capture_output=True,
    )
    lab.wait_for(lambda: lab.metric("hvds_tap_dirty_bytes", "new") == 0, what="acks")
    assert sha256_file(lab.replica("new")) == sha256_file(lab.exports["new"])
    assert sha256_file(lab.replica("keep")) == sha256_file(lab.exports["keep"])


def test_invalid_config_on_reload_keeps_serving(lab: Lab) -> None:
    lab.add_disk("disk0", 4 * MiB)
    tap = lab.start_tap()
    lab.config_path.write_text("[tap]\nunix_socket = 42\n")
    assert tap.proc is not None
    tap.proc.send_signal(signal.SIGHUP)
    lab.wait_for(
        lambda: "reload refused" in (lab.root / "tap.log").read_text(), what="refusal logged"
    )
    assert exports_listed(lab) == {"disk0"}


def test_invalid_config_at_start_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "tap.toml"
    config.write_text('[tap]\nstate_dir = "/tmp/x"\n[[export]]\nname = "a"\n')
    result = subprocess.run(
        ["hvds-tap", "--config", str(config)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert "set unix_socket, tcp or both" in result.stderr
    assert "export.0.path: Field required" in result.stderr
