"""Real hvds processes for the tests: start, wait until ready, stop (or kill -9)."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import tomli_w
from prometheus_client.parser import text_string_to_metric_families

BIN = Path(shutil.which("hvds-tap") or "hvds-tap").parent
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_ZEROES = bytes(1 << 20)


def sha256_file(path: Path) -> str:
    """sha256 of a whole image's content. Holes of a sparse file are hashed as the zeroes they
    read as, without reading them: the kernel's zero-filling of 4 GiB of holes costs far more
    than hashing."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                data_at = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                data_at = size
            while pos < data_at:
                n = min(len(_ZEROES), data_at - pos)
                digest.update(memoryview(_ZEROES)[:n])
                pos += n
            if pos >= size:
                break
            hole_at = os.lseek(fd, pos, os.SEEK_HOLE)
            while pos < hole_at:
                chunk = os.pread(fd, min(1 << 20, hole_at - pos), pos)
                digest.update(chunk)
                pos += len(chunk)
    return digest.hexdigest()


def scrape(port: int, name: str, **labels: str) -> float:
    """The sample ``name{labels}`` of the Prometheus endpoint on a loopback port."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise KeyError(f"{name}{labels}")


def in_netns(netns: str, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``call(*args, **kwargs)`` in a thread that joined network namespace ``netns`` (the
    sockets it opens are that namespace's): scrape a process's metrics on its loopback, run a
    proxy there. The caller's own thread stays where it is."""
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if ctypes.CDLL(None, use_errno=True).setns(fd, _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {netns}")
            finally:
                os.close(fd)
            result.append(call(*args, **kwargs))
        except BaseException as exc:  # handed to the caller
            error.append(exc)

    thread = threading.Thread(target=run, name=f"netns-{netns}", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


_CLONE_NEWNET = 0x40000000


def wait_for(predicate: object, timeout: float = 20, what: str = "condition") -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def qemu_io(target: str | Path, *commands: str) -> str:
    """Run qemu-io commands against an NBD URI or an image file; their output."""
    argv = ["qemu-io", "-f", "raw", *[a for c in commands for a in ("-c", c)], str(target)]
    result = subprocess.run(argv, capture_output=True, text=True, check=True)
    return result.stdout + result.stderr


def readable(uri: str) -> bool:
    """Whether the export at ``uri`` is served (a read of its first block succeeds)."""
    result = subprocess.run(["qemu-io", "-f", "raw", "-c", "read 0 4k", uri],
                            capture_output=True, check=False)  # fmt: skip
    return result.returncode == 0


def write_random(target: str, offset: int, length: int, scratch: Path) -> None:
    """Incompressible data, so that what crosses the wire is what changed."""
    pattern = scratch / f"random-{offset}-{length}"
    pattern.write_bytes(os.urandom(length))
    qemu_io(target, f"write -s {pattern} {offset} {length}")


def make_image(path: Path, size: int) -> Path:
    with path.open("wb") as f:
        f.truncate(size)
    return path


@dataclass
class Service:
    """A long-running hvds process that prints '<name> ready' once it listens."""

    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15) -> Service:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv, stdout=subprocess.PIPE, stderr=log, start_new_session=True
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if b"ready" in line or not line:
                break
        if b"ready" not in line:
            self.kill()
            raise RuntimeError(f"{self.argv[0]} did not start:\n{self.log_path.read_text()}")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


@dataclass
class Lab:
    """One host's data path in a directory: disks, a tap, and the VDSA sink."""

    root: Path
    exports: dict[str, Path] = field(default_factory=dict)
    tcp_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    tap: Service | None = None
    sink: Service | None = None

    @property
    def tap_socket(self) -> Path:
        return self.root / "tap.sock"

    @property
    def vdsa_socket(self) -> Path:
        return self.root / "vdsa.sock"

    @property
    def replica_dir(self) -> Path:
        return self.root / "replica"

    @property
    def record(self) -> Path:
        return self.root / "copies.jsonl"

    @property
    def config_path(self) -> Path:
        return self.root / "tap.toml"

    def uri(self, export: str, tcp: bool = False) -> str:
        if tcp:
            return f"nbd://127.0.0.1:{self.tcp_port}/{export}"
        return f"nbd+unix:///{export}?socket={self.tap_socket}"

    def add_disk(self, name: str, size: int) -> Path:
        self.exports[name] = make_image(self.root / f"{name}.raw", size)
        return self.exports[name]

    def write_config(self, **tap_settings: object) -> None:
        settings = {
            "unix_socket": str(self.tap_socket),
            "tcp": f"127.0.0.1:{self.tcp_port}",
            "vdsa_socket": str(self.vdsa_socket),
            "state_dir": str(self.root / "state"),
            "metrics": f"127.0.0.1:{self.metrics_port}",
            "tap_id": self.root.name,
            **tap_settings,
        }
        exports = [{"name": name, "path": str(path)} for name, path in self.exports.items()]
        self.config_path.write_text(tomli_w.dumps({"tap": settings, "export": exports}))

    def start_tap(self, **tap_settings: object) -> Service:
        self.write_config(**tap_settings)
        self.tap = Service(
            [str(BIN / "hvds-tap"), "--config", str(self.config_path)], self.root / "tap.log"
        ).start()
        return self.tap

    def start_sink(self, discard: bool = False) -> Service:
        argv = [str(BIN / "hvds-vdsa"), "sink", "--listen", str(self.vdsa_socket)]
        argv += ["--discard"] if discard else ["--dir", str(self.replica_dir)]
        argv += ["--record", str(self.record)]
        self.sink = Service(argv, self.root / "vdsa.log").start()
        return self.sink

    def replica(self, export: str) -> Path:
        return self.replica_dir / f"{export}.img"

    def copies(self) -> list[dict[str, object]]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines()]

    def metric(self, name: str, export: str | None = None, op: str | None = None) -> float:
        """One sample of the tap's Prometheus endpoint."""
        labels = {key: value for key, value in (("export", export), ("op", op)) if value}
        return scrape(self.metrics_port, name, **labels)

    def wait_for(self, predicate: object, timeout: float = 20, what: str = "condition") -> None:
        wait_for(predicate, timeout, what)

    def stop(self) -> None:
        for service in (self.tap, self.sink):
            if service is not None and service.proc is not None and service.proc.poll() is None:
                service.resume()  # a paused process cannot act on SIGTERM
                service.stop()


