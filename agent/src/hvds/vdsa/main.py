"""hvds-vdsa: the virtual data services appliance of a host.

    hvds-vdsa sink --listen /run/hvds/vdsa.sock --dir /var/lib/hvds/replica [--record FILE]

For now it runs the I/O receiver with the image sink: every copy a tap sends is applied, in
order, to an image per export. The replication pipeline (sequencer, journal, targets) replaces
the sink in the replication work.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

import uvloop

from hvds.vdsa.image_sink import ImageSink
from hvds.vdsa.receiver import serve_taps

log = logging.getLogger("hvds.vdsa")


async def run_sink(listen: Path, directory: Path, record: Path | None) -> None:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hvds-vdsa", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    commands = parser.add_subparsers(dest="command", required=True)
    sink = commands.add_parser("sink", help="apply every copy to an image per export")
    sink.add_argument("--listen", type=Path, required=True, help="unix socket for the taps")
    sink.add_argument("--dir", type=Path, required=True, help="directory of the images")
    sink.add_argument("--record", type=Path, help="append a JSON line per frame to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    uvloop.run(run_sink(args.listen, args.dir, args.record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
