"""Building small but real disk images with the real tools, without mounting anything.

Each file system is made in a partition-sized file of its own, then copied into the disk image
at its partition's offset (sparsely, so the images cost little disk). Not every mkfs can write
at an offset, and doing it one way for all keeps the builders alike.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

MiB = 1024 * 1024
SECTOR = 512

DEBIAN_12 = """\
PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
HOME_URL="https://www.debian.org/"
"""

UBUNTU_2404 = """\
# A comment, and quoting as os-release(5) allows it
NAME="Ubuntu"
VERSION_ID="24.04"
PRETTY_NAME='Ubuntu 24.04 LTS'
ID=ubuntu
ID_LIKE=debian
"""

# XFS refuses file systems under 300 MB unless it believes it runs under fstests, which needs
# tiny ones; these variables are what it checks (xfsprogs >= 5.19).
_XFS_SMALL_OK = {"TEST_DIR": "1", "TEST_DEV": "1", "QA_CHECK_FS": "1"}

Builder = Callable[[Path], None]


def run(*argv: str | Path, env: dict[str, str] | None = None, stdin: str | None = None) -> str:
    result = subprocess.run(
        [str(a) for a in argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )
    assert result.returncode == 0, f"{argv[0]} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def have(*tools: str) -> bool:
    search = os.pathsep.join((os.environ.get("PATH", ""), "/usr/sbin", "/sbin"))
    return all(shutil.which(t, path=search) for t in tools)


def tree(root: Path, files: dict[str, str], symlinks: dict[str, str] | None = None) -> Path:
    """A directory for mkfs.ext4 -d: {path: contents} files and {path: target} symlinks."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, content in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(content)
    for rel, target in (symlinks or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).symlink_to(target)
    return root


# --- file system builders: each formats the (already sized) file it is given ------------------


def ext(kind: str, label: str, uuid: str, root: Path | None = None) -> Builder:
    def build(path: Path) -> None:
        populate = ["-d", str(root)] if root else []
        run(f"mkfs.{kind}", "-q", "-F", "-L", label, "-U", uuid, *populate, path)

    return build


def xfs(label: str, uuid: str) -> Builder:
    def build(path: Path) -> None:
        run("mkfs.xfs", "-q", "-f", "-L", label, "-m", f"uuid={uuid}", path, env=_XFS_SMALL_OK)

    return build


def swap(label: str, uuid: str) -> Builder:
    def build(path: Path) -> None:
        run("mkswap", "-L", label, "-U", uuid, path)

    return build


def ntfs(label: str) -> Builder:
    def build(path: Path) -> None:
        run("mkntfs", "-F", "-Q", "-q", "-L", label, path)

    return build


def vfat(label: str, volume_id: str, options: tuple[str, ...] = ()) -> Builder:
    def build(path: Path) -> None:
        run("mkfs.vfat", *options, "-n", label, "-i", volume_id, path)

    return build


def btrfs(label: str, uuid: str) -> Builder:
    def build(path: Path) -> None:
        # Mixed block groups: the only way btrfs accepts a file system this small.
        run("mkfs.btrfs", "-q", "-f", "-M", "-L", label, "-U", uuid, path)

    return build


# --- disks -----------------------------------------------------------------------------------


@dataclass
class Part:
    size_mib: int
    type: str  # a GPT type GUID or an MBR type id ("83", "5") as sfdisk takes them
    build: Builder | None = None
    name: str | None = None  # GPT partition name
    uuid: str | None = None  # GPT unique partition GUID
    bootable: bool = False
    logicals: list[Part] = field(default_factory=list)  # MBR extended partition contents


def write_at(image: Path, offset: int, source: Path) -> None:
    # conv=sparse keeps the zero runs of the fresh file system as holes in the image.
    run(
        "dd",
        f"if={source}",
        f"of={image}",
        "bs=64K",
        f"seek={offset}",
        "oflag=seek_bytes",
        "conv=notrunc,sparse",
        "status=none",
    )


def make_volume(workdir: Path, name: str, size: int, build: Builder) -> Path:
    path = workdir / f"{name}.vol"
    path.unlink(missing_ok=True)
    with path.open("wb") as f:
        f.truncate(size)
    build(path)
    return path


def loop_devices_usable() -> bool:
    return os.geteuid() == 0 and Path("/dev/loop-control").exists() and have("losetup")


