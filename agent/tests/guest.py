"""A tiny real QEMU guest whose virtio disk is an NBD export.

The guest (kernel + busybox initramfs) is built by ``tests/guest/build-guest.sh`` at the
repository root. It runs one action per boot, given on the kernel command line, against its
virtio disk ``/dev/vda``, prints ``HVDS-RESULT: <result>`` on the serial console and powers off:

* ``write:<seed>:<count>`` writes ``count`` 4 KiB blocks at block offsets ``0..count-1``
  (block ``n`` is :func:`expected_block` ``(seed, n)``), syncs, and reports ``wrote <count>``.
* ``read`` reports ``sha256 <hex>`` of the first ``read_bytes`` bytes (default: whole disk).

The guest runs under software emulation (TCG), so it needs no KVM; a boot takes a few seconds.
Only the standard library is used.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BLOCK_SIZE = 4096
"""Size of the blocks the guest's ``write`` action writes."""

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "tests" / "guest" / "build-guest.sh"
QEMU = "qemu-system-x86_64"

_ACTION_RE = re.compile(r"read|write:(0|[1-9][0-9]{0,14}):(0|[1-9][0-9]{0,14})")
_RESULT_RE = re.compile(r"HVDS-RESULT: ([^\r\n]*)")
_TICK_RE = re.compile(r"HVDS-TICK: name=[a-z0-9_-]+ tick=([0-9]+)")
_FILL_ALPHABET = b"abcdefghijklmnopqrstuvwxyz"
_CONSOLE_TAIL_LINES = 40


class GuestError(RuntimeError):
    """The guest could not be built, did not boot, or reported a failure."""


@dataclass(frozen=True)
class GuestImage:
    """A built guest: the kernel and initramfs to hand to ``qemu -kernel/-initrd``."""

    kernel: Path
    initramfs: Path
    kernel_package: str


@dataclass(frozen=True)
class GuestRun:
    """The outcome of one boot."""

    result: str
    """The text after ``HVDS-RESULT: `` (e.g. ``wrote 16`` or ``sha256 <hex>``)."""
    console: str
    """Everything the guest printed on its serial console."""
    seconds: float
    """Wall-clock time from starting QEMU until it exited."""


def default_cache_dir() -> Path:
    """Where the guest is built unless told otherwise: ``${HVDS_CACHE:-/var/cache/hvds}/guest``."""
    return Path(os.environ.get("HVDS_CACHE", "/var/cache/hvds")) / "guest"


def qemu_available() -> bool:
    return shutil.which(QEMU) is not None


def ensure_guest(cache_dir: Path | str | None = None) -> GuestImage:
    """Build the guest into ``cache_dir`` (default :func:`default_cache_dir`) if needed.

    ``cache_dir`` is the directory that receives ``vmlinuz`` and ``initramfs.cpio.gz``. The
    build script is idempotent and takes a lock, so calling this from every test is cheap.
    """
    out = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT), str(out)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr).strip()
        raise GuestError(f"{BUILD_SCRIPT} {out} failed (exit {proc.returncode}):\n{output}")
    image = GuestImage(
        kernel=out / "vmlinuz",
        initramfs=out / "initramfs.cpio.gz",
        kernel_package=(out / "kernel-package").read_text().strip(),
    )
    for path in (image.kernel, image.initramfs):
        if not path.is_file():
            raise GuestError(f"{BUILD_SCRIPT} succeeded but {path} is missing")
    return image


def expected_block(seed: int, block: int) -> bytes:
    """The 4 KiB block the guest's ``write:<seed>:<count>`` action puts at block ``block``.

    A header line ``hvds seed=<seed> block=<block>\\n`` padded to :data:`BLOCK_SIZE` with the
    letter ``a + (seed * 7 + block) % 26``.
    """
    if not 0 <= seed < 10**15 or not 0 <= block < 10**15:
        raise ValueError("seed and block must be in [0, 10**15)")
    header = f"hvds seed={seed} block={block}\n".encode()
    fill = _FILL_ALPHABET[(seed * 7 + block) % 26]
    return header + bytes([fill]) * (BLOCK_SIZE - len(header))


