"""NTFS: the boot sector, and the volume name and version kept in the $Volume MFT record."""

from __future__ import annotations

from dataclasses import dataclass

from hvds.analyzer.binary import (
    ReadAt,
    field,
    is_power_of_two,
    le16,
    le32,
    le64,
    u8,
    unpack,
    utf16_text,
)
from hvds.analyzer.report import FilesystemReport

_VOLUME_RECORD = 3  # $Volume is MFT record 3 on every NTFS
_ATTR_VOLUME_NAME = 0x60
_ATTR_VOLUME_INFORMATION = 0x70
_ATTR_END = 0xFFFFFFFF
# Update sequence (fixup) strides are always 512 bytes, whatever the sector size.
_FIXUP_STRIDE = 512


@dataclass(frozen=True)
class BootSector:
    bytes_per_sector: int
    cluster_size: int
    total_sectors: int
    mft_cluster: int
    record_size: int
    serial: int


def parse_boot_sector(sector: bytes) -> BootSector | None:
    if sector[3:11] != b"NTFS    ":
        return None
    bps = le16(sector, 0x0B)
    raw_spc = u8(sector, 0x0D)
    # Above 0x80 the byte is a negative power of two (for clusters of 64 KiB and more).
    spc = raw_spc if raw_spc <= 0x80 else 1 << (256 - raw_spc)
    if not (is_power_of_two(bps) and 256 <= bps <= 4096 and is_power_of_two(spc)):
        return None
    cluster = bps * spc
    # Likewise the record size: positive means clusters, negative means 2**-n bytes.
    (per_record,) = unpack("<b", sector, 0x40)
    record_size = per_record * cluster if per_record > 0 else 1 << min(-per_record, 31)
    if not (is_power_of_two(record_size) and 256 <= record_size <= 65536):
        return None
    return BootSector(
        bytes_per_sector=bps,
        cluster_size=cluster,
        total_sectors=le64(sector, 0x28),
        mft_cluster=le64(sector, 0x30),
        record_size=record_size,
        serial=le64(sector, 0x48),
    )


def probe(head: bytes) -> FilesystemReport | None:
    if head[3:11] != b"NTFS    ":
        return None
    boot = parse_boot_sector(field(head, 0, 512))
    if boot is None:
        return FilesystemReport(type="ntfs", notes=["implausible boot sector"])
    return FilesystemReport(
        type="ntfs",
        # blkid's spelling of the volume serial number, so the two can be compared.
        uuid=f"{boot.serial:016X}",
        size=boot.total_sectors * boot.bytes_per_sector,
        block_size=boot.cluster_size,
    )


def apply_fixups(record: bytes) -> bytes | None:
    """The MFT record with its update sequence undone; None if it is torn or not a record.

    NTFS replaces the last two bytes of each 512-byte stride with a sequence number to detect
    torn writes; the real bytes live in the update sequence array.
    """
    if record[:4] != b"FILE":
        return None
    usa_offset, usa_count = le16(record, 4), le16(record, 6)
    if usa_count == 0 or usa_offset + 2 * usa_count > len(record):
        return None
    fixed = bytearray(record)
    check = record[usa_offset : usa_offset + 2]
    for i in range(1, usa_count):
        end = i * _FIXUP_STRIDE
        if end > len(record):
            return None
        if fixed[end - 2 : end] != check:
            return None
        fixed[end - 2 : end] = record[usa_offset + 2 * i : usa_offset + 2 * i + 2]
    return bytes(fixed)


def volume_attributes(record: bytes) -> tuple[str | None, str | None]:
    """(volume name, "major.minor" NTFS version) from the fixed-up $Volume record."""
    name: str | None = None
    version: str | None = None
    at = le16(record, 0x14)
    while at + 24 <= len(record):
        kind, length = le32(record, at), le32(record, at + 4)
        if kind == _ATTR_END or length < 24 or at + length > len(record):
            break
        resident = record[at + 8] == 0
        if resident:
            value_length, value_offset = le32(record, at + 16), le16(record, at + 20)
            value = record[at + value_offset : at + value_offset + value_length]
            if kind == _ATTR_VOLUME_NAME:
                name = utf16_text(value)
            elif kind == _ATTR_VOLUME_INFORMATION and len(value) >= 10:
                version = f"{value[8]}.{value[9]}"
        at += length
    return name, version


def refine(report: FilesystemReport, head: bytes, read: ReadAt) -> FilesystemReport:
    boot = parse_boot_sector(head[:512])
    if boot is None:
        return report
    # The first MFT records are always in the MFT's first extent, so no run list is needed.
    offset = boot.mft_cluster * boot.cluster_size + _VOLUME_RECORD * boot.record_size
    record = apply_fixups(read(offset, boot.record_size))
    if record is None:
        return report.model_copy(
            update={"notes": [*report.notes, "$Volume record unreadable (no label)"]}
        )
    label, version = volume_attributes(record)
    return report.model_copy(update={"label": label, "version": version})
