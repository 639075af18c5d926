"""The VDSA's data analyzer: what a replicated disk image holds, read without mounting it.

    analyze(path) -> DiskReport   partition table (MBR/GPT), file system per partition, OS

Modules, one job each: image (bounded reads), partitions (MBR/GPT), filesystems (signature
dispatch and the ext/XFS/swap/btrfs superblocks), fat, ntfs and lvm (their formats), debugfs
(files out of an ext file system), os_release (the OS), report (the models), cli (JSON output).
"""

from hvds.analyzer.analyze import analyze
from hvds.analyzer.report import DiskReport, FilesystemReport, OsReport, PartitionReport

__all__ = ["DiskReport", "FilesystemReport", "OsReport", "PartitionReport", "analyze"]
