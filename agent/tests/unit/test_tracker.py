"""The dirty-block bitmap and the bookkeeping of copies in flight and lost."""

from __future__ import annotations

from pathlib import Path

from hvds.tap.bitmap import DirtyBitmap, block_range
from hvds.tap.tracker import CopyTracker

BLOCK = 64 * 1024
SIZE = 10 * BLOCK + 123  # a partial last block


def test_block_range_covers_every_touched_block() -> None:
    assert block_range(0, 1, BLOCK) == range(0, 1)
    assert block_range(BLOCK - 1, 2, BLOCK) == range(0, 2)
    assert block_range(BLOCK, BLOCK, BLOCK) == range(1, 2)
    assert block_range(5, 0, BLOCK) == range(0)


def test_bits_persist_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "d.bitmap"
    bitmap = DirtyBitmap(path, SIZE, BLOCK)
    for block in (0, 3, 10):
        bitmap.set(block)
    bitmap.clear(3)
    bitmap.close()
    reopened = DirtyBitmap(path, SIZE, BLOCK)
    assert list(reopened.set_blocks()) == [0, 10]
    assert reopened.dirty_blocks == 2


def test_other_geometry_marks_everything_dirty(tmp_path: Path) -> None:
    path = tmp_path / "d.bitmap"
    DirtyBitmap(path, SIZE, BLOCK).close()
    grown = DirtyBitmap(path, SIZE + BLOCK, BLOCK)
    assert grown.dirty_blocks == grown.blocks == 12
    assert list(grown.set_blocks()) == list(range(12))


def test_damaged_header_marks_everything_dirty(tmp_path: Path) -> None:
    path = tmp_path / "d.bitmap"
    DirtyBitmap(path, SIZE, BLOCK).close()
    with path.open("r+b") as f:
        f.write(b"garbage!")
    assert DirtyBitmap(path, SIZE, BLOCK).dirty_blocks == 11


def test_block_clean_only_when_every_copy_is_acknowledged(tmp_path: Path) -> None:
    tracker = CopyTracker(DirtyBitmap(tmp_path / "b", SIZE, BLOCK))
    first, second = tracker.blocks(0, 10), tracker.blocks(5, BLOCK)
    tracker.copy_sent(first)
    tracker.copy_sent(second)
    assert list(tracker.bitmap.set_blocks()) == [0, 1]
    tracker.copy_acknowledged(first)
    assert list(tracker.bitmap.set_blocks()) == [0, 1]  # block 0 still has a copy in flight
    tracker.copy_acknowledged(second)
    assert tracker.bitmap.dirty_blocks == 0


def test_lost_copy_keeps_block_dirty_until_resent_and_acknowledged(tmp_path: Path) -> None:
    tracker = CopyTracker(DirtyBitmap(tmp_path / "b", SIZE, BLOCK))
    in_flight = tracker.blocks(0, 10)
    tracker.copy_sent(in_flight)
    tracker.copy_lost(tracker.blocks(0, 10))
    tracker.copy_acknowledged(in_flight)
    assert list(tracker.lost()) == [0] and tracker.bitmap.dirty_blocks == 1
    tracker.take_for_resync(0)
    assert not tracker.has_lost() and tracker.bitmap.dirty_blocks == 1
    tracker.copy_acknowledged(range(0, 1))
    assert tracker.bitmap.dirty_blocks == 0


def test_connection_loss_turns_in_flight_into_lost(tmp_path: Path) -> None:
    tracker = CopyTracker(DirtyBitmap(tmp_path / "b", SIZE, BLOCK))
    tracker.copy_sent(tracker.blocks(BLOCK * 2, BLOCK * 2))
    tracker.connection_lost()
    assert list(tracker.lost()) == [2, 3]
    assert tracker.dirty_bytes == 2 * BLOCK


def test_restart_treats_every_set_bit_as_lost(tmp_path: Path) -> None:
    path = tmp_path / "b"
    tracker = CopyTracker(DirtyBitmap(path, SIZE, BLOCK))
    tracker.copy_sent(tracker.blocks(BLOCK * 7, 1))
    tracker.bitmap.close()  # the tap dies with the copy unacknowledged
    assert list(CopyTracker(DirtyBitmap(path, SIZE, BLOCK)).lost()) == [7]
