"""The data analyzer against real disk images built with the real tools (nothing is mounted).

The expected values are the ones the images were built with, and where util-linux has an
opinion (sfdisk for partition tables, blkid for file systems) the analyzer must agree with it.
"""

from __future__ import annotations

import json
import random
import shutil
import zlib
from pathlib import Path

import pytest
from disk_images import (
    DEBIAN_12,
    SECTOR,
    UBUNTU_2404,
    MiB,
    Part,
    blkid,
    btrfs,
    ext,
    gpt_disk,
    have,
    loop_device,
    loop_devices_usable,
    make_volume,
    mbr_disk,
    ntfs,
    run,
    sfdisk_json,
    swap,
    tree,
    vfat,
    write_at,
    xfs,
)

from hvds.analyzer import DiskReport, analyze
from hvds.analyzer.cli import main
from hvds.analyzer.os_release import parse_os_release

_TOOLS = ("sfdisk", "blkid", "debugfs", "mkfs.ext4", "mkfs.xfs", "mkswap", "mkntfs", "mkfs.vfat")
pytestmark = pytest.mark.skipif(
    not have(*_TOOLS, "mkfs.btrfs"),
    reason="needs fdisk, util-linux, e2fsprogs, xfsprogs, ntfs-3g, dosfstools and btrfs-progs",
)

ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_FS = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
LINUX_SWAP = "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"
LINUX_LVM = "E6D6D379-F507-44C2-A23C-238F2A3DF928"
MS_DATA = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
DISK_GUID = "0DDBA11A-5EED-4B1D-8BAD-F00DCAFEBABE"

BOOT_UUID = "b0b0b0b0-0000-4000-8000-000000000001"
ROOT_UUID = "b0b0b0b0-0000-4000-8000-000000000002"
SWAP_UUID = "b0b0b0b0-0000-4000-8000-000000000003"
XFS_UUID = "b0b0b0b0-0000-4000-8000-000000000004"
BTRFS_UUID = "b0b0b0b0-0000-4000-8000-000000000005"
PART_UUID = "C0C0C0C0-0000-4000-8000-00000000000{}"