@dataclass
class Vdsa:
    """An hvds-vdsa process (source and/or target role) configured in its own directory."""

    root: Path
    name: str
    tls: Any  # pki.TlsFiles
    listen_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    source_vpgs: list[dict[str, Any]] = field(default_factory=list)
    target_vpgs: list[dict[str, Any]] = field(default_factory=list)
    service: Service | None = None
    # Listen as a target even without target_vpgs in its file (a manager may send some).
    target_role: bool = False
    # More [vdsa] settings, and more sections ([manager], [[datastore]]).
    settings: dict[str, Any] = field(default_factory=dict)
    sections: dict[str, Any] = field(default_factory=dict)
    # Run in this network namespace (``ip netns exec``); its metrics are scraped from there.
    netns: str | None = None

    @property
    def tap_socket(self) -> Path:
        return self.root / "vdsa.sock"

    @property
    def control_socket(self) -> Path:
        return self.root / "control.sock"

    @property
    def view_socket(self) -> Path:
        return self.root / "views.sock"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.listen_port}"

    def mirror(self, disk_name: str) -> Path:
        return self.root / "mirrors" / f"{disk_name}.raw"

    def replicate_here(self, vpg: str, disks: dict[int, tuple[str, int]], **options: Any) -> None:
        """Make this VDSA a target of ``vpg``: disks by id, as (name, size)."""
        self.target_vpgs.append({
            "name": vpg,
            "disks": [
                {"disk": disk_id, "name": name, "size": size, "mirror": str(self.mirror(name))}
                for disk_id, (name, size) in disks.items()
            ],
            **options,
        })  # fmt: skip

    def protect(
        self, vpg: str, exports: dict[str, int], targets: list[tuple[str, str]], **options: Any
    ) -> None:
        """Make this VDSA the source of ``vpg``: its tap's exports by disk id, to targets given
        as (address, server name)."""
        self.source_vpgs.append({
            "name": vpg,
            "disks": [{"export": export, "disk": disk} for export, disk in exports.items()],
            "targets": [{"address": address, "server_name": name} for address, name in targets],
            **options,
        })  # fmt: skip

    def start(self) -> Service:
        settings: dict[str, Any] = {
            "id": self.name,
            "tap_socket": str(self.tap_socket),
            "control_socket": str(self.control_socket),
            "metrics": f"127.0.0.1:{self.metrics_port}",
        }
        if self.target_vpgs or self.target_role:
            settings["listen"] = self.address
            settings["journal_dir"] = str(self.root / "journal")
            settings["view_socket"] = str(self.view_socket)
        config: dict[str, Any] = {
            "vdsa": settings,
            "tls": {"ca": str(self.tls.ca), "cert": str(self.tls.cert), "key": str(self.tls.key)},
            "source_vpg": self.source_vpgs,
            "target_vpg": self.target_vpgs,
            **self.sections,
        }
        settings.update(self.settings)
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / "vdsa.toml"
        path.write_text(tomli_w.dumps(config))
        argv = [str(BIN / "hvds-vdsa"), "run", "--config", str(path)]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        self.service = Service(argv, self.root / "vdsa.log").start()
        return self.service

    def control(self, **message: Any) -> dict[str, Any]:
        from hvds.vdsa.control import request  # noqa: PLC0415

        answer = request(self.control_socket, message)
        assert answer["ok"], answer
        return answer

    def status(self) -> dict[str, Any]:
        return self.control(op="status")

    def metric(self, name: str, **labels: str) -> float:
        if self.netns:
            return in_netns(self.netns, scrape, self.metrics_port, name, **labels)
        return scrape(self.metrics_port, name, **labels)

    def stop(self) -> None:
        if self.service is not None and self.service.proc and self.service.proc.poll() is None:
            self.service.resume()
            self.service.stop()


