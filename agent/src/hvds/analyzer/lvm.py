"""LVM2 physical volumes: the PV label, and the volume group name from the metadata area.

Only the PV itself is described: mapping the logical volumes inside it (to find a root file
system there) would mean interpreting LVM's text metadata, which this analyzer does not do.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

from hvds.analyzer.binary import ReadAt, field, le32, le64, unpack
from hvds.analyzer.report import FilesystemReport

_LABEL_SECTORS = 4  # the label may be in any of the first four sectors (usually the second)
_SECTOR = 512
_MDA_MAGIC = b" LVM2 x[5A%r0N*>"
# LVM's CRC-32 starts from this value and, unlike zlib's, is not inverted before or after.
_LVM_CRC_INIT = 0xF597A6CF
_VG_NAME = re.compile(rb"\s*([A-Za-z0-9+_.-]+)\s*\{")


def lvm_crc(data: bytes) -> int:
    # zlib.crc32 inverts its running value on the way in and out; undo both to get LVM's.
    return ~zlib.crc32(data, ~_LVM_CRC_INIT & 0xFFFFFFFF) & 0xFFFFFFFF


@dataclass(frozen=True)
class PvLabel:
    uuid: str
    device_size: int
    metadata_areas: list[tuple[int, int]]  # (offset, size) in bytes from the start of the PV
    crc_ok: bool


def _format_uuid(raw: bytes) -> str:
    # LVM prints its 32-character ids in groups of 6-4-4-4-4-4-6.
    s = raw.decode("ascii", errors="replace")
    return "-".join((s[:6], s[6:10], s[10:14], s[14:18], s[18:22], s[22:26], s[26:]))


def parse_label(head: bytes) -> PvLabel | None:
    for sector in range(_LABEL_SECTORS):
        label = head[sector * _SECTOR : (sector + 1) * _SECTOR]
        if label[:8] == b"LABELONE" and label[24:32] == b"LVM2 001":
            break
    else:
        return None
    label = field(head, sector * _SECTOR, _SECTOR)
    crc_ok = le32(label, 16) == lvm_crc(label[20:])
    at = le32(label, 20)  # pv_header offset from the label's start
    pv_uuid = field(label, at, 32)
    device_size = le64(label, at + 32)
    # Two zero-terminated lists of (offset, size): data areas, then metadata areas.
    at += 40
    lists: list[list[tuple[int, int]]] = [[], []]
    for areas in lists:
        while True:
            offset, size = unpack("<QQ", label, at)
            at += 16
            if offset == 0 and size == 0:
                break
            areas.append((offset, size))
    return PvLabel(_format_uuid(pv_uuid), device_size, lists[1], crc_ok)


def probe(head: bytes) -> FilesystemReport | None:
    label = parse_label(head)
    if label is None:
        return None
    return FilesystemReport(
        type="LVM2_member",
        uuid=label.uuid,
        size=label.device_size or None,
        version="LVM2 001",
        notes=[] if label.crc_ok else ["PV label CRC mismatch"],
    )


def metadata_location(header: bytes) -> tuple[int, int] | None:
    """(offset in the area, size) of the current metadata text from a metadata area header."""
    if field(header, 4, 16) != _MDA_MAGIC:
        return None
    offset, size = unpack("<QQ", header, 40)  # the first raw_locn
    return (offset, size) if offset and size else None


def vg_name(metadata: bytes) -> str | None:
    # The metadata text starts with "<vgname> {", so the name is the first identifier.
    match = _VG_NAME.match(metadata)
    return match.group(1).decode("ascii") if match else None


def refine(report: FilesystemReport, head: bytes, read: ReadAt) -> FilesystemReport:
    label = parse_label(head)
    if label is None or not label.metadata_areas:
        return report
    area, _ = label.metadata_areas[0]
    location = metadata_location(read(area, _SECTOR))
    if location is None:
        return report  # an orphan PV: not (or no longer) in any volume group
    name = vg_name(read(area + location[0], min(location[1], 256)))
    if name is None:
        return report
    return report.model_copy(update={"details": {**report.details, "vg_name": name}})