@pytest.fixture(scope="module")
def gpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GPT disk with one of each file system; /boot comes before / to test the OS search."""
    work = tmp_path_factory.mktemp("gpt")
    root = tree(work / "root", {"etc/os-release": DEBIAN_12, "etc/hostname": "vm1\n"})
    parts = [
        Part(4, ESP, vfat("ESP", "1234ABCD"), name="EFI system partition"),
        Part(4, LINUX_FS, ext("ext4", "boot", BOOT_UUID), name="boot"),
        Part(8, LINUX_FS, ext("ext4", "root", ROOT_UUID, root), name="root"),
        Part(2, LINUX_SWAP, swap("swap0", SWAP_UUID), name="swap"),
        Part(16, LINUX_FS, xfs("data", XFS_UUID), name="data"),
        Part(4, MS_DATA, ntfs("Windows"), name="Basic data partition"),
        Part(16, LINUX_FS, btrfs("pool", BTRFS_UUID), name="pool"),
        Part(1, LINUX_LVM, name="spare"),
    ]
    for number, part in enumerate(parts, 1):
        part.uuid = PART_UUID.format(number)
    parts[0].bootable = True
    path = work / "gpt.img"
    gpt_disk(path, parts, DISK_GUID, size_mib=57)
    return path


@pytest.fixture(scope="module")
def gpt_report(gpt: Path) -> DiskReport:
    return analyze(gpt)


def test_gpt_table_matches_sfdisk(gpt: Path, gpt_report: DiskReport) -> None:
    table = sfdisk_json(gpt)
    assert gpt_report.partition_table == "gpt"
    assert gpt_report.disk_id == DISK_GUID == table["id"]
    assert gpt_report.sector_size == SECTOR
    assert gpt_report.size == 57 * MiB
    assert gpt_report.filesystem is None
    assert gpt_report.notes == []
    expected = table["partitions"]
    assert isinstance(expected, list)
    assert [p.index for p in gpt_report.partitions] == list(range(1, 9))
    for got, want in zip(gpt_report.partitions, expected, strict=True):
        assert got.start == want["start"] * SECTOR
        assert got.size == want["size"] * SECTOR
        assert got.type == want["type"]
        assert got.uuid == want["uuid"]
        assert got.name == want["name"]
        assert got.kind is None
        assert got.notes == []
    names = [(p.type_name, p.name) for p in gpt_report.partitions]
    assert names == [
        ("EFI System", "EFI system partition"),
        ("Linux filesystem", "boot"),
        ("Linux filesystem", "root"),
        ("Linux swap", "swap"),
        ("Linux filesystem", "data"),
        ("Microsoft basic data", "Basic data partition"),
        ("Linux filesystem", "pool"),
        ("Linux LVM", "spare"),
    ]
    assert [p.bootable for p in gpt_report.partitions] == [True] + [False] * 7


def test_gpt_filesystems(gpt_report: DiskReport) -> None:
    fs = {p.index: p.filesystem for p in gpt_report.partitions}
    got = {
        i: f and (f.type, f.label, f.uuid, f.size, f.block_size, f.version) for i, f in fs.items()
    }
    # mkntfs picks the volume serial number itself; blkid's test checks how it is spelled.
    ntfs_serial = fs[6].uuid if fs[6] else None
    assert ntfs_serial is not None and len(ntfs_serial) == 16 and ntfs_serial.isupper()
    assert got == {
        1: ("vfat", "ESP", "1234-ABCD", 4 * MiB, 2048, "FAT12"),
        2: ("ext4", "boot", BOOT_UUID, 4 * MiB, 1024, "1.0"),
        3: ("ext4", "root", ROOT_UUID, 8 * MiB, 1024, "1.0"),
        # The page holding the swap header counts: mkswap reports 4 KiB less as usable.
        4: ("swap", "swap0", SWAP_UUID, 2 * MiB, None, "1"),
        5: ("xfs", "data", XFS_UUID, 16 * MiB, 4096, "V5"),
        # mkntfs keeps the partition's last sector for the backup boot sector.
        6: ("ntfs", "Windows", ntfs_serial, 4 * MiB - 512, 4096, "3.1"),
        7: ("btrfs", "pool", BTRFS_UUID, 16 * MiB, 4096, None),
        8: ("unknown", None, None, None, None, None),
    }
    for f in fs.values():
        assert f is not None
        assert f.notes == ([] if f.type != "unknown" else ["all zeros (unformatted?)"])
    assert fs[3] is not None and "extent" in fs[3].details["features"].split()
    assert fs[4] is not None and fs[4].details == {"page_size": "4096"}
    assert fs[7] is not None and fs[7].details["devices"] == "1"


def test_gpt_filesystems_agree_with_blkid(gpt: Path, gpt_report: DiskReport) -> None:
    for part in gpt_report.partitions:
        assert part.filesystem is not None
        want = blkid(gpt, part.start, part.size)
        got = part.filesystem
        assert got.type == want.get("TYPE", "unknown"), part.index
        assert got.label == want.get("LABEL"), part.index
        assert got.uuid == want.get("UUID"), part.index
        if "VERSION" in want and got.type in ("vfat", "ext4"):
            assert got.version == want["VERSION"]
        if "UUID_SUB" in want:
            assert got.details["uuid_sub"] == want["UUID_SUB"]


def test_gpt_os_is_found_on_the_root_not_on_boot(gpt_report: DiskReport) -> None:
    os_info = gpt_report.os
    assert os_info is not None
    assert os_info.to_dict() == {
        "family": "linux",
        "id": "debian",
        "name": "Debian GNU/Linux",
        "version_id": "12",
        "pretty_name": "Debian GNU/Linux 12 (bookworm)",
        "version_codename": "bookworm",
        "id_like": None,
        "partition": 3,
        "source": "/etc/os-release",
    }


def test_report_is_json(gpt: Path, gpt_report: DiskReport) -> None:
    data = json.loads(gpt_report.to_json())
    assert data["partitions"][2]["filesystem"]["label"] == "root"
    assert DiskReport.model_validate(data) == gpt_report


def test_cli_prints_the_report(gpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(gpt), "--compact"]) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 1
    assert json.loads(out)["os"]["pretty_name"] == "Debian GNU/Linux 12 (bookworm)"
    assert main([str(gpt.parent / "absent.img")]) == 1
    assert "cannot read" in capsys.readouterr().err


# --- os-release variants, on bare ext4 disks (no partition table) ------------------------------


def bare_ext(tmp_path: Path, kind: str, root: Path | None, name: str = "bare") -> Path:
    """A 4 MiB disk that is one ext file system, no partition table."""
    return make_volume(tmp_path, name, 4 * MiB, ext(kind, "bare", ROOT_UUID, root))


def test_bare_ext4_disk(tmp_path: Path) -> None:
    disk = bare_ext(tmp_path, "ext4", tree(tmp_path / "root", {"etc/os-release": DEBIAN_12}))
    report = analyze(disk)
    assert report.partition_table == "none"
    assert report.partitions == []
    assert report.filesystem is not None
    fs = report.filesystem
    assert (fs.type, fs.label, fs.uuid) == ("ext4", "bare", ROOT_UUID)
    assert fs.size == 4 * MiB
    assert report.os is not None
    assert (report.os.id, report.os.version_id, report.os.partition) == ("debian", "12", None)


def test_os_release_symlink_on_gpt(tmp_path: Path) -> None:
    # What most distributions ship: /etc/os-release -> ../usr/lib/os-release.
    root = tree(
        tmp_path / "root",
        {"usr/lib/os-release": UBUNTU_2404},
        symlinks={"etc/os-release": "../usr/lib/os-release"},
    )
    disk = tmp_path / "disk.img"
    gpt_disk(disk, [Part(6, LINUX_FS, ext("ext4", "root", ROOT_UUID, root))], DISK_GUID, 8)
    report = analyze(disk)
    assert report.os is not None
    assert report.os.to_dict() == {
        "family": "linux",
        "id": "ubuntu",
        "name": "Ubuntu",
        "version_id": "24.04",
        "pretty_name": "Ubuntu 24.04 LTS",
        "version_codename": None,
        "id_like": "debian",
        "partition": 1,
        "source": "/usr/lib/os-release",
    }


@pytest.mark.parametrize(
    ("files", "links", "source"),
    [
        # No /etc/os-release at all: os-release(5) says to read /usr/lib/os-release.
        ({"usr/lib/os-release": DEBIAN_12}, {}, "/usr/lib/os-release"),
        # An absolute link through a second link, and a link too long to fit in the inode
        # (debugfs shows no "Fast link dest" for those; the target is in a data block).
        (
            {"usr/lib/os-release.d/" + "x" * 80: DEBIAN_12},
            {
                "etc/os-release": "/etc/alternatives/os-release",
                "etc/alternatives/os-release": "../../usr/lib/os-release.d/" + "x" * 80,
            },
            "/usr/lib/os-release.d/" + "x" * 80,
        ),
    ],
    ids=["usr-lib-only", "link-chain"],
)
def test_os_release_found(
    tmp_path: Path, files: dict[str, str], links: dict[str, str], source: str
) -> None:
    report = analyze(bare_ext(tmp_path, "ext4", tree(tmp_path / "root", files, links)))
    assert report.os is not None
    assert (report.os.id, report.os.source) == ("debian", source)
    assert report.notes == []


def test_os_release_absent_or_looping(tmp_path: Path) -> None:
    plain = bare_ext(tmp_path, "ext2", tree(tmp_path / "a", {"etc/hostname": "x\n"}), "a")
    report = analyze(plain)
    assert report.filesystem is not None and report.filesystem.type == "ext2"
    assert report.os is None
    assert report.notes == []
    loop = tree(tmp_path / "b", {}, {"etc/os-release": "os-release"})
    report = analyze(bare_ext(tmp_path, "ext4", loop, "b"))
    assert report.os is None
    assert report.notes == [
        "cannot read os-release from the disk: too many levels of symbolic links at /etc/os-release"
    ]


def test_os_release_on_damaged_ext4_is_a_note(tmp_path: Path) -> None:
    disk = bare_ext(tmp_path, "ext4", tree(tmp_path / "root", {"etc/os-release": DEBIAN_12}))
    with disk.open("r+b") as f:  # garbage over the group descriptors (block 2 with 1 KiB blocks)
        f.seek(2048)
        f.write(random.Random(7).randbytes(1024))
    report = analyze(disk)
    assert report.filesystem is not None and report.filesystem.type == "ext4"
    assert report.os is None
    assert len(report.notes) == 1
    assert report.notes[0].startswith("cannot read os-release from the disk: ")


def test_image_path_with_a_question_mark(tmp_path: Path) -> None:
    # debugfs splits its device name at "?"; the analyzer hands it the open descriptor instead.
    disk = bare_ext(tmp_path, "ext3", tree(tmp_path / "root", {"etc/os-release": DEBIAN_12}))
    odd = disk.rename(tmp_path / "vm?offset=1.img")
    report = analyze(odd)
    assert report.filesystem is not None and report.filesystem.type == "ext3"
    assert report.os is not None and report.os.id == "debian"


def test_parse_os_release_quoting() -> None:
    text = (
        '# comment\nNAME="Fedora Linux"\nVERSION_ID=40\nPRETTY_NAME="Say \\"hi\\" \\$x"\n'
        "ID='fedora'\nnot an assignment\nBROKEN=\"unterminated\nEMPTY=\n"
    )
    assert parse_os_release(text) == {
        "NAME": "Fedora Linux",
        "VERSION_ID": "40",
        "PRETTY_NAME": 'Say "hi" $x',
        "ID": "fedora",
        "BROKEN": "unterminated",
        "EMPTY": "",
    }


# --- MBR -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mbr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("mbr")
    # The OS lives on a logical partition, so the search must look beyond the primaries.
    root = tree(work / "root", {"etc/os-release": UBUNTU_2404})
    parts = [
        Part(6, "83", ext("ext3", "legacy", BOOT_UUID), bootable=True),
        Part(
            20,
            "5",
            logicals=[
                Part(6, "83", ext("ext2", "logical", ROOT_UUID, root)),
                Part(8, "c", vfat("SHARED", "0000BEEF", ("-F", "16", "-s", "1"))),
                Part(2, "82", swap("swap1", SWAP_UUID)),
            ],
        ),
    ]
    path = work / "mbr.img"
    mbr_disk(path, parts, "0x12345678", size_mib=28)
    return path


def test_mbr_disk(mbr: Path) -> None:
    report = analyze(mbr)
    assert report.partition_table == "mbr"
    assert report.disk_id == "0x12345678"
    assert report.notes == []
    table = sfdisk_json(mbr)
    assert table["id"] == "0x12345678"
    expected = table["partitions"]
    assert isinstance(expected, list)
    assert [p.index for p in report.partitions] == [1, 2, 5, 6, 7]
    for got, want in zip(report.partitions, expected, strict=True):
        assert (got.start, got.size) == (want["start"] * SECTOR, want["size"] * SECTOR)
        assert got.type == f"0x{int(want['type'], 16):02x}"
        assert got.bootable == want.get("bootable", False)
    summary = [
        (p.kind, p.type, p.type_name, p.filesystem and p.filesystem.type) for p in report.partitions
    ]
    assert summary == [
        ("primary", "0x83", "Linux", "ext3"),
        ("extended", "0x05", "Extended", None),
        ("logical", "0x83", "Linux", "ext2"),
        ("logical", "0x0c", "W95 FAT32 (LBA)", "vfat"),
        ("logical", "0x82", "Linux swap / Solaris", "swap"),
    ]
    for part in report.partitions:
        if part.filesystem is not None:
            want_fs = blkid(mbr, part.start, part.size)
            assert part.filesystem.type == want_fs["TYPE"]
            assert part.filesystem.label == want_fs.get("LABEL")
            assert part.filesystem.uuid == want_fs.get("UUID")
    vfat_fs = report.partitions[3].filesystem
    assert vfat_fs is not None
    assert (vfat_fs.version, vfat_fs.uuid, vfat_fs.label) == ("FAT16", "0000-BEEF", "SHARED")
    assert report.os is not None
    assert (report.os.id, report.os.version_id, report.os.partition) == ("ubuntu", "24.04", 5)


def test_bare_fat32_is_not_mistaken_for_an_mbr(tmp_path: Path) -> None:
    # A FAT boot sector ends in 55 AA like an MBR, and its entry area is mostly zeros.
    fat32 = vfat("BIGFAT", "DEADBEEF", ("-F", "32"))
    disk = make_volume(tmp_path, "superfloppy", 34 * MiB, fat32)
    report = analyze(disk)
    assert report.partition_table == "none"
    assert report.filesystem is not None
    fs = report.filesystem
    assert (fs.type, fs.label, fs.uuid, fs.version) == ("vfat", "BIGFAT", "DEAD-BEEF", "FAT32")
    want = blkid(disk)
    assert (fs.label, fs.uuid, fs.version) == (want["LABEL"], want["UUID"], want["VERSION"])


@pytest.mark.skipif(not loop_devices_usable(), reason="needs root and loop devices")
def test_4k_sector_gpt_with_an_xfs_root(tmp_path: Path) -> None:
    # 4Kn disks put the GPT header at byte 4096. The OS stays unknown (only ext is searched),
    # and the report says so instead of leaving a bare null.
    disk = tmp_path / "4kn.img"
    parts = [Part(16, LINUX_FS, xfs("root", XFS_UUID), name="root")]
    starts = gpt_disk(disk, parts, DISK_GUID, 18, sector_size=4096)
    report = analyze(disk)
    assert_clean(report)
    assert (report.partition_table, report.sector_size) == ("gpt", 4096)
    (part,) = report.partitions
    assert (part.start, part.size, part.name) == (starts[0], 16 * MiB, "root")
    assert part.filesystem is not None and part.filesystem.type == "xfs"
    assert report.os is None
    assert report.notes == [
        "os-release is read from ext2/3/4 only; not searched: partition 1 (xfs)"
    ]


def test_overlapping_mbr_partitions(tmp_path: Path) -> None:
    disk = tmp_path / "overlap.img"
    mbr_disk(disk, [Part(2, "83"), Part(2, "83"), Part(2, "83")], "0x0badcafe", 8)
    # Move partition 3 back to 1.5 MiB, into partition 1 and over partition 2's start.
    poke(disk, 446 + 2 * 16 + 8, (3 * MiB // 2 // SECTOR).to_bytes(4, "little"))
    report = analyze(disk)
    assert_clean(report)
    assert report.partition_table == "mbr"
    assert report.notes == ["partitions 1 and 3 overlap", "partitions 3 and 2 overlap"]


def test_not_an_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(OSError, match="not a disk image"):
        analyze(tmp_path)
    assert main([str(tmp_path)]) == 1
    assert "not a disk image" in capsys.readouterr().err


# --- damaged and garbage images ---------------------------------------------------------------


def copy_of(src: Path, dst: Path, length: int | None = None) -> Path:
    if length is None:
        shutil.copyfile(src, dst)  # sparse-unaware, but the image is small
    else:
        with src.open("rb") as f:
            dst.write_bytes(f.read(length))
    return dst


def poke(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)


def flip(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0xFF]))


def assert_clean(report: DiskReport) -> None:
    """No stage of the analysis fell into the fence that catches unexpected errors."""
    text = report.to_json()
    assert "analyzer error" not in text, text


@pytest.mark.parametrize("size", [0, 1, 100, 511, 512, 513, 4096, 4 * MiB])
def test_zero_and_tiny_images(tmp_path: Path, size: int) -> None:
    disk = tmp_path / "zero.img"
    with disk.open("wb") as f:
        f.truncate(size)
    report = analyze(disk)
    assert_clean(report)
    assert report.size == size
    assert report.partition_table == "none"
    assert report.partitions == []
    assert report.os is None
    assert report.filesystem is not None and report.filesystem.type == "unknown"
    assert report.filesystem.notes == (["no data"] if size == 0 else ["all zeros (unformatted?)"])
    assert report.notes == (["image is empty"] if size == 0 else [])


@pytest.mark.parametrize("seed", range(6))
def test_random_bytes(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    disk = tmp_path / "random.img"
    disk.write_bytes(rng.randbytes(rng.choice([300, 4096, 70_000, 1 * MiB])))
    report = analyze(disk)
    assert_clean(report)
    assert report.partition_table == "none"
    assert report.filesystem is not None and report.filesystem.type == "unknown"


def test_truncated_gpt_header(gpt: Path, tmp_path: Path) -> None:
    # The protective MBR and the first 88 of the header's 92 bytes.
    report = analyze(copy_of(gpt, tmp_path / "short.img", 512 + 88))
    assert_clean(report)
    assert report.partition_table == "gpt (header truncated)"
    assert report.partitions == []
    assert report.notes == ["no backup GPT header: the image is too small for 512-byte sectors"]


def test_gpt_cut_after_two_partitions(gpt: Path, tmp_path: Path) -> None:
    # A replica whose copy stopped early: the table is whole but points past the end.
    report = analyze(copy_of(gpt, tmp_path / "cut.img", 6 * MiB))
    assert_clean(report)
    assert report.partition_table == "gpt"
    assert len(report.partitions) == 8
    assert any("backup GPT header" in n for n in report.notes)
    boot, root = report.partitions[1], report.partitions[2]
    assert boot.notes == ["extends past the end of the image (image truncated?)"]
    assert boot.filesystem is not None and boot.filesystem.type == "ext4"
    assert root.notes[0] == "starts past the end of the image"
    assert root.filesystem is not None and root.filesystem.type == "unknown"


def test_gpt_primary_crc_flipped_uses_the_backup(
    gpt: Path, gpt_report: DiskReport, tmp_path: Path
) -> None:
    disk = copy_of(gpt, tmp_path / "crc.img")
    flip(disk, SECTOR + 16)  # a byte of the primary header's CRC32 field
    report = analyze(disk, find_os=False)
    assert_clean(report)
    assert report.partition_table == "gpt (primary header CRC mismatch; backup header used)"
    assert report.partitions == gpt_report.partitions
    flip(disk, disk.stat().st_size - SECTOR + 16)  # and now the backup's too
    report = analyze(disk, find_os=False)
    assert_clean(report)
    assert report.partition_table == "gpt (header CRC mismatch)"
    assert report.partitions == []
    assert report.notes == ["backup GPT header unusable: header CRC mismatch"]


def test_gpt_entry_array_damaged(gpt: Path, gpt_report: DiskReport, tmp_path: Path) -> None:
    disk = copy_of(gpt, tmp_path / "entries.img")
    flip(disk, 2 * SECTOR + 56)  # first letter of partition 1's name
    report = analyze(disk, find_os=False)
    assert report.partition_table == (
        "gpt (primary partition entries CRC mismatch; backup header used)"
    )
    assert report.partitions == gpt_report.partitions


def test_gpt_header_with_a_consistent_crc_but_absurd_entry_count(gpt: Path, tmp_path: Path) -> None:
    # A header whose CRC was recomputed after the damage: only the sanity checks can catch it.
    disk = copy_of(gpt, tmp_path / "absurd.img")
    with disk.open("r+b") as f:
        header = bytearray(f.read(2 * SECTOR)[SECTOR : SECTOR + 92])
    header[80:84] = (1 << 24).to_bytes(4, "little")
    header[16:20] = bytes(4)
    header[16:20] = zlib.crc32(bytes(header)).to_bytes(4, "little")
    poke(disk, SECTOR, bytes(header))
    report = analyze(disk, find_os=False)
    assert report.partition_table == (
        "gpt (primary partition entry array implausible; backup header used)"
    )
    assert len(report.partitions) == 8


def test_damaged_superblock_checksum(gpt: Path, gpt_report: DiskReport, tmp_path: Path) -> None:
    disk = copy_of(gpt, tmp_path / "sb.img")
    root = gpt_report.partitions[2]
    flip(disk, root.start + 1024 + 0x78)  # the ext4 label, covered by metadata_csum
    xfs_part = gpt_report.partitions[4]
    flip(disk, xfs_part.start + 108)  # the XFS label, covered by the V5 superblock CRC
    report = analyze(disk, find_os=False)
    assert_clean(report)
    root_fs, xfs_fs = report.partitions[2].filesystem, report.partitions[4].filesystem
    assert root_fs is not None and root_fs.type == "ext4"
    assert root_fs.notes == ["superblock checksum mismatch"]
    assert xfs_fs is not None and xfs_fs.type == "xfs"
    assert xfs_fs.notes == ["superblock CRC mismatch"]


def test_hibernated_swap(gpt: Path, gpt_report: DiskReport, tmp_path: Path) -> None:
    # Hibernating, the kernel replaces the swap signature in place; the header stays.
    disk = copy_of(gpt, tmp_path / "hibernated.img")
    swap_part = gpt_report.partitions[3]
    poke(disk, swap_part.start + 4096 - 10, b"S1SUSPEND\0")
    fs = analyze(disk, find_os=False).partitions[3].filesystem
    assert fs is not None
    assert (fs.type, fs.label, fs.uuid) == ("swsuspend", "swap0", SWAP_UUID)
    assert blkid(disk, swap_part.start, swap_part.size)["TYPE"] == "swsuspend"


def test_fuzzed_metadata_never_breaks_the_analysis(mbr: Path, tmp_path: Path) -> None:
    """Random bytes over the tables, EBRs and superblocks: every run still yields a report."""
    disk = copy_of(mbr, tmp_path / "fuzz.img")
    report = analyze(disk, find_os=False)
    hot = [0, 440, 446, 510]  # MBR signature, entries, magic
    for part in report.partitions:
        hot += [part.start + off for off in (0, 3, 11, 13, 0x24, 0x40, 1024, 1024 + 0x38)]
        if part.kind == "logical":
            hot += [part.start - MiB + 446 + i for i in range(0, 32, 4)]  # its EBR
    rng = random.Random(1234)
    for _ in range(300):
        spots = [rng.choice(hot) + rng.randrange(64) for _ in range(rng.randint(1, 6))]
        saved = []
        with disk.open("r+b") as f:
            for spot in spots:
                f.seek(spot)
                saved.append((spot, f.read(4)))
                f.seek(spot)
                f.write(rng.randbytes(4))
        assert_clean(analyze(disk, find_os=False))
        with disk.open("r+b") as f:
            for spot, data in reversed(saved):
                f.seek(spot)
                f.write(data)


def test_ebr_chain_loop_is_cut(mbr: Path, tmp_path: Path) -> None:
    disk = copy_of(mbr, tmp_path / "loop.img")
    report = analyze(disk, find_os=False)
    extended, first_logical = report.partitions[1], report.partitions[2]
    ebr = first_logical.start - MiB  # where sfdisk put the first EBR, at the extended start
    assert ebr == extended.start
    # Point the second EBR's link back at the first.
    second_ebr = report.partitions[3].start - MiB
    poke(disk, second_ebr + 446 + 16 + 8, (0).to_bytes(4, "little"))
    report = analyze(disk, find_os=False)
    assert_clean(report)
    assert [p.index for p in report.partitions] == [1, 2, 5, 6]
    assert report.notes == ["extended partition 2: EBR chain loops; stopped"]


# --- LVM ------------------------------------------------------------------------------------


@pytest.mark.skipif(
    not (loop_devices_usable() and have("pvcreate")), reason="needs root, loop devices and lvm2"
)
def test_lvm_physical_volume(tmp_path: Path) -> None:
    # LVM only works on block devices, so the PV is made on a loop device over a file, which is
    # then copied into a partition. Nothing is activated: the VG has no logical volumes.
    pv = tmp_path / "pv.vol"
    with pv.open("wb") as f:
        f.truncate(8 * MiB)
    # No devices file, hints, udev or metadata backups: leave nothing of the test on the host.
    config = (
        'devices { use_devicesfile=0 hints="none" obtain_device_list_from_udev=0 } '
        "backup { backup=0 archive=0 } activation { udev_sync=0 udev_rules=0 }"
    )
    with loop_device(pv) as device:
        run("pvcreate", "-q", "--config", config, device)
        run("vgcreate", "-q", "--config", config, "hvdstestvg", device)
        uuid = run("pvs", "--config", config, "--noheadings", "-o", "pv_uuid", device).strip()
    disk = tmp_path / "lvm.img"
    starts = gpt_disk(disk, [Part(8, LINUX_LVM, name="pv")], DISK_GUID, 10)
    write_at(disk, starts[0], pv)
    report = analyze(disk)
    fs = report.partitions[0].filesystem
    assert fs is not None
    assert (fs.type, fs.uuid, fs.size) == ("LVM2_member", uuid, 8 * MiB)
    assert fs.details == {"vg_name": "hvdstestvg"}
    assert fs.notes == []
    assert blkid(disk, starts[0], 8 * MiB)["UUID"] == uuid
    assert report.os is None
    assert report.notes == [
        "os-release is read from ext2/3/4 only; not searched: partition 1 (LVM2_member)"
    ]
