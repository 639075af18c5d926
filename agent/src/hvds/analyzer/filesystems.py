"""Which file system (or volume format) a partition holds, from its signature and superblock.

Each probe is a pure function of the first HEAD_BYTES of the volume, returning a report when
its signature is there and None otherwise. A few formats keep their label elsewhere (NTFS in
the MFT, FAT in the root directory, LVM in its metadata area): those also have a refine step
that reads what it needs through a ReadAt bounded to the volume.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import crc32c

from hvds.analyzer import fat, lvm, ntfs
from hvds.analyzer.binary import (
    ReadAt,
    TruncatedError,
    be16,
    be32,
    be64,
    field,
    is_power_of_two,
    le16,
    le32,
    le64,
    text,
    uuid_str,
)
from hvds.analyzer.report import FilesystemReport

# Enough for every signature below: the furthest is btrfs's superblock, 4 KiB at 64 KiB.
HEAD_BYTES = 0x10000 + 0x1000


def _crc32c(data: bytes) -> int:
    return int(crc32c.crc32c(data))


# --- ext2/3/4 --------------------------------------------------------------------------------

_EXT_SB = 1024
_EXT_COMPAT = {
    0x1: "dir_prealloc", 0x2: "imagic_inodes", 0x4: "has_journal", 0x8: "ext_attr",
    0x10: "resize_inode", 0x20: "dir_index", 0x200: "sparse_super2", 0x400: "fast_commit",
    0x800: "stable_inodes", 0x1000: "orphan_file",
}  # fmt: skip
_EXT_INCOMPAT = {
    0x1: "compression", 0x2: "filetype", 0x4: "needs_recovery", 0x8: "journal_dev",
    0x10: "meta_bg", 0x40: "extent", 0x80: "64bit", 0x100: "mmp", 0x200: "flex_bg",
    0x400: "ea_inode", 0x1000: "dirdata", 0x2000: "metadata_csum_seed", 0x4000: "large_dir",
    0x8000: "inline_data", 0x10000: "encrypt", 0x20000: "casefold",
}  # fmt: skip
_EXT_RO_COMPAT = {
    0x1: "sparse_super", 0x2: "large_file", 0x4: "btree_dir", 0x8: "huge_file",
    0x10: "uninit_bg", 0x20: "dir_nlink", 0x40: "extra_isize", 0x100: "quota",
    0x200: "bigalloc", 0x400: "metadata_csum", 0x1000: "read-only", 0x2000: "project",
    0x8000: "verity", 0x10000: "orphan_present",
}  # fmt: skip
_EXT_HAS_JOURNAL = 0x4
_EXT_NEEDS_RECOVERY = 0x4
_EXT_JOURNAL_DEV = 0x8
_EXT_64BIT = 0x80
_EXT_METADATA_CSUM = 0x400
# What ext3 knows (as in blkid): anything beyond these makes the file system ext4, since an
# ext3 driver would refuse to mount it; a journal then tells ext3 from ext2.
_EXT3_INCOMPAT = 0x2 | 0x4 | 0x10
_EXT3_RO_COMPAT = 0x1 | 0x2 | 0x4


def _flag_names(value: int, names: dict[int, str]) -> list[str]:
    known = [name for bit, name in names.items() if value & bit]
    unknown = value & ~sum(names)
    return known + ([f"unknown(0x{unknown:x})"] if unknown else [])


def ext_type(compat: int, incompat: int, ro_compat: int) -> str:
    if incompat & _EXT_JOURNAL_DEV:
        return "jbd"  # an external journal device, not a mountable file system
    if incompat & ~_EXT3_INCOMPAT or ro_compat & ~_EXT3_RO_COMPAT:
        return "ext4"
    return "ext3" if compat & _EXT_HAS_JOURNAL else "ext2"


def probe_ext(head: bytes) -> FilesystemReport | None:
    if head[_EXT_SB + 0x38 : _EXT_SB + 0x3A] != b"\x53\xef":
        return None
    sb = field(head, _EXT_SB, 1024)
    compat, incompat, ro_compat = le32(sb, 0x5C), le32(sb, 0x60), le32(sb, 0x64)
    notes: list[str] = []
    log_block = le32(sb, 0x18)
    block_size = 1024 << log_block if log_block <= 6 else None
    blocks = le32(sb, 0x04) | ((le32(sb, 0x150) << 32) if incompat & _EXT_64BIT else 0)
    if block_size is None:
        notes.append(f"implausible block size exponent {log_block}")
    if ro_compat & _EXT_METADATA_CSUM and le32(sb, 0x3FC) != ~_crc32c(sb[:0x3FC]) & 0xFFFFFFFF:
        notes.append("superblock checksum mismatch")
    if incompat & _EXT_NEEDS_RECOVERY:
        # Normal for a crash-consistent replica of a mounted file system; debugfs reads the
        # state before the journal is replayed, so recent changes may not show.
        notes.append("journal needs recovery")
    if le16(sb, 0x3A) & 0x2:
        notes.append("file system has errors")
    details = {
        "features": " ".join(
            _flag_names(compat, _EXT_COMPAT)
            + _flag_names(incompat, _EXT_INCOMPAT)
            + _flag_names(ro_compat, _EXT_RO_COMPAT)
        )
    }
    last_mounted = text(sb[0x88:0xC8])
    if last_mounted:
        details["last_mounted"] = last_mounted
    return FilesystemReport(
        type=ext_type(compat, incompat, ro_compat),
        label=text(sb[0x78:0x88]),
        uuid=uuid_str(sb[0x68:0x78]),
        size=blocks * block_size if block_size else None,
        block_size=block_size,
        version=f"{le32(sb, 0x4C)}.{le16(sb, 0x3E)}",
        details=details,
        notes=notes,
    )


# --- XFS -------------------------------------------------------------------------------------


def probe_xfs(head: bytes) -> FilesystemReport | None:
    if head[:4] != b"XFSB":
        return None
    block_size, blocks = be32(head, 4), be64(head, 8)
    version, sector_size = be16(head, 100) & 0xF, be16(head, 102)
    label = text(field(head, 108, 12))
    notes: list[str] = []
    if not (is_power_of_two(block_size) and 512 <= block_size <= 65536):
        notes.append(f"implausible block size {block_size}")
        block_size = 0
    if version >= 5 and is_power_of_two(sector_size) and 512 <= sector_size <= 32768:
        # V5 superblocks carry a CRC32C of the sector, stored little-endian with the field as 0.
        sector = bytearray(field(head, 0, sector_size))
        stored = le32(bytes(sector), 224)
        sector[224:228] = bytes(4)
        if _crc32c(bytes(sector)) != stored:
            notes.append("superblock CRC mismatch")
    return FilesystemReport(
        type="xfs",
        label=label,
        uuid=uuid_str(field(head, 32, 16)),
        size=blocks * block_size if block_size else None,
        block_size=block_size or None,
        version=f"V{version}",
        notes=notes,
    )


# --- Linux swap ------------------------------------------------------------------------------

_SWAP_PAGE_SIZES = (4096, 8192, 16384, 32768, 65536)
_SWAP_V1 = b"SWAPSPACE2"
_SWAP_V0 = b"SWAP-SPACE"
# Hibernation images written over swap (swsuspend, uswsusp, TuxOnIce): the disk holds a
# suspended system, which matters when deciding whether the replica boots cleanly.
_SUSPEND_SIGNATURES = (
    b"S1SUSPEND", b"S2SUSPEND", b"ULSUSPEND", b"\xed\xc3\x02\xe9\x98\x56\xe5\x0c", b"LINHIB0001",
)  # fmt: skip


def probe_swap(head: bytes) -> FilesystemReport | None:
    for page in _SWAP_PAGE_SIZES:
        signature = head[page - 10 : page]
        if signature == _SWAP_V0:
            return FilesystemReport(type="swap", version="0", details={"page_size": str(page)})
        suspended = any(signature.startswith(s) for s in _SUSPEND_SIGNATURES)
        if signature != _SWAP_V1 and not suspended:
            continue
        kind = "swsuspend" if suspended else "swap"
        # The v1 header is in the swapping host's byte order; version 1 tells which that was.
        endian = "<" if le32(head, 1024) == 1 else ">" if be32(head, 1024) == 1 else None
        if endian is None:
            return FilesystemReport(type=kind, notes=["unsupported swap header version"])
        last_page = le32(head, 1028) if endian == "<" else be32(head, 1028)
        return FilesystemReport(
            type=kind,
            label=text(field(head, 1052, 16)),
            uuid=uuid_str(field(head, 1036, 16)),
            size=(last_page + 1) * page,
            version="1",
            details={"page_size": str(page)},
        )
    return None


# --- btrfs -----------------------------------------------------------------------------------

_BTRFS_SB = 0x10000


def probe_btrfs(head: bytes) -> FilesystemReport | None:
    if head[_BTRFS_SB + 0x40 : _BTRFS_SB + 0x48] != b"_BHRfS_M":
        return None
    sb = field(head, _BTRFS_SB, 0x1000)
    notes: list[str] = []
    if le16(sb, 0xC4) == 0 and le32(sb, 0) != _crc32c(sb[0x20:]):
        notes.append("superblock checksum mismatch")  # csum type 0 is CRC32C
    devices = le64(sb, 0x88)
    if devices > 1:
        notes.append(f"one of {devices} devices of a multi-device file system")
    details = {"devices": str(devices)}
    dev_uuid = uuid_str(sb[0x10B:0x11B])
    if dev_uuid:
        details["uuid_sub"] = dev_uuid
    return FilesystemReport(
        type="btrfs",
        label=text(sb[0x12B:0x22B]),
        uuid=uuid_str(sb[0x20:0x30]),
        size=le64(sb, 0x70),
        block_size=le32(sb, 0x90),
        details=details,
        notes=notes,
    )


# --- dispatch --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Format:
    name: str  # reported when the signature is there but the structure is cut short
    probe: Callable[[bytes], FilesystemReport | None]
    refine: Callable[[FilesystemReport, bytes, ReadAt], FilesystemReport] | None = None


# Most specific signatures first; FAT's is the weakest (a few strings and sane numbers), so it
# comes last among those at sector 0.
FORMATS = (
    Format("LVM2_member", lvm.probe, lvm.refine),
    Format("xfs", probe_xfs),
    Format("ext", probe_ext),
    Format("btrfs", probe_btrfs),
    Format("ntfs", ntfs.probe, ntfs.refine),
    Format("vfat", fat.probe, fat.refine),
    Format("swap", probe_swap),
)


def _matches(head: bytes) -> list[tuple[Format, FilesystemReport]]:
    found = []
    for fmt in FORMATS:
        try:
            report = fmt.probe(head)
        except TruncatedError:
            report = FilesystemReport(type=fmt.name, notes=["superblock truncated"])
        if report is not None:
            found.append((fmt, report))
    return found


def identify(head: bytes) -> list[FilesystemReport]:
    """Every format whose signature is in `head`, most trustworthy first (pure)."""
    return [report for _, report in _matches(head)]


def probe(read: ReadAt, size: int) -> FilesystemReport:
    """What the volume of `size` bytes behind `read` holds; type "unknown" if nothing matched."""
    head = read(0, HEAD_BYTES)
    found = _matches(head)
    if not found:
        if not head:
            return FilesystemReport(type="unknown", notes=["no data"])
        if not any(head):
            return FilesystemReport(type="unknown", notes=["all zeros (unformatted?)"])
        return FilesystemReport(type="unknown")
    fmt, report = found[0]
    if fmt.refine is not None:
        try:
            report = fmt.refine(report, head, read)
        except TruncatedError:
            report = report.model_copy(update={"notes": [*report.notes, "metadata truncated"]})
    notes = list(report.notes)
    if len(found) > 1:
        # Stale signatures from an earlier format; blkid calls such a volume ambivalent.
        notes.append("also has signatures of: " + ", ".join(r.type for _, r in found[1:]))
    if report.size is not None and report.size > size:
        notes.append(f"file system ({report.size} bytes) is larger than its volume ({size})")
    return report.model_copy(update={"notes": notes})
