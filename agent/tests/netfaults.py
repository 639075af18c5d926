"""Network faults between two sites, in network namespaces the tests make (root needed).

``NetPair`` makes two namespaces, A and B, joined by a veth pair (A 10.77.0.1, B 10.77.0.2):
the link between the sites. Faults are applied inside the namespaces only, never to the
machine's own network: nftables (a link cut: drop everything; loss: ``numgen random``), tc tbf
(throttling A -> B). tc netem is not in this kernel, so latency comes from ``DelayProxy``, a
TCP relay run inside namespace A that holds every chunk for ``delay`` seconds (each direction),
and that can also abort its connections after a number of bytes (a peer that closes in the
middle of a batch).

Processes join a namespace with ``ip netns exec`` (``Vdsa.netns``); unix sockets are paths, so
a tap and the test itself reach a VDSA in a namespace as usual, and its metrics are scraped
from inside (``harness.in_netns``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import threading
from dataclasses import dataclass, field

from harness import in_netns

LINK_A, LINK_B = "10.77.0.1", "10.77.0.2"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _in(netns: str, *argv: str, stdin: str | None = None) -> None:
    result = subprocess.run(["ip", "netns", "exec", netns, *argv], input=stdin,
                            capture_output=True, text=True, check=False)  # fmt: skip
    if result.returncode:
        raise RuntimeError(f"{' '.join(argv)} in {netns}: {result.stderr.strip()}")


def available() -> str | None:
    """Why the network fault tests cannot run here (None: they can)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "nft", "tc"):
        if subprocess.run(["which", tool], capture_output=True, check=False).returncode:
            return f"needs {tool} (scripts/setup.sh installs it)"
    return None


@dataclass
class NetPair:
    """Namespaces A and B and the link between them."""

    tag: str = field(default_factory=lambda: f"{os.getpid() % 100000}")
    a: str = ""
    b: str = ""
    dev_a: str = ""
    dev_b: str = ""

    def __post_init__(self) -> None:
        self.a, self.b = f"hvds-{self.tag}-a", f"hvds-{self.tag}-b"
        self.dev_a, self.dev_b = f"hvl{self.tag}a", f"hvl{self.tag}b"  # at most 15 characters

    def create(self) -> NetPair:
        self.destroy()  # what a killed earlier run may have left
        _ip("netns", "add", self.a)
        _ip("netns", "add", self.b)
        _ip("link", "add", self.dev_a, "type", "veth", "peer", "name", self.dev_b)
        for netns, dev, address in ((self.a, self.dev_a, LINK_A), (self.b, self.dev_b, LINK_B)):
            _ip("link", "set", dev, "netns", netns)
            _ip("-n", netns, "addr", "add", f"{address}/24", "dev", dev)
            _ip("-n", netns, "link", "set", dev, "up")
            _ip("-n", netns, "link", "set", "lo", "up")
        # The fault rules live in A, on the link only: A's loopback (the proxy) is untouched.
        _in(self.a, "nft", "-f", "-", stdin=(
            "table inet hvds {\n"
            "  chain out { type filter hook output priority 0; }\n"
            "  chain in { type filter hook input priority 0; }\n"
            "}\n"
        ))  # fmt: skip
        return self

    def destroy(self) -> None:
        for netns in (self.a, self.b):
            subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)

    def _rules(self, rule: str) -> None:
        self.heal()
        script = (
            f"add rule inet hvds out oifname {self.dev_a} {rule}\n"
            f"add rule inet hvds in iifname {self.dev_a} {rule}\n"
        )
        _in(self.a, "nft", "-f", "-", stdin=script)

    def cut(self) -> None:
        """The link is down: every packet either way is dropped (TCP sees silence)."""
        self._rules("drop")

    def loss(self, one_in: int = 10) -> None:
        """About one packet in ``one_in`` dropped, each way."""
        self._rules(f"numgen random mod {one_in} 0 drop")

    def heal(self) -> None:
        _in(self.a, "nft", "flush", "chain", "inet", "hvds", "out")
        _in(self.a, "nft", "flush", "chain", "inet", "hvds", "in")

    def throttle(self, bytes_per_second: int) -> None:
        """A -> B limited to ``bytes_per_second`` (tc tbf on A's end of the link)."""
        _in(self.a, "tc", "qdisc", "replace", "dev", self.dev_a, "root", "tbf",
            "rate", f"{bytes_per_second * 8}bit", "burst", "64kb", "latency", "500ms")  # fmt: skip

    def unthrottle(self) -> None:
        _in(self.a, "tc", "qdisc", "del", "dev", self.dev_a, "root")


class DelayProxy:
    """A TCP relay inside a namespace: 127.0.0.1:port there -> ``upstream``, every chunk held
    ``delay`` seconds each way (order kept, throughput not limited: a longer pipe). With
    ``abort_after`` set, connections are reset once that many more bytes went upstream."""

    def __init__(self, netns: str, upstream: tuple[str, int]) -> None:
        self.netns = netns
        self.upstream = upstream
        self.delay = 0.0
        self.abort_after: int | None = None
        self.aborted = 0  # connections reset so far
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._transports: set[asyncio.BaseTransport] = set()
        self._thread = threading.Thread(target=in_netns, args=(netns, self._serve), daemon=True)

    def start(self) -> DelayProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the proxy did not start")
        return self

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        server = loop.run_until_complete(asyncio.start_server(self._relay, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            server.close()
            for transport in self._transports:
                transport.abort()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        transports = {writer.transport, up_writer.transport}
        self._transports |= transports

        def reset() -> None:
            for transport in transports:
                transport.abort()

        pipes = [
            asyncio.create_task(self._pipe(reader, up_writer, reset, upstream=True)),
            asyncio.create_task(self._pipe(up_reader, writer, reset, upstream=False)),
        ]
        with contextlib.suppress(Exception):
            await asyncio.gather(*pipes, return_exceptions=True)
        reset()
        self._transports -= transports

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        reset: object,
        upstream: bool,
    ) -> None:
        assert callable(reset)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(maxsize=256)

        async def deliver() -> None:
            while (item := await queue.get()) is not None:
                due, data = item
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()

        delivery = asyncio.create_task(delivery_wrapper(deliver()))
        try:
            while data := await reader.read(1 << 16):
                if upstream and self.abort_after is not None:
                    self.abort_after -= len(data)
                    if self.abort_after <= 0:
                        # The peer is gone in the middle of whatever was being sent.
                        self.abort_after = None
                        self.aborted += 1
                        reset()
                        return
                await queue.put((loop.time() + self.delay, data))
            await queue.put(None)
            await delivery
        except (OSError, asyncio.IncompleteReadError):
            reset()
        finally:
            delivery.cancel()

    def abort_all(self) -> None:
        """Reset every connection now."""
        loop = self._loop
        assert loop is not None
        for transport in list(self._transports):
            loop.call_soon_threadsafe(transport.abort)

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


async def delivery_wrapper(coroutine: object) -> None:
    """Run a delivery loop, swallowing the errors of a connection that was reset."""
    assert asyncio.iscoroutine(coroutine)
    with contextlib.suppress(OSError, ConnectionError):
        await coroutine
