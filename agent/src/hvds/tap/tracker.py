"""Which blocks of an export the VDSA may lack, and why.

A block is dirty in the persistent bitmap while either
- a copy of a write to it is in flight (sent, not yet acknowledged): counted in ``_pending``, or
- a copy was lost (VDSA down, link full, connection dropped): set in ``_lost``, waiting to be
  read back from the disk and sent again by the resync.
Only when neither holds is the bit cleared. After a restart nothing is known to be in flight, so
every set bit is treated as lost.
"""

from __future__ import annotations

from collections.abc import Iterator

from hvds.tap.bitmap import DirtyBitmap, block_range, iter_set_bits


class CopyTracker:
    def __init__(self, bitmap: DirtyBitmap) -> None:
        self.bitmap = bitmap
        self.block_size = bitmap.block_size
        self._pending: dict[int, int] = {}
        self._lost = bytearray((bitmap.blocks + 7) // 8)
        self.lost_blocks = 0
        for block in bitmap.set_blocks():
            self._mark_lost(block)

    @property
    def dirty_bytes(self) -> int:
        return self.bitmap.dirty_blocks * self.block_size

    def blocks(self, offset: int, length: int) -> range:
        return block_range(offset, length, self.block_size)

    def copy_sent(self, blocks: range) -> None:
        """A copy covering ``blocks`` is about to be written to disk and sent: mark it first."""
        pending = self._pending
        for block in blocks:
            pending[block] = pending.get(block, 0) + 1
            self.bitmap.set(block)

    def copy_acknowledged(self, blocks: range) -> None:
        pending = self._pending
        for block in blocks:
            left = pending[block] - 1
            if left:
                pending[block] = left
                continue
            del pending[block]
            if not self._is_lost(block):
                self.bitmap.clear(block)

    def copy_lost(self, blocks: range) -> None:
        """A write's copy could not be sent: its blocks wait for the resync."""
        for block in blocks:
            self.bitmap.set(block)
            self._mark_lost(block)

    def connection_lost(self) -> None:
        """Every copy in flight is gone with the connection; the bitmap still covers them."""
        for block in self._pending:
            self._mark_lost(block)
        self._pending.clear()

    def has_lost(self) -> bool:
        return self.lost_blocks > 0

    def lost(self) -> Iterator[int]:
        """Blocks to resend, in disk order; safe to take while the tracker changes."""
        for block in iter_set_bits(bytes(self._lost), self.bitmap.blocks):
            if self._is_lost(block):
                yield block

    def take_for_resync(self, block: int) -> None:
        """The resync is sending ``block`` again from the disk: it is now in flight."""
        self._lost[block >> 3] &= ~(1 << (block & 7)) & 0xFF
        self.lost_blocks -= 1
        self.copy_sent(range(block, block + 1))

    def _is_lost(self, block: int) -> bool:
        return bool(self._lost[block >> 3] & (1 << (block & 7)))

    def _mark_lost(self, block: int) -> None:
        if not self._is_lost(block):
            self._lost[block >> 3] |= 1 << (block & 7)
            self.lost_blocks += 1