class TcpProxy:
    """A TCP relay on loopback whose link can be cut and restored, as a WAN link would be."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self._target_port = target_port
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._up = True
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._up:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self._target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(1 << 16):
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Drop every connection and refuse new ones until restore()."""
        self._up = False
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for s in pair:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def restore(self) -> None:
        self._up = True

    def close(self) -> None:
        self.cut()
        self._listener.close()


@dataclass
class Manager:
    """An hvds-manager process (the site manager) with TLS, configured in its own directory."""

    root: Path
    site: str
    tls: Any  # pki.TlsFiles, its certificate good for 127.0.0.1
    port: int = field(default_factory=free_port)
    service: Service | None = None
    # Run in this network namespace, reached (by its peer too) at ``address``: its
    # certificate must name it.
    netns: str | None = None
    address: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"https://{self.address}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.root / "manager.toml"

    def write_config(self, **settings: Any) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        config = {
            "manager": {
                "site": self.site,
                "listen": f"{'0.0.0.0' if self.netns else '127.0.0.1'}:{self.port}",
                "url": self.url,
                "state_dir": str(self.root / "state"),
                "host_timeout": 5.0,
                "watch_interval": 0.5,
                **settings,
            },
            "tls": {"cert": str(self.tls.cert), "key": str(self.tls.key), "ca": str(self.tls.ca)},
        }
        self.config_path.write_text(tomli_w.dumps(config))

    def token(self, name: str, role: str) -> str:
        if not self.config_path.exists():
            self.write_config()
        argv = [str(BIN / "hvds-manager"), "token", "--config", str(self.config_path)]
        argv += ["--name", name, "--role", role]
        return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()

    def start(self) -> Service:
        if not self.config_path.exists():
            self.write_config()
        argv = [str(BIN / "hvds-manager"), "run", "--config", str(self.config_path)]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        self.service = Service(argv, self.root / "manager.log").start()
        wait_for(self._answers, what=f"{self.site}'s manager to answer")
        return self.service

    def _answers(self) -> bool:
        try:
            return self.api("GET", "/site", "").status_code == 401
        except OSError:
            return False

    def api(self, method: str, path: str, token: str, json: Any = None) -> Any:
        """One API call; returns the httpx response."""
        import httpx  # noqa: PLC0415 - only the manager's tests need it

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        call = partial(
            httpx.request, method, f"{self.url}/api/v1{path}", json=json, headers=headers,
            verify=ssl.create_default_context(cafile=str(self.tls.ca)), timeout=60,
        )  # fmt: skip
        try:
            return in_netns(self.netns, call) if self.netns else call()
        except httpx.TransportError as exc:
            raise OSError(str(exc)) from exc

    def metrics(self) -> str:
        """Its Prometheus text (/metrics, over TLS)."""
        import httpx  # noqa: PLC0415

        call = partial(httpx.get, f"{self.url}/metrics", timeout=30,
                       verify=ssl.create_default_context(cafile=str(self.tls.ca)))  # fmt: skip
        response = in_netns(self.netns, call) if self.netns else call()
        response.raise_for_status()
        text: str = response.text
        return text

    def metric(self, name: str, **labels: str) -> float | None:
        """One sample of its /metrics; None if it has none."""
        for family in text_string_to_metric_families(self.metrics()):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        return None

    def ok(self, method: str, path: str, token: str, json: Any = None) -> Any:
        """One API call that must succeed; returns its JSON."""
        response = self.api(method, path, token, json)
        assert response.status_code < 300, (method, path, response.status_code, response.text)
        return None if response.status_code == 204 else response.json()

    def wait_command(self, command: dict[str, Any], token: str, timeout: float = 60) -> Any:
        """Until the tracked command ends; returns it (it must have succeeded)."""
        path = f"/commands/{command['id']}"
        wait_for(lambda: self.ok("GET", path, token)["status"] not in ("queued", "running"),
                 timeout, f"command {command['kind']}")  # fmt: skip
        ended = self.ok("GET", path, token)
        assert ended["status"] == "succeeded", ended
        return ended

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()
