"""analyze(): partition table, file systems and OS of a disk image, in one report."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from hvds.analyzer import filesystems
from hvds.analyzer.debugfs import DebugfsError, ExtFiles
from hvds.analyzer.image import Image
from hvds.analyzer.os_release import EXT_TYPES, read_os_release
from hvds.analyzer.partitions import PartitionTable, read_partition_table
from hvds.analyzer.report import DiskReport, FilesystemReport, OsReport, PartitionReport

log = logging.getLogger("hvds.analyzer")
T = TypeVar("T")
_UNSEARCHED = frozenset({"xfs", "btrfs", "LVM2_member"})


def analyze(path: Path, *, find_os: bool = True) -> DiskReport:
    """Reports what the raw disk image at `path` holds; only failing to open it raises.

    Everything read from the image is untrusted (it is a copy of a guest's disk, possibly
    mid-write or damaged), so each stage that parses it is fenced: an unforeseen parser failure
    becomes a note in the report and the other stages still run.
    """
    with Image(path) as image:
        notes: list[str] = []
        if image.size == 0:
            notes.append("image is empty")
        table = _fenced(
            "reading the partition table",
            notes,
            lambda: read_partition_table(image.read, image.size),
            PartitionTable("none", "unreadable"),
        )
        partitions = [_with_filesystem(image, p) for p in table.partitions]
        filesystem = None
        if table.kind == "none":
            filesystem = _fenced(
                "probing the file system",
                notes,
                lambda: filesystems.probe(image.read, image.size),
                FilesystemReport(type="unknown"),
            )
        os_info = _find_os(image, partitions, filesystem, notes) if find_os else None
        return DiskReport(
            path=str(path),
            size=image.size,
            partition_table=table.describe(),
            disk_id=table.disk_id,
            sector_size=table.sector_size,
            partitions=partitions,
            filesystem=filesystem,
            os=os_info,
            notes=table.notes + notes,
        )


def _fenced(what: str, notes: list[str], work: Callable[[], T], fallback: T) -> T:
    try:
        return work()
    except Exception as e:
        # Deliberately broad: a bug tripped by a strange image must cost one line of the
        # report, not the whole analysis of a replica someone is about to fail over to.
        log.exception("analyzer failed %s", what)
        notes.append(f"analyzer error while {what}: {type(e).__name__}: {e}")
        return fallback


def _with_filesystem(image: Image, partition: PartitionReport) -> PartitionReport:
    notes = list(partition.notes)
    if partition.start >= image.size:
        notes.append("starts past the end of the image")
    elif partition.start + partition.size > image.size:
        notes.append("extends past the end of the image (image truncated?)")
    filesystem = None
    if partition.kind != "extended":  # a container of logical partitions, not a volume
        window = image.window(partition.start, partition.size)
        filesystem = _fenced(
            f"probing partition {partition.index}",
            notes,
            lambda: filesystems.probe(window.read, partition.size),
            FilesystemReport(type="unknown"),
        )
    return partition.model_copy(update={"filesystem": filesystem, "notes": notes})


def _find_os(
    image: Image,
    partitions: list[PartitionReport],
    whole_disk: FilesystemReport | None,
    notes: list[str],
) -> OsReport | None:
    # The first ext file system with an os-release wins; /boot or /home partitions have none,
    # so trying each in order finds the root whatever the layout.
    volumes: list[tuple[int | None, int]] = []
    if whole_disk is not None and whole_disk.type in EXT_TYPES:
        volumes.append((None, 0))
    volumes += [
        (p.index, p.start)
        for p in partitions
        if p.filesystem is not None and p.filesystem.type in EXT_TYPES
    ]
    for index, start in volumes:
        where = "the disk" if index is None else f"partition {index}"
        try:
            found = read_os_release(ExtFiles(image, start), index)
        except DebugfsError as e:
            notes.append(f"cannot read os-release from {where}: {e}")
            continue
        except Exception as e:
            log.exception("analyzer failed reading os-release from %s", where)
            notes.append(f"analyzer error reading os-release from {where}: {e}")
            continue
        if found is not None:
            return found
    unsearched = [
        f"partition {p.index} ({p.filesystem.type})"
        for p in partitions
        if p.filesystem is not None and p.filesystem.type in _UNSEARCHED
    ]
    if whole_disk is not None and whole_disk.type in _UNSEARCHED:
        unsearched.append(f"the disk ({whole_disk.type})")
    if unsearched:
        # Say why "os" is null where the root may well be (XFS on RHEL, btrfs on Fedora,
        # any of them inside LVM), rather than letting null read as "no OS".
        where = ", ".join(unsearched)
        notes.append(f"os-release is read from ext2/3/4 only; not searched: {where}")
    return None
