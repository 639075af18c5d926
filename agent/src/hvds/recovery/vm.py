"""Recovered VMs: QEMU processes on the recovery host, booted from NBD views or live disks.

The VDSA of the recovery host runs them for failover tests and live failovers. A VM's disks are
NBD URIs (the views); its console goes to a file the report can quote. The accelerator is KVM
where it can run the guest, else software emulation (the ``accel`` setting, e.g. "kvm:tcg";
on hosts whose /dev/kvm cannot run stock kernels, "tcg").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from pydantic import Field

from hvds.settings import StrictModel

log = logging.getLogger(__name__)

QEMU = "qemu-system-x86_64"


class VmBoot(StrictModel):
    """How a recovered VM boots (a VPG's recovery settings for one VM)."""

    memory_mb: Annotated[int, Field(ge=64, le=1024 * 1024)] = 512
    cpus: Annotated[int, Field(ge=1, le=256)] = 1
    kernel: str = ""  # direct kernel boot; else the first disk's boot loader
    initrd: str = ""
    append: str = ""
    order: Annotated[int, Field(ge=0)] = 0  # lower boots first
    delay_seconds: Annotated[float, Field(ge=0, le=3600)] = 0.0  # wait after booting it


@dataclass
class RunningVm:
    name: str
    process: asyncio.subprocess.Process
    console: Path
    started: float = field(default_factory=time.time)

    def report(self) -> dict[str, Any]:
        code = self.process.returncode
        text = self.console.read_text(errors="replace") if self.console.exists() else ""
        return {
            "name": self.name,
            "state": "running" if code is None else "stopped",
            "exit_code": code,
            "seconds": round(time.time() - self.started, 3),
            "console_tail": text.splitlines()[-20:],
        }


def qemu_argv(
    boot: VmBoot, disks: list[str], console: Path, accel: str, network: str = ""
) -> list[str]:
    """QEMU's command line. ``network``: "bridge:NAME" puts a virtio NIC on that bridge (via
    qemu-bridge-helper, which /etc/qemu/bridge.conf must allow); "netns:NAME" runs the VM in
    that network namespace with a user-mode NIC, cut off from everything but it."""
    kind, _, where = network.partition(":")
    argv = ["ip", "netns", "exec", where] if kind == "netns" else []
    argv += [
        QEMU, "-machine", f"accel={accel}", "-m", str(boot.memory_mb), "-smp", str(boot.cpus),
        "-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none",
        "-serial", f"file:{console}", "-no-reboot",
    ]  # fmt: skip
    if boot.kernel:
        argv += ["-kernel", boot.kernel]
        if boot.initrd:
            argv += ["-initrd", boot.initrd]
        if boot.append:
            argv += ["-append", boot.append]
    if kind == "bridge":
        argv += ["-netdev", f"bridge,id=net0,br={where}", "-device", "virtio-net-pci,netdev=net0"]
    elif kind == "netns":
        argv += ["-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0"]
    for uri in disks:
        # A comma in a URI would end QEMU's option value: doubled, as QEMU's syntax wants.
        argv += ["-drive", f"file={uri.replace(',', ',,')},format=raw,if=virtio,cache=none"]
    return argv


class Vms:
    """The recovered VMs of one VDSA, by name."""

    def __init__(self, console_dir: Path, accel: str) -> None:
        self._console_dir = console_dir
        self._accel = accel
        self.running: dict[str, RunningVm] = {}

    async def start(
        self, name: str, disks: list[str], boot: VmBoot, network: str = ""
    ) -> dict[str, Any]:
        current = self.running.get(name)
        if current is not None and current.process.returncode is None:
            return current.report()  # already running: starting it again is a no-op
        self._console_dir.mkdir(parents=True, exist_ok=True)
        # The name is the manager's (a VPG's and a VM's, as a peer site named them): quoted, so
        # that no name ("../x", "/etc/x") makes the console a file elsewhere, or removes one.
        console = self._console_dir / f"{quote(name, safe='')}.console"
        console.unlink(missing_ok=True)
        argv = qemu_argv(boot, disks, console, self._accel, network)
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        vm = self.running[name] = RunningVm(name, process, console)
        await asyncio.sleep(0.2)  # a bad option makes QEMU exit at once: report that
        if process.returncode not in (None, 0):
            assert process.stderr is not None
            error = (await process.stderr.read()).decode(errors="replace").strip()
            raise ValueError(f"VM {name} did not start: {error}")
        log.info("VM %s started from %s", name, ", ".join(disks))
        return vm.report()

    def status(self, name: str) -> dict[str, Any]:
        vm = self.running.get(name)
        if vm is None:
            raise KeyError(f"no VM {name!r} was started here")
        return vm.report()

    async def stop(self, name: str, timeout: float = 10) -> dict[str, Any]:
        vm = self.running.get(name)
        if vm is None:
            return {"name": name, "state": "stopped", "exit_code": None}
        if vm.process.returncode is None:
            vm.process.send_signal(signal.SIGTERM)  # QEMU exits on it, as on a power cut
            try:
                await asyncio.wait_for(vm.process.wait(), timeout)
            except TimeoutError:
                vm.process.kill()
                await vm.process.wait()
        return self.running.pop(name).report()

    async def stop_all(self) -> None:
        for name in list(self.running):
            with contextlib.suppress(ProcessLookupError):
                await self.stop(name)


SCRIPT_TIMEOUT_SECONDS = 300.0


async def run_script(path: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run a recovery script; a non-zero exit is an error carrying the end of its output."""
    if not path.is_file():
        raise FileNotFoundError(f"no script {path}")
    process = await asyncio.create_subprocess_exec(
        str(path), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **env},
    )  # fmt: skip
    try:
        output, _ = await asyncio.wait_for(process.communicate(), SCRIPT_TIMEOUT_SECONDS)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise TimeoutError(f"{path.name} ran over {SCRIPT_TIMEOUT_SECONDS:.0f} s") from None
    text = output.decode(errors="replace")[-2000:]
    if process.returncode != 0:
        raise ValueError(f"{path.name} failed (exit {process.returncode}): {text.strip()}")
    return {"script": path.name, "output": text}
