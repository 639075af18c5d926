"""FAT12/16/32 ("vfat"): the boot sector, and the volume label in the root directory."""

from __future__ import annotations

from dataclasses import dataclass

from hvds.analyzer.binary import ReadAt, field, is_power_of_two, le16, le32, text, u8
from hvds.analyzer.report import FilesystemReport

_NO_NAME = "NO NAME"
_ATTR_VOLUME_ID = 0x08
_ATTR_LONG_NAME = 0x0F
# A root directory is usually a few KiB; the label entry, when there is one, comes first.
_ROOT_DIR_MAX = 64 * 1024


@dataclass(frozen=True)
class BootSector:
    bytes_per_sector: int
    sectors_per_cluster: int
    reserved: int
    fats: int
    root_entries: int
    total_sectors: int
    fat_sectors: int
    root_cluster: int  # FAT32 only

    @property
    def root_dir_sectors(self) -> int:
        return (self.root_entries * 32 + self.bytes_per_sector - 1) // self.bytes_per_sector

    @property
    def first_data_sector(self) -> int:
        return self.reserved + self.fats * self.fat_sectors + self.root_dir_sectors

    @property
    def fat_type(self) -> str:
        # The cluster count alone decides the FAT type (Microsoft's FAT specification); the
        # "FAT16" string in the boot sector is only informative.
        clusters = (self.total_sectors - self.first_data_sector) // self.sectors_per_cluster
        return "FAT12" if clusters < 4085 else "FAT16" if clusters < 65525 else "FAT32"


def parse_boot_sector(sector: bytes) -> BootSector | None:
    """The BIOS parameter block, or None when the numbers cannot be those of a FAT volume."""
    if not (sector[0x36:0x39] == b"FAT" or sector[0x52:0x57] == b"FAT32") or sector[3:11] in (
        b"NTFS    ",
        b"EXFAT   ",
    ):
        return None
    bps, spc, reserved = le16(sector, 0x0B), u8(sector, 0x0D), le16(sector, 0x0E)
    fats, media = u8(sector, 0x10), u8(sector, 0x15)
    if not (
        is_power_of_two(bps)
        and 512 <= bps <= 4096
        and is_power_of_two(spc)
        and spc <= 128
        and reserved >= 1
        and 1 <= fats <= 4
        and (media == 0xF0 or media >= 0xF8)
    ):
        return None
    total = le16(sector, 0x13) or le32(sector, 0x20)
    fat_sectors = le16(sector, 0x16) or le32(sector, 0x24)
    boot = BootSector(
        bytes_per_sector=bps,
        sectors_per_cluster=spc,
        reserved=reserved,
        fats=fats,
        root_entries=le16(sector, 0x11),
        total_sectors=total,
        fat_sectors=fat_sectors,
        root_cluster=le32(sector, 0x2C) if le16(sector, 0x16) == 0 else 0,
    )
    if fat_sectors == 0 or total <= boot.first_data_sector:
        return None
    return boot


def probe(head: bytes) -> FilesystemReport | None:
    boot = parse_boot_sector(head[:512])
    if boot is None:
        return None
    fat_type = boot.fat_type
    # The extended BPB (serial number, label) sits after the FAT32-only fields on FAT32.
    ebpb = 0x40 if fat_type == "FAT32" else 0x24
    signature = u8(head, ebpb + 2)
    serial = le32(head, ebpb + 3) if signature in (0x28, 0x29) else None
    label = text(field(head, ebpb + 7, 11), "cp437") if signature == 0x29 else None
    return FilesystemReport(
        type="vfat",
        label=None if label == _NO_NAME else label,
        uuid=f"{serial >> 16:04X}-{serial & 0xFFFF:04X}" if serial is not None else None,
        size=boot.total_sectors * boot.bytes_per_sector,
        block_size=boot.sectors_per_cluster * boot.bytes_per_sector,
        version=fat_type,
    )


def root_dir_extent(boot: BootSector) -> tuple[int, int]:
    """Where the root directory starts and how much of it to read."""
    bps = boot.bytes_per_sector
    if boot.fat_type == "FAT32":
        # Only the root's first cluster: following its FAT chain is not worth it for a label.
        sector = boot.first_data_sector + (boot.root_cluster - 2) * boot.sectors_per_cluster
        length = boot.sectors_per_cluster * bps
    else:
        sector = boot.reserved + boot.fats * boot.fat_sectors
        length = boot.root_entries * 32
    return sector * bps, min(length, _ROOT_DIR_MAX)


def root_dir_label(directory: bytes) -> str | None:
    """The volume-label entry of a root directory."""
    for at in range(0, len(directory) - 31, 32):
        entry = directory[at : at + 32]
        if entry[0] == 0x00:
            break  # end of directory
        if entry[0] == 0xE5 or entry[11] == _ATTR_LONG_NAME:
            continue  # deleted, or a piece of a long file name
        if entry[11] & _ATTR_VOLUME_ID:
            return text(entry[:11], "cp437")
    return None


def refine(report: FilesystemReport, head: bytes, read: ReadAt) -> FilesystemReport:
    # Windows renames a volume in the root directory only, leaving the boot sector's copy
    # stale, so the root directory entry wins (as in blkid).
    boot = parse_boot_sector(head[:512])
    if boot is None or (boot.fat_type == "FAT32" and boot.root_cluster < 2):
        return report
    offset, length = root_dir_extent(boot)
    label = root_dir_label(read(offset, length))
    if label is None or label == _NO_NAME:
        return report
    return report.model_copy(update={"label": label})
