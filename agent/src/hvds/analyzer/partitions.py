"""Partition tables: MBR (with extended/logical partitions) and GPT, parsed from raw sectors.

The parsers are pure functions over bytes; read_partition_table() is the only one that fetches
sectors, through a ReadAt, and it turns every inconsistency into a problem string or a note,
because a replica of a damaged disk is exactly what an operator needs a clear report about.
"""

from __future__ import annotations

import uuid
import zlib
from dataclasses import dataclass, field, replace

from hvds.analyzer import fat, ntfs
from hvds.analyzer.binary import (
    ReadAt,
    TruncatedError,
    le32,
    unpack,
    utf16_text,
)
from hvds.analyzer.report import PartitionReport

MBR_SECTOR = 512
_MBR_SIGNATURE = b"\x55\xaa"
_MBR_ENTRIES_AT = 446
_GPT_PROTECTIVE = 0xEE
_EXTENDED_TYPES = frozenset({0x05, 0x0F, 0x85})
_GPT_SIGNATURE = b"EFI PART"
# 512 for nearly every virtual disk; 4096 for 4Kn disks, where GPT's LBA 1 is at byte 4096.
_GPT_SECTOR_SIZES = (512, 4096)
# The spec reserves at least 16 KiB for entries; anything beyond 1 MiB is garbage, and reading it
# would let a corrupt header make us read gigabytes.
_GPT_MAX_ARRAY = 1024 * 1024
# Linux stops following an EBR chain long before this; a loop in a corrupt chain must end too.
_MAX_LOGICAL = 256

MBR_TYPE_NAMES = {
    0x01: "FAT12",
    0x04: "FAT16 <32M",
    0x05: "Extended",
    0x06: "FAT16",
    0x07: "HPFS/NTFS/exFAT",
    0x0B: "W95 FAT32",
    0x0C: "W95 FAT32 (LBA)",
    0x0E: "W95 FAT16 (LBA)",
    0x0F: "W95 Ext'd (LBA)",
    0x27: "Hidden NTFS WinRE",
    0x42: "SFS / Windows dynamic",
    0x82: "Linux swap / Solaris",
    0x83: "Linux",
    0x85: "Linux extended",
    0x8E: "Linux LVM",
    0xA5: "FreeBSD",
    0xEE: "GPT",
    0xEF: "EFI (FAT-12/16/32)",
    0xFD: "Linux raid autodetect",
}

GPT_TYPE_NAMES = {
    "C12A7328-F81F-11D2-BA4B-00A0C93EC93B": "EFI System",
    "21686148-6449-6E6F-744E-656564454649": "BIOS boot",
    "0FC63DAF-8483-4772-8E79-3D69D8477DE4": "Linux filesystem",
    "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F": "Linux swap",
    "E6D6D379-F507-44C2-A23C-238F2A3DF928": "Linux LVM",
    "A19D880F-05FC-4D3B-A006-743F0F84911E": "Linux RAID",
    "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709": "Linux root (x86-64)",
    "44479540-F297-41B2-9AF7-D131D5F0458A": "Linux root (x86)",
    "B921B045-1DF0-41C3-AF44-4C6F280D3FAE": "Linux root (ARM-64)",
    "BC13C2FF-59E6-4262-A352-B275FD6F7172": "Linux extended boot",
    "933AC7E1-2EB4-4F13-B844-0E14E2AEF915": "Linux home",
    "3B8F8425-20E0-4F3B-907F-1A25A76F98E8": "Linux server data",
    "4D21B016-B534-45C2-A9FB-5C16E091FD2D": "Linux variable data",
    "8DA63339-0007-60C0-C436-083AC8230908": "Linux reserved",
    "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7": "Microsoft basic data",
    "E3C9E316-0B5C-4DB8-817D-F92DF00215AE": "Microsoft reserved",
    "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC": "Windows recovery environment",
    "5808C8AA-7E8F-42E0-85D2-E1E90434CFB3": "Microsoft LDM metadata",
    "AF9B60A0-1431-4F62-BC68-3311714A69AD": "Microsoft LDM data",
}


