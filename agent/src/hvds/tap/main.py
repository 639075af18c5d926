"""hvds-tap: serves each VM disk over NBD and hands a copy of every write to the host's VDSA.

    hvds-tap --config /etc/hvds/tap.toml

SIGHUP re-reads the configuration: new exports are served, removed ones are closed (their
clients only), and every other client keeps its connection. SIGTERM and SIGINT stop the tap after
syncing the bitmaps and the disks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path

import uvloop
from prometheus_client import REGISTRY, start_http_server

from hvds import logfile
from hvds.files import write_atomic
from hvds.settings import ConfigError
from hvds.tap.config import SERVED_FILE, TapConfig, load_config, served_exports
from hvds.tap.connection import NbdClient
from hvds.tap.exports import ExportRegistry
from hvds.tap.link import VdsaLink
from hvds.tap.metrics import TapCollector

log = logging.getLogger("hvds.tap")


class TapServer:
    def __init__(self, config_path: Path, config: TapConfig) -> None:
        self.config_path = config_path
        self.config = config
        settings = config.tap
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        self.registry = ExportRegistry(settings.state_dir, settings.bitmap_block_size)
        tap_id = settings.tap_id or socket.gethostname()
        self.link = VdsaLink(settings.vdsa_socket, tap_id, settings.link_buffer_bytes)
        self._servers: list[asyncio.Server] = []
        # The drop-ins as they were when last read: the watch reloads when they differ. Taken
        # before reading them, so that a file written meanwhile is seen as a change (taken
        # by the watch's first look, it was missed when written as the tap started).
        self._loaded: list[tuple[str, int, int]] = []

    async def start(self) -> None:
        self._loaded = self._drop_ins_now()
        for export in served_exports(self.config):
            try:
                self.registry.add(export)
            except (OSError, ValueError) as exc:
                # One disk whose image is gone must not keep the host's other VMs from theirs.
                log.error("export %s not served: %s", export.name, exc)
        self._report_served()
        settings = self.config.tap
        loop = asyncio.get_running_loop()

        def factory() -> NbdClient:
            return NbdClient(self.registry, self.link)

        if settings.unix_socket is not None:
            settings.unix_socket.parent.mkdir(parents=True, exist_ok=True)
            settings.unix_socket.unlink(missing_ok=True)
            server = await loop.create_unix_server(factory, str(settings.unix_socket))
            os.chmod(settings.unix_socket, 0o660)
            self._servers.append(server)
            log.info("serving NBD on unix socket %s", settings.unix_socket)
        if settings.tcp is not None:
            server = await loop.create_server(
                factory, settings.tcp.host, settings.tcp.port, reuse_address=True
            )
            self._servers.append(server)
            log.info("serving NBD on %s:%d", settings.tcp.host, settings.tcp.port)
        if settings.metrics is not None:
            REGISTRY.register(TapCollector(lambda: self.registry, self.link.stats))
            start_http_server(settings.metrics.port, settings.metrics.host)
            log.info(
                "metrics on http://%s:%d/metrics", settings.metrics.host, settings.metrics.port
            )
        self.link.start(self.registry)

    def reload(self) -> None:
        """Apply the exports of the configuration file as it is now."""
        self._loaded = self._drop_ins_now()
        try:
            config = load_config(self.config_path)
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            return
        if config.tap != self.config.tap:
            log.warning("reload applies exports only; [tap] changes need a restart")
            # The running [tap] stays, exports_dir with it: taking the file's made the tap
            # watch, read and report another directory than the one it had started with.
            config = config.model_copy(update={"tap": self.config.tap})
        try:
            wanted = {e.name: e for e in served_exports(config)}
        except ConfigError as exc:
            log.error("reload refused, keeping the running exports: %s", exc)
            return
        for export in self.registry:
            if wanted.get(export.name) != export.config:
                self.registry.remove(export.name)
        for name, export_config in wanted.items():
            if self.registry.get(name) is None:
                try:
                    added = self.registry.add(export_config)
                except (OSError, ValueError) as exc:  # ValueError: a NUL in its path
                    log.error("export %s not added: %s", name, exc)
                    continue
                self.link.announce(added)
        self.config = config
        self._report_served()
        log.info("exports reloaded: %d served", len(list(self.registry)))

    def _drop_ins_now(self) -> list[tuple[str, int, int]]:
        return _signature(self.config.tap.exports_dir)

    def reload_safely(self) -> None:
        """reload(), for SIGHUP and the watch of exports_dir: a bug is logged whole, and the
        tap (and its watch) go on with what they serve."""
        try:
            self.reload()
        except Exception:
            log.exception("reload failed, keeping the running exports")

    def _report_served(self) -> None:
        """Say which exports are served now, in exports_dir: the VDSA waits on it to know that
        a disk it detached is no longer written, or one it published can be used."""
        directory = self.config.tap.exports_dir
        if directory is not None:
            served = json.dumps({"exports": sorted(e.name for e in self.registry)})
            write_atomic(directory / SERVED_FILE, served.encode(), mode=0o644)

    async def watch_exports_dir(self) -> None:
        """Reload when a drop-in file of exports_dir changes (the VDSA writes them)."""
        directory = self.config.tap.exports_dir
        if directory is None:
            return
        while True:
            await asyncio.sleep(1)
            if self._drop_ins_now() != self._loaded:
                log.info("%s changed: reloading the exports", directory)
                self.reload_safely()

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        await self.link.stop()
        for export in self.registry:
            self.registry.remove(export.name)


def _signature(directory: Path | None) -> list[tuple[str, int, int]]:
    if directory is None:
        return []
    try:
        return sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size)
                      for p in directory.glob("*.toml"))  # fmt: skip
    except OSError:
        return []


async def serve(config_path: Path, config: TapConfig) -> None:
    server = TapServer(config_path, config)
    await server.start()
    watcher = asyncio.create_task(server.watch_exports_dir())
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, server.reload_safely)
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, stopping.set)
    print("hvds-tap ready", flush=True)
    await stopping.wait()
    log.info("stopping")
    watcher.cancel()
    await server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hvds-tap", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="TOML configuration file")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    args = parser.parse_args(argv)
    logfile.setup(args.log_level)
    try:
        config = load_config(args.config)
        served_exports(config)  # the drop-ins too: refuse to start on a bad one
        if config.tap.log_file is not None:
            logfile.also_to(config.tap.log_file)
    except ConfigError as exc:
        print(f"hvds-tap: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"hvds-tap: log_file: {exc}", file=sys.stderr)
        return 2
    try:
        uvloop.run(serve(args.config, config))
    except OSError as exc:
        print(f"hvds-tap: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