@contextmanager
def loop_device(path: Path, sector_size: int = SECTOR) -> Iterator[str]:
    """A loop device over `path`, detached afterwards whatever happens."""
    device = run("losetup", "--find", "--show", "--sector-size", str(sector_size), path).strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "--detach", device], check=False, timeout=30)


def _blank(path: Path, size_mib: int) -> None:
    path.unlink(missing_ok=True)
    with path.open("wb") as f:
        f.truncate(size_mib * MiB)


def gpt_disk(
    path: Path, parts: list[Part], disk_guid: str, size_mib: int, sector_size: int = SECTOR
) -> list[int]:
    """A GPT disk made by sfdisk, partitions back to back from 1 MiB; returns their offsets."""
    _blank(path, size_mib)
    lines = ["label: gpt", f"label-id: {disk_guid}", f"sector-size: {sector_size}", ""]
    starts = []
    start = MiB
    for part in parts:
        spec = [f"start={start // sector_size}", f"size={part.size_mib * MiB // sector_size}"]
        spec.append(f"type={part.type}")
        if part.name:
            spec.append(f'name="{part.name}"')
        if part.uuid:
            spec.append(f"uuid={part.uuid}")
        if part.bootable:
            spec.append("attrs=LegacyBIOSBootable")
        lines.append(", ".join(spec))
        starts.append(start)
        start += part.size_mib * MiB
    script = "\n".join(lines) + "\n"
    if sector_size == SECTOR:
        run("sfdisk", "-q", "--no-reread", "--no-tell-kernel", path, stdin=script)
    else:
        # sfdisk scales a script to its device's sector size, and a file's is always 512; a
        # loop device can present another. It is only written through, never scanned.
        with loop_device(path, sector_size) as device:
            run("sfdisk", "-q", "--no-reread", "--no-tell-kernel", device, stdin=script)
    _format(path, list(zip(parts, starts, strict=True)))
    return starts


def mbr_disk(path: Path, parts: list[Part], disk_id: str, size_mib: int) -> list[int]:
    """An MBR disk; a part with logicals becomes an extended partition holding them.

    Returns the offsets of the primaries, then of the logicals, in Linux's numbering order.
    """
    _blank(path, size_mib)
    lines = ["label: dos", f"label-id: {disk_id}", "unit: sectors", ""]
    primaries: list[tuple[Part, int]] = []
    logicals: list[tuple[Part, int]] = []
    start = MiB
    for part in parts:
        size = part.size_mib * MiB
        boot = ", bootable" if part.bootable else ""
        lines.append(f"start={start // SECTOR}, size={size // SECTOR}, type={part.type}{boot}")
        primaries.append((part, start))
        # Leave 1 MiB before each logical partition for its EBR, as fdisk does.
        logical_start = start
        for logical in part.logicals:
            logical_start += MiB
            lines.append(
                f"start={logical_start // SECTOR}, size={logical.size_mib * MiB // SECTOR}, "
                f"type={logical.type}"
            )
            logicals.append((logical, logical_start))
            logical_start += logical.size_mib * MiB
        start += size
    run("sfdisk", "-q", "--no-reread", "--no-tell-kernel", path, stdin="\n".join(lines) + "\n")
    _format(path, primaries + logicals)
    return [start for _, start in primaries + logicals]


def _format(path: Path, layout: list[tuple[Part, int]]) -> None:
    for number, (part, start) in enumerate(layout, 1):
        if part.build is not None:
            name = f"{path.stem}-p{number}"
            volume = make_volume(path.parent, name, part.size_mib * MiB, part.build)
            write_at(path, start, volume)
            volume.unlink()


def sfdisk_json(path: Path) -> dict[str, object]:
    table: dict[str, object] = json.loads(run("sfdisk", "--json", path))["partitiontable"]
    return table


def blkid(path: Path, offset: int = 0, size: int | None = None) -> dict[str, str]:
    """What util-linux's blkid finds at an offset: the oracle the analyzer is checked against."""
    argv: list[str | Path] = ["blkid", "-p", "-o", "export", "-O", str(offset)]
    if size is not None:
        argv += ["-S", str(size)]
    result = subprocess.run(
        [str(a) for a in [*argv, path]], capture_output=True, text=True, check=False, timeout=30
    )
    # blkid exits 2 when it finds nothing; that is an answer too.
    assert result.returncode in (0, 2), result.stderr
    return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
