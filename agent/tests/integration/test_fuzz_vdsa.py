"""Fuzz of a real target VDSA's replication port: garbage before TLS, then, over mutual TLS with
a valid certificate, HELLOs whose fields are of every wrong type and mutated frame streams (the
generator of tests/unit/test_fuzz_wire.py). Afterwards the target must still be up, have logged
no traceback, and the real source must still replicate to it exactly."""

from __future__ import annotations

import json
import random
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator

from fuzzing import Figures, RandomChooser, examples, seed
from harness import sha256_file, write_random
from nbd_fuzz import request
from test_fuzz_tap import MemoryWatch, flood
from test_replication import Sites, sites  # noqa: F401 - the fixture
from wire_fuzz import mutate, stream

from hvds.nbd.block_server import MAX_QUEUED_BYTES
from hvds.nbd.constants import Command
from hvds.replication.wire import FrameType, frame, json_frame
from hvds.tls import client_context

MiB = 1024 * 1024
WRONG = [None, True, -1, 1 << 70, 1.5, "x", "", [], {}, ["vpg1"], {"a": 1}, "\udcff"]


def send(port: int, context: ssl.SSLContext | None, data: bytes) -> int:
    """One connection: send, read what comes back until the target hangs up or 0.3 s pass."""
    received = 0
    with socket.create_connection(("127.0.0.1", port), timeout=3) as raw:
        try:
            sock: socket.socket = raw
            if context is not None:
                sock = context.wrap_socket(raw, server_hostname="vdsa-b1")
            sock.sendall(data)
            sock.settimeout(0.3)
            while chunk := sock.recv(65536):
                received += len(chunk)
        except (OSError, ssl.SSLError):
            pass  # refused, reset or silent: all fine, the target decides
    return received


HELLO = {"vpg": "vpg1", "source": "vdsa-a1", "protocol": 1, "dedup_cache_bytes": 1 << 20,
         "hash_block": 65536}  # fmt: skip


def hellos() -> Iterator[bytes]:
    """HELLOs with one field of each wrong type in turn, then a few with several."""
    for key in HELLO:
        for value in WRONG:
            yield frame(
                FrameType.HELLO, json.dumps({**HELLO, key: value}).encode("utf-8", "surrogatepass")
            )
    yield frame(FrameType.HELLO, b"[]")
    yield frame(FrameType.HELLO, b"\xff")


def test_the_target_vdsa_survives_garbage_and_lies(sites: Sites) -> None:  # noqa: F811
    sites.protect({"vm1-disk0": 16 * MiB})
    sites.start()
    sites.wait_in_sync(timeout=60)  # the initial sync done: checkpoints are taken
    uri = sites.host_a.uri("vm1-disk0")
    write_random(uri, 0, 2 * MiB, sites.host_a.root)
    sites.tagged_checkpoint("before")
    port = sites.vdsa_b.listen_port
    # The real source's own certificate: the fuzz speaks for vdsa-a1, as a confused one would.
    context = client_context(sites.vdsa_a.tls)
    run_seed = seed()
    rng = random.Random(run_seed)
    chooser = RandomChooser(rng)
    figures = Figures("vdsa.replication_port", seed=run_seed)
    for data in hellos():  # every field of the HELLO of every wrong type
        send(port, context, data)
        figures.add(len(data))
    for n in range(examples(80)):
        if n % 3 == 0:  # not TLS at all
            data = rng.randbytes(rng.randint(1, 600))
            send(port, None, data)
            figures.add(len(data))
        else:  # a good HELLO for another VPG's name or for vpg1, then mutated frames
            frames, _ = stream(chooser)
            start = json_frame(FrameType.HELLO, {"vpg": rng.choice(["vpg1", "nope"]),
                                                 "source": "vdsa-a1", "protocol": 1})  # fmt: skip
            data = start + mutate(chooser, frames)
            send(port, context, data)
            figures.add(len(data))
    assert sites.vdsa_b.service is not None and sites.vdsa_b.service.proc is not None
    assert sites.vdsa_b.service.proc.poll() is None, "the target VDSA died"
    log = (sites.vdsa_b.root / "vdsa.log").read_text()
    for bad in ("Traceback", "Unhandled exception", "exception was never retrieved"):
        assert bad not in log, log[log.index(bad) - 2000 : log.index(bad) + 2000]

    # The real source takes over again and replicates exactly.
    write_random(uri, 4 * MiB, 2 * MiB, sites.host_a.root)
    sites.tagged_checkpoint("after")
    assert sha256_file(sites.vdsa_b.mirror("vm1-disk0")) == sha256_file(
        sites.host_a.exports["vm1-disk0"]
    )

    # Its view server (the same NBD core, nbd/block_server.py): two clients pipeline 9,000
    # READs of the whole 16 MiB disk each and read no reply; the VDSA's memory stays bounded
    # and another client still reads a view exactly.
    view = sites.vdsa_b.control(op="view_open", vpg="vpg1", disk="vm1-disk0", tag="after")
    socket_path, name = sites.vdsa_b.view_socket, view["export"].encode()
    reads = b"".join(request(Command.READ, 0, h, 0, 16 * MiB) for h in range(9000))
    watch = MemoryWatch(sites.vdsa_b.service)
    floods = []
    try:
        floods = [flood(socket_path, name, reads) for _ in range(2)]
        time.sleep(1)
        copy = sites.host_a.root / "view.raw"
        subprocess.run(["nbdcopy", view["uri"], str(copy)], check=True, timeout=60)
        assert sha256_file(copy) == sha256_file(sites.host_a.exports["vm1-disk0"])
    finally:
        for sock in floods:
            sock.close()
        watch.stop()
    assert not watch.killed and sites.vdsa_b.service.proc.poll() is None
    growth = watch.peak - watch.base
    figures.extra["view_flood_growth_mib"] = round(growth / MiB, 1)
    assert growth < 2 * 2 * (16 * MiB + MiB) + 64 * MiB + MAX_QUEUED_BYTES
    figures.report()
