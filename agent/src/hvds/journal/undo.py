"""Where the undo data of each applied interval is, and how a past checkpoint is read from it.

Interval ``i`` is what checkpoint ``i`` added after the checkpoint before it. Its undo holds,
for every block the interval touched, the block's content just before the interval: the
content at the previous checkpoint. So the content of a block at checkpoint ``j`` is the undo
of the first interval after ``j`` that touched the block, or the mirror's if none did.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from hvds.journal.segments import Location


@dataclass(frozen=True, slots=True)
class UndoRef:
    """One UNDO record: whole blocks of a disk from ``offset`` (block-aligned)."""

    location: Location
    disk: int
    offset: int
    length: int
    zero: bool  # the blocks were all zeroes; the record carries no data


class IntervalUndo:
    __slots__ = ("attempt", "blocks", "records")

    def __init__(self, attempt: int) -> None:
        self.attempt = attempt
        self.records: list[UndoRef] = []
        self.blocks: dict[tuple[int, int], UndoRef] = {}  # (disk, block number) -> record


class UndoIndex:
    """Undo records by interval. Only one capture attempt per interval counts: a later attempt
    (a retry after a crash or a full disk) replaces what an earlier one left."""

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self._intervals: dict[int, IntervalUndo] = {}

    def begin(self, interval: int, attempt: int) -> None:
        self._intervals[interval] = IntervalUndo(attempt)

    def add(self, interval: int, attempt: int, ref: UndoRef) -> None:
        entry = self._intervals.get(interval)
        if entry is None or entry.attempt < attempt:
            entry = self._intervals[interval] = IntervalUndo(attempt)
        elif entry.attempt > attempt:
            return  # left by an abandoned attempt
        entry.records.append(ref)
        for block in blocks_of(ref.offset, ref.length, self.block_size):
            entry.blocks[(ref.disk, block)] = ref

    def get(self, interval: int, attempt: int) -> IntervalUndo | None:
        entry = self._intervals.get(interval)
        return entry if entry is not None and entry.attempt == attempt else None

    def drop(self, interval: int) -> None:
        self._intervals.pop(interval, None)

    def retain(self, wanted: dict[int, int]) -> None:
        """Keep only the intervals in ``wanted`` (interval -> attempt), at that attempt."""
        for interval in list(self._intervals):
            if wanted.get(interval) != self._intervals[interval].attempt:
                del self._intervals[interval]


def blocks_of(offset: int, length: int, block_size: int) -> range:
    if length <= 0:
        return range(0)
    return range(offset // block_size, (offset + length - 1) // block_size + 1)


def block_runs(blocks: Iterable[int], max_blocks: int) -> Iterator[tuple[int, int]]:
    """(first block, count) runs of consecutive blocks, at most ``max_blocks`` long."""
    first = count = -1
    for block in sorted(blocks):
        if count > 0 and block == first + count and count < max_blocks:
            count += 1
            continue
        if count > 0:
            yield first, count
        first, count = block, 1
    if count > 0:
        yield first, count


@dataclass(frozen=True, slots=True)
class Piece:
    offset: int
    length: int
    source: UndoRef | None  # None: the mirror's current content


def plan_read(
    layers: Sequence[IntervalUndo], disk: int, offset: int, length: int, block_size: int
) -> list[Piece]:
    """Where each part of ``[offset, offset+length)`` of ``disk`` comes from at a checkpoint.

    ``layers`` are the undo of the intervals after that checkpoint, oldest first.
    """
    pieces: list[Piece] = []
    end = offset + length
    for block in blocks_of(offset, length, block_size):
        source = None
        for layer in layers:
            source = layer.blocks.get((disk, block))
            if source is not None:
                break
        start = max(offset, block * block_size)
        stop = min(end, (block + 1) * block_size)
        last = pieces[-1] if pieces else None
        if last is not None and last.source == source and last.offset + last.length == start:
            pieces[-1] = Piece(last.offset, stop - last.offset, source)
        else:
            pieces.append(Piece(start, stop - start, source))
    return pieces
