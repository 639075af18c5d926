"""What the analyzer reports about a disk image: plain, frozen, JSON-ready models.

Every parser in the package builds these directly, so the JSON a user sees is the same data the
code passed around, with no second translation layer to drift.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Frozen(BaseModel):
    # Reports are values: frozen so a stage cannot quietly alter what an earlier one found, and
    # extra fields are refused so a typo in a parser fails in tests instead of vanishing.
    model_config = ConfigDict(frozen=True, extra="forbid")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)


class FilesystemReport(_Frozen):
    """A file system (or other volume format) found by its signature."""

    # blkid's names ("ext4", "xfs", "ntfs", "swap", "vfat", "btrfs", "LVM2_member", ...), so the
    # report reads the same as the tools an operator already knows; "unknown" when nothing matched.
    type: str
    label: str | None = None
    uuid: str | None = None
    # Size as the file system itself records it, in bytes (may differ from its partition's).
    size: int | None = None
    block_size: int | None = None
    version: str | None = None
    # Format-specific extras: ext features and last mount point, FAT type, LVM volume group, ...
    details: dict[str, str] = Field(default_factory=dict)
    # Anything odd: checksum mismatches, a truncated superblock, a journal needing recovery.
    notes: list[str] = Field(default_factory=list)


class OsReport(_Frozen):
    """The operating system installed on the disk, from its os-release file."""

    family: str
    id: str | None = None
    name: str | None = None
    version_id: str | None = None
    pretty_name: str | None = None
    version_codename: str | None = None
    id_like: str | None = None
    # Partition index the file came from; None when the whole disk is the file system.
    partition: int | None = None
    # The path actually read once symlinks were followed, e.g. "/usr/lib/os-release".
    source: str | None = None


class PartitionReport(_Frozen):
    index: int
    start: int
    size: int
    # "0x83" for an MBR type id, the upper-case type GUID for GPT.
    type: str
    type_name: str | None = None
    # GPT partition name; None on MBR.
    name: str | None = None
    # GPT unique partition GUID; None on MBR.
    uuid: str | None = None
    # MBR: "primary", "extended" or "logical"; None on GPT.
    kind: str | None = None
    bootable: bool | None = None
    # None for an extended partition (a container, not a volume); "unknown" type if unrecognised.
    filesystem: FilesystemReport | None = None
    notes: list[str] = Field(default_factory=list)


class DiskReport(_Frozen):
    path: str
    size: int
    # "none", "mbr" or "gpt", followed by the problem in parentheses when the table is damaged,
    # e.g. "gpt (header CRC mismatch)".
    partition_table: str
    # MBR disk signature ("0x1234abcd") or GPT disk GUID.
    disk_id: str | None = None
    sector_size: int | None = None
    partitions: list[PartitionReport] = Field(default_factory=list)
    # The file system spanning the whole disk, when there is no partition table.
    filesystem: FilesystemReport | None = None
    os: OsReport | None = None
    notes: list[str] = Field(default_factory=list)