@dataclass(frozen=True)
class PartitionTable:
    kind: str  # "none", "mbr" or "gpt"
    problem: str | None = None
    disk_id: str | None = None
    sector_size: int | None = None
    partitions: list[PartitionReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return f"{self.kind} ({self.problem})" if self.problem else self.kind


# --- MBR -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MbrEntry:
    slot: int  # 1..4 in the MBR, 1..2 in an EBR
    bootable: bool
    type: int
    start_lba: int
    sectors: int


@dataclass(frozen=True)
class Mbr:
    disk_signature: int
    entries: list[MbrEntry]  # non-empty entries only


def looks_like_vbr(sector: bytes) -> bool:
    """True for the boot sector of a FAT/NTFS/exFAT/XFS volume written on the whole disk.

    A FAT or NTFS boot sector also ends in 55 AA and may have zeros where MBR entries would be,
    so without this check a partition-less disk would read as an empty MBR. Like libblkid, the
    volume's own validation decides, not just its name strings.
    """
    if len(sector) < MBR_SECTOR:
        return False
    return (
        sector[:4] == b"XFSB"
        or sector[3:11] == b"EXFAT   "
        or fat.parse_boot_sector(sector) is not None
        or ntfs.parse_boot_sector(sector) is not None
    )


def _parse_entries(sector: bytes, count: int) -> list[MbrEntry] | None:
    entries = []
    for slot in range(1, count + 1):
        at = _MBR_ENTRIES_AT + (slot - 1) * 16
        status, ptype, start, sectors = unpack("<B3xB3xII", sector, at)
        # Only 0x00 and 0x80 are valid boot flags; anything else means this is not a table.
        if status not in (0x00, 0x80):
            return None
        if ptype != 0 and sectors != 0:
            entries.append(MbrEntry(slot, status == 0x80, ptype, start, sectors))
    return entries


def parse_mbr(sector: bytes) -> Mbr | None:
    """The MBR in sector 0, or None when sector 0 is not one."""
    if len(sector) < MBR_SECTOR or sector[510:512] != _MBR_SIGNATURE:
        return None
    entries = _parse_entries(sector, 4)
    if entries is None:
        return None
    return Mbr(le32(sector, 440), entries)


def parse_ebr(sector: bytes) -> tuple[MbrEntry | None, int | None]:
    """An extended boot record: (the logical partition, the next EBR relative to the extended
    partition's start). Per the EBR convention only the first two entries are used."""
    if len(sector) < MBR_SECTOR or sector[510:512] != _MBR_SIGNATURE:
        return None, None
    entries = _parse_entries(sector, 2)
    if entries is None:
        return None, None
    logical = next((e for e in entries if e.slot == 1 and e.type not in _EXTENDED_TYPES), None)
    link = next((e for e in entries if e.slot == 2 and e.type in _EXTENDED_TYPES), None)
    return logical, (link.start_lba if link else None)


def _mbr_partition(entry: MbrEntry, index: int, start_lba: int, kind: str) -> PartitionReport:
    return PartitionReport(
        index=index,
        start=start_lba * MBR_SECTOR,
        size=entry.sectors * MBR_SECTOR,
        type=f"0x{entry.type:02x}",
        type_name=MBR_TYPE_NAMES.get(entry.type),
        kind=kind,
        bootable=entry.bootable,
    )


def _read_mbr(read: ReadAt, mbr: Mbr) -> PartitionTable:
    partitions: list[PartitionReport] = []
    notes: list[str] = []
    logical_index = 5  # Linux numbers logical partitions from 5 whatever the primaries are
    for entry in mbr.entries:
        if entry.type == _GPT_PROTECTIVE:
            continue
        extended = entry.type in _EXTENDED_TYPES
        partitions.append(
            _mbr_partition(
                entry, entry.slot, entry.start_lba, "extended" if extended else "primary"
            )
        )
        if not extended:
            continue
        ext_start, ext_end = entry.start_lba, entry.start_lba + entry.sectors
        ebr_lba: int | None = ext_start
        seen: set[int] = set()
        while ebr_lba is not None:
            if ebr_lba in seen or len(seen) >= _MAX_LOGICAL:
                notes.append(f"extended partition {entry.slot}: EBR chain loops; stopped")
                break
            if not ext_start <= ebr_lba < ext_end:
                notes.append(f"extended partition {entry.slot}: EBR link points outside it")
                break
            seen.add(ebr_lba)
            ebr = read(ebr_lba * MBR_SECTOR, MBR_SECTOR)
            logical, next_rel = parse_ebr(ebr)
            if logical is None and next_rel is None:
                if ebr_lba != ext_start or any(ebr):
                    notes.append(f"no valid EBR at sector {ebr_lba}; logical partitions end")
                break
            if logical is not None:
                partitions.append(
                    _mbr_partition(logical, logical_index, ebr_lba + logical.start_lba, "logical")
                )
                logical_index += 1
            ebr_lba = ext_start + next_rel if next_rel is not None else None
    return PartitionTable(
        "mbr",
        disk_id=f"0x{mbr.disk_signature:08x}",
        sector_size=MBR_SECTOR,
        partitions=partitions,
        notes=notes,
    )


# --- GPT -----------------------------------------------------------------------------------


class GptError(Exception):
    """Why a GPT header or entry array cannot be trusted; the message goes into the report."""


@dataclass(frozen=True)
class GptHeader:
    my_lba: int
    alternate_lba: int
    first_usable: int
    last_usable: int
    disk_guid: str
    entries_lba: int
    entry_count: int
    entry_size: int
    entries_crc: int

    @property
    def array_bytes(self) -> int:
        return self.entry_count * self.entry_size


def guid_str(raw: bytes) -> str:
    # GPT GUIDs are mixed-endian (the first three fields little-endian), hence bytes_le.
    return str(uuid.UUID(bytes_le=raw)).upper()


def parse_gpt_header(sector: bytes, lba: int, sector_size: int) -> GptHeader:
    """Validates and decodes the GPT header read from `lba`; raises GptError saying why not."""
    if sector[:8] != _GPT_SIGNATURE:
        raise GptError("header signature missing")
    try:
        header_size = le32(sector, 12)
        if not 92 <= header_size <= sector_size:
            raise GptError("header size implausible")
        if len(sector) < header_size:
            raise GptError("header truncated")
        stored_crc = le32(sector, 16)
        # The CRC covers header_size bytes with its own field taken as zero.
        body = sector[:16] + b"\0\0\0\0" + sector[20:header_size]
        if zlib.crc32(body) != stored_crc:
            raise GptError("header CRC mismatch")
        my_lba, alternate, first, last = unpack("<QQQQ", sector, 24)
        entries_lba, count, size, entries_crc = unpack("<QIII", sector, 72)
    except TruncatedError as e:
        raise GptError("header truncated") from e
    if my_lba != lba:
        raise GptError(f"header at wrong LBA (claims {my_lba}, read from {lba})")
    if size < 128 or size % 8 or count == 0 or count * size > _GPT_MAX_ARRAY:
        raise GptError("partition entry array implausible")
    return GptHeader(
        my_lba=my_lba,
        alternate_lba=alternate,
        first_usable=first,
        last_usable=last,
        disk_guid=guid_str(sector[56:72]),
        entries_lba=entries_lba,
        entry_count=count,
        entry_size=size,
        entries_crc=entries_crc,
    )


def parse_gpt_entries(
    array: bytes, header: GptHeader, sector_size: int
) -> tuple[list[PartitionReport], list[str]]:
    if len(array) < header.array_bytes:
        raise GptError("partition entries truncated")
    if zlib.crc32(array[: header.array_bytes]) != header.entries_crc:
        raise GptError("partition entries CRC mismatch")
    partitions: list[PartitionReport] = []
    notes: list[str] = []
    for number in range(header.entry_count):
        entry = array[number * header.entry_size : (number + 1) * header.entry_size]
        if not any(entry[:16]):
            continue  # an all-zero type GUID marks an unused entry
        index = number + 1
        first, last, attributes = unpack("<QQQ", entry, 32)
        if last < first:
            notes.append(f"partition {index}: ends (LBA {last}) before it starts (LBA {first})")
            continue
        if first < header.first_usable or last > header.last_usable:
            notes.append(f"partition {index}: outside the usable LBAs of the GPT")
        type_guid = guid_str(entry[:16])
        partitions.append(
            PartitionReport(
                index=index,
                start=first * sector_size,
                size=(last - first + 1) * sector_size,
                type=type_guid,
                type_name=GPT_TYPE_NAMES.get(type_guid),
                name=utf16_text(entry[56:128]),
                uuid=guid_str(entry[16:32]),
                # Attribute bit 2 is "legacy BIOS bootable", GPT's nearest thing to MBR's flag.
                bootable=bool(attributes & 0x4),
            )
        )
    return partitions, notes


def _load_gpt(
    read: ReadAt, lba: int, sector_size: int
) -> tuple[GptHeader, list[PartitionReport], list[str]]:
    header = parse_gpt_header(read(lba * sector_size, sector_size), lba, sector_size)
    array = read(header.entries_lba * sector_size, header.array_bytes)
    partitions, notes = parse_gpt_entries(array, header, sector_size)
    return header, partitions, notes


def _read_gpt(read: ReadAt, size: int, sector_size: int | None) -> PartitionTable:
    notes: list[str] = []
    sizes = (sector_size,) if sector_size else _GPT_SECTOR_SIZES
    primary_problem = "header signature missing"
    for ss in sizes:
        try:
            header, partitions, entry_notes = _load_gpt(read, 1, ss)
        except GptError as e:
            primary_problem = str(e)
            continue
        last_lba = size // ss - 1
        if header.alternate_lba != last_lba:
            notes.append(
                f"backup GPT header expected at LBA {last_lba} is at LBA {header.alternate_lba}"
                " (disk grown or image truncated?)"
            )
        try:
            _load_gpt(read, header.alternate_lba, ss)
        except GptError as e:
            notes.append(f"backup GPT header unusable: {e}")
        return PartitionTable("gpt", None, header.disk_guid, ss, partitions, notes + entry_notes)
    # The primary is damaged: the backup at the end of the disk exists for exactly this case.
    for ss in sizes:
        last_lba = size // ss - 1
        if last_lba < 2:
            notes.append(f"no backup GPT header: the image is too small for {ss}-byte sectors")
            continue
        try:
            header, partitions, entry_notes = _load_gpt(read, last_lba, ss)
        except GptError as e:
            notes.append(f"backup GPT header unusable: {e}")
            continue
        return PartitionTable(
            "gpt",
            f"primary {primary_problem}; backup header used",
            header.disk_guid,
            ss,
            partitions,
            notes + entry_notes,
        )
    return PartitionTable("gpt", primary_problem, notes=notes)


def overlaps(partitions: list[PartitionReport]) -> list[str]:
    """Notes on volumes sharing bytes (an extended partition contains its logicals: not one)."""
    notes = []
    furthest: PartitionReport | None = None  # of those seen, the one reaching furthest
    for part in sorted((p for p in partitions if p.kind != "extended"), key=lambda p: p.start):
        if furthest is not None and part.start < furthest.start + furthest.size:
            notes.append(f"partitions {furthest.index} and {part.index} overlap")
        if furthest is None or part.start + part.size > furthest.start + furthest.size:
            furthest = part
    return notes


def read_partition_table(read: ReadAt, size: int) -> PartitionTable:
    """Finds and decodes the disk's partition table, or kind "none" for a bare volume."""
    table = _read_table(read, size)
    clashes = overlaps(table.partitions)
    return replace(table, notes=table.notes + clashes) if clashes else table


def _read_table(read: ReadAt, size: int) -> PartitionTable:
    sector0 = read(0, MBR_SECTOR)
    if looks_like_vbr(sector0):
        return PartitionTable("none")
    mbr = parse_mbr(sector0)
    gpt_sector = next((ss for ss in _GPT_SECTOR_SIZES if read(ss, 8) == _GPT_SIGNATURE), None)
    if mbr is not None and any(e.type == _GPT_PROTECTIVE for e in mbr.entries):
        # A protective (or hybrid) MBR: the GPT is authoritative, as for Linux and UEFI.
        return _read_gpt(read, size, gpt_sector)
    if mbr is None and gpt_sector is not None:
        table = _read_gpt(read, size, gpt_sector)
        return replace(table, notes=["no protective MBR in sector 0", *table.notes])
    if mbr is not None:
        table = _read_mbr(read, mbr)
        if gpt_sector is not None:
            stale = "GPT header ignored: the MBR has no protective entry (stale GPT?)"
            table = replace(table, notes=[*table.notes, stale])
        return table
    if sector0[510:512] == _MBR_SIGNATURE:
        return PartitionTable("none", notes=["sector 0 ends in 55 AA but holds no valid MBR"])
    return PartitionTable("none")