def run_guest(
    image: GuestImage,
    drive_uri: str,
    action: str,
    timeout: float = 120,
    *,
    read_bytes: int | None = None,
    cache: str | None = "none",
    console_log: Path | None = None,
) -> GuestRun:
    """Boot the guest once with ``drive_uri`` as its virtio disk and run ``action``.

    ``drive_uri`` is anything QEMU's ``-drive file=`` accepts, e.g.
    ``nbd+unix:///EXPORT?socket=/path/to.sock`` or ``nbd://127.0.0.1:10809/EXPORT``.
    ``cache`` is the ``-drive cache=`` mode (``none`` works with NBD and makes the guest see a
    write-back cache, so its ``sync`` becomes an NBD flush); ``None`` leaves QEMU's default.
    The serial console goes to ``console_log`` (a temporary file if not given).

    Raises :class:`GuestError` on timeout, when QEMU fails, when no ``HVDS-RESULT:`` line
    appears, or when the guest reports ``error ...``; the message carries the console tail.
    """
    if not _ACTION_RE.fullmatch(action):
        raise ValueError(f"action must be 'read' or 'write:<seed>:<count>', not {action!r}")
    if read_bytes is not None and read_bytes < 0:
        raise ValueError("read_bytes must be >= 0")
    if not qemu_available():
        raise GuestError(f"{QEMU} is not installed")

    with tempfile.TemporaryDirectory(prefix="hvds-guest-") as tmp:
        log = console_log if console_log is not None else Path(tmp) / "console.log"
        argv = guest_argv(image, drive_uri, action, log, cache=cache, read_bytes=read_bytes)
        start = time.monotonic()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            qemu_output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            qemu_output, _ = proc.communicate()
            raise GuestError(
                f"guest did not power off within {timeout:g} s ({action}, {drive_uri})"
                + _describe(qemu_output, log)
            ) from None
        seconds = time.monotonic() - start

        console = log.read_text(errors="replace") if log.exists() else ""
        results = _RESULT_RE.findall(console)
        if proc.returncode != 0:
            raise GuestError(
                f"{QEMU} exited with {proc.returncode} ({action}, {drive_uri})"
                + _describe(qemu_output, log)
            )
        if not results:
            raise GuestError(
                f"guest printed no HVDS-RESULT line ({action}, {drive_uri})"
                + _describe(qemu_output, log)
            )
        result = results[-1].strip()
        if result.startswith("error"):
            raise GuestError(
                f"guest reported {result!r} ({action}, {drive_uri})" + _describe(qemu_output, log)
            )
        return GuestRun(result=result, console=console, seconds=seconds)


def guest_argv(
    image: GuestImage,
    drive_uri: str,
    action: str,
    console_log: Path,
    *,
    cache: str | None = "none",
    read_bytes: int | None = None,
    interval: float | None = None,
) -> list[str]:
    """QEMU's command line for one boot of the guest (the console goes to ``console_log``,
    emptied first)."""
    append = f"console=ttyS0 panic=-1 hvds.action={action}"
    if read_bytes is not None:
        append += f" hvds.bytes={read_bytes}"
    if interval is not None:
        append += f" hvds.interval={interval:g}"
    drive = f"file={drive_uri.replace(',', ',,')},format=raw,if=virtio"
    if cache is not None:
        drive += f",cache={cache}"
    console_log.unlink(missing_ok=True)
    return [
        QEMU,
        "-machine", "accel=tcg",
        "-m", "256",
        "-smp", "1",
        "-nodefaults",
        "-no-user-config",
        "-display", "none",
        "-monitor", "none",
        "-serial", f"file:{console_log}",
        "-no-reboot",
        "-kernel", str(image.kernel),
        "-initrd", str(image.initramfs),
        "-append", append,
        "-drive", drive,
    ]  # fmt: skip


def start_ticker(
    image: GuestImage, drive_uri: str, name: str, console_log: Path, interval: float = 1.0
) -> subprocess.Popen[bytes]:
    """Boot the guest's ``ticker:<name>`` action (a VM that keeps writing, as the lab's VMs do)
    and return QEMU's process; it runs until killed. Its console lines are
    ``HVDS-RESULT: ticks <N> intact`` (what it found on the disk at boot) then
    ``HVDS-TICK: name=<name> tick=<n>`` for each durable tick; see :func:`ticker_block`."""
    argv = guest_argv(image, drive_uri, f"ticker:{name}", console_log, interval=interval)
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)


def ticker_block(name: str, tick: int) -> bytes:
    """The 4 KiB block the ``ticker:<name>`` action writes at block ``tick`` (ticks from 1)."""
    return f"hvds-ticker name={name} tick={tick}\n".encode().ljust(BLOCK_SIZE, b"\0")


def read_console(console_log: Path) -> str:
    """What the guest printed so far ("" before QEMU made the file)."""
    return console_log.read_text(errors="replace") if console_log.exists() else ""


def last_tick(console_log: Path) -> int:
    """The last tick a ticker guest reported durable on its console (0 before the first)."""
    ticks = _TICK_RE.findall(read_console(console_log))
    return int(ticks[-1]) if ticks else 0


def _describe(qemu_output: str, log: Path) -> str:
    console = log.read_text(errors="replace") if log.exists() else "(no console output)"
    tail = "\n".join(console.splitlines()[-_CONSOLE_TAIL_LINES:])
    text = ""
    if qemu_output.strip():
        text += f"\n--- {QEMU} output ---\n{qemu_output.strip()}"
    text += f"\n--- console tail ({log}) ---\n{tail}"
    return text
