"""hvds-vdsa: the virtual data services appliance of a host.

    hvds-vdsa run --config /etc/hvds/vdsa.toml      # source and target roles
    hvds-vdsa checkpoint --control SOCK --vpg NAME [--tag T] [--description D]
    hvds-vdsa coordinate --control SOCK [--control SOCK...] --vpg NAME [--every SECONDS]
    hvds-vdsa checkpoints --control SOCK --vpg NAME
    hvds-vdsa status --control SOCK
    hvds-vdsa analyze IMAGE                          # partitions, file systems, OS
    hvds-vdsa pki --dir DIR NAME...                  # a CA and certificates for a lab
    hvds-vdsa sink --listen SOCK (--dir DIR | --discard) [--record FILE]

``sink`` applies every copy a tap sends, in order, to an image per export: a stand-in VDSA for
testing and benchmarking the tap alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

import uvloop
from prometheus_client import REGISTRY, start_http_server

from hvds import logfile
from hvds.analyzer.cli import main as analyzer_main
from hvds.pki import CertificateAuthority
from hvds.settings import ConfigError
from hvds.vdsa.config import VdsaConfig, load_config, load_managed
from hvds.vdsa.control import request
from hvds.vdsa.coordinator import coordinated_checkpoint
from hvds.vdsa.heartbeat import keep_heartbeating
from hvds.vdsa.image_sink import ImageSink
from hvds.vdsa.metrics import VdsaCollector
from hvds.vdsa.receiver import serve_taps
from hvds.vdsa.service import VdsaService, recovered_vms
from hvds.vdsa.views import Views

log = logging.getLogger("hvds.vdsa")


async def run_sink(listen: Path, directory: Path | None, record: Path | None) -> None:
    sink = ImageSink(directory, record)
    loop = asyncio.get_running_loop()
    server = await serve_taps(sink, str(listen))
    stopping = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, stopping.set)
    log.info("taking copies on %s into %s", listen, directory)
    print("hvds-vdsa ready", flush=True)
    await stopping.wait()
    server.close()
    sink.flush_record()


async def run_service(config: VdsaConfig) -> None:
    """Run the roles; restart them (in this process) whenever the manager pushes new VPGs."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, stopping.set)
    vms = recovered_vms(config)  # they and their views run on across restarts of the roles
    views = Views()
    service = VdsaService(config, load_managed(config.vdsa.managed_config), vms, views)
    # Both read the service of the moment (late-bound): a reconfiguration replaces it.
    if config.vdsa.metrics is not None:
        REGISTRY.register(VdsaCollector(lambda: service))
        start_http_server(config.vdsa.metrics.port, config.vdsa.metrics.host)
    heartbeat = None
    if config.manager is not None:
        heartbeat = asyncio.create_task(keep_heartbeating(config, lambda: service.status()))  # noqa: PLW0108
    await service.start()
    print("hvds-vdsa ready", flush=True)
    while True:
        stop = asyncio.create_task(stopping.wait())
        reconfigure = asyncio.create_task(service.reconfigured.wait())
        await asyncio.wait({stop, reconfigure}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        reconfigure.cancel()
        await service.stop()
        if stopping.is_set():
            break
        service = VdsaService(config, load_managed(config.vdsa.managed_config), vms, views)
        await service.start()
        log.info("roles restarted with the manager's VPGs")
    if heartbeat is not None:
        heartbeat.cancel()
    await vms.stop_all()
    views.close_all()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hvds-vdsa", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the VDSA (source and target roles)")
    run.add_argument("--config", type=Path, required=True, help="TOML configuration file")
    checkpoint = commands.add_parser("checkpoint", help="take a checkpoint of a VPG now")
    checkpoint.add_argument("--control", type=Path, required=True, help="control socket")
    checkpoint.add_argument("--vpg", required=True)
    checkpoint.add_argument("--tag", default="")
    checkpoint.add_argument("--description", default="")
    coordinate = commands.add_parser(
        "coordinate", help="take checkpoints of a VPG spread over hosts (the barrier)"
    )
    coordinate.add_argument(
        "--control", type=Path, action="append", required=True, help="each source VDSA's socket"
    )
    coordinate.add_argument("--vpg", required=True)
    coordinate.add_argument("--tag", default="")
    coordinate.add_argument("--description", default="")
    coordinate.add_argument("--every", type=float, help="keep taking one every N seconds")
    listing = commands.add_parser("checkpoints", help="list a replicated VPG's checkpoints")
    listing.add_argument("--control", type=Path, required=True, help="control socket")
    listing.add_argument("--vpg", required=True)
    status = commands.add_parser("status", help="print the VDSA's state as JSON")
    status.add_argument("--control", type=Path, required=True, help="control socket")
    commands.add_parser("analyze", help="report partitions, file systems and OS of an image")
    pki = commands.add_parser("pki", help="make a CA (if missing) and certificates for VDSAs")
    pki.add_argument("--dir", type=Path, required=True, help="where ca.pem and the certs live")
    pki.add_argument("names", nargs="+", help="VDSA names (the server_name peers expect)")
    sink = commands.add_parser("sink", help="apply every copy to an image per export")
    sink.add_argument("--listen", type=Path, required=True, help="unix socket for the taps")
    where = sink.add_mutually_exclusive_group(required=True)
    where.add_argument("--dir", type=Path, help="directory of the replica images")
    where.add_argument(
        "--discard", action="store_true", help="check and acknowledge copies, keep no replica"
    )
    sink.add_argument("--record", type=Path, help="append a JSON line per frame to this file")
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == ["analyze"]:
        return analyzer_main(arguments[1:])  # its own options: hvds-vdsa analyze --help
    parser = _parser()
    args = parser.parse_args(arguments)
    logfile.setup(args.log_level)
    if args.command == "checkpoint":
        message = {
            "op": "checkpoint",
            "vpg": args.vpg,
            "tag": args.tag,
            "description": args.description,
        }
        return _print_answer(request(args.control, message))
    if args.command == "coordinate":
        return _coordinate(args)
    if args.command == "checkpoints":
        return _print_answer(request(args.control, {"op": "checkpoints", "vpg": args.vpg}))
    if args.command == "status":
        return _print_answer(request(args.control, {"op": "status"}))
    if args.command == "pki":
        authority = CertificateAuthority(args.dir)
        for name in args.names:
            files = authority.issue(name)
            print(f"{name}: cert {files.cert}, key {files.key}, ca {files.ca}")
        return 0
    if args.command == "sink":
        uvloop.run(run_sink(args.listen, args.dir, args.record))
        return 0
    try:
        config = load_config(args.config)
        config.with_managed(load_managed(config.vdsa.managed_config))  # fails here, not later
        if config.vdsa.log_file is not None:
            logfile.also_to(config.vdsa.log_file)
    except (ConfigError, ValueError, OSError) as exc:
        print(f"hvds-vdsa: {exc}", file=sys.stderr)
        return 2
    uvloop.run(run_service(config))
    return 0


def _coordinate(args: argparse.Namespace) -> int:
    while True:
        taken = coordinated_checkpoint(args.control, args.vpg, args.tag, args.description)
        if args.every is None:
            print(json.dumps({"ok": taken, "taken": taken}))
            return 0 if taken else 1
        time.sleep(args.every)


def _print_answer(answer: dict[str, Any]) -> int:
    print(json.dumps(answer, indent=2))
    return 0 if answer.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
