"""Fuzzing the journal reader: damage the segment files of a journal whose whole history is
known, open it, and check what it says against a model.

``build_golden`` plays a seeded history into a journal with small segments (writes, zeroes,
commits, checkpoints with tags, a rollback, a reclaim of the oldest checkpoints), keeping the
model: every disk's content at every checkpoint and at every sequence. Two copies are kept: one
taken while the journal was open (as kill -9 leaves it, with writes appended after the last
checkpoint) and one after a clean close.

Each input copies a golden directory (segments and mirrors) and damages it: bytes flipped,
overwritten or zeroed (a lost sector), a segment truncated, garbage appended to the last one, a
segment deleted, or several of these. Opening it must then either:

- refuse with ``JournalCorrupt`` (or another ``JournalError``) naming a file of the journal --
  counted as *refused*; any other exception is a crash and fails the test; or
- open (*recovered*), and then: every checkpoint it lists is one the history kept, with its
  sequence and tag, and ``read_at`` of it returns exactly the model's content for every disk,
  whole; the mirrors hold the latest listed checkpoint; ``last_seq`` is at least its sequence;
  nothing before the damage is lost (every checkpoint recorded before the first damaged byte is
  still listed); and the journal goes on working: a write appended after ``last_seq`` and a
  checkpoint read back as the model says.
"""

from __future__ import annotations

import hashlib
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from fuzzing import Chooser

from hvds.journal import (
    DiskSpec,
    Journal,
    JournalError,
    JournalWrite,
    JournalZero,
)
from hvds.journal.records import RecordType
from hvds.journal.segments import SegmentScan, list_segments

KiB = 1024
BLOCK = 4096
SIZES = {0: 64 * KiB, 1: 32 * KiB + 512}
SEGMENT_BYTES = 8 * KiB


def disks(root: Path) -> list[DiskSpec]:
    return [DiskSpec(d, f"disk{d}", size, root / f"mirror-{d}.img") for d, size in SIZES.items()]


def open_journal(root: Path) -> Journal:
    return Journal(root / "journal", disks(root), block_size=BLOCK, segment_bytes=SEGMENT_BYTES)


def digest(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Model:
    """What the history left: content by checkpoint, checkpoints kept, entries by sequence."""

    checkpoints: dict[int, tuple[int, str, dict[int, str]]] = field(default_factory=dict)
    history: list[JournalWrite | JournalZero] = field(default_factory=list)
    # (segment, end offset) of each kept checkpoint's CHECKPOINT record in the golden files.
    places: dict[int, tuple[int, int]] = field(default_factory=dict)

    def content_at(self, seq: int) -> dict[int, bytearray]:
        content = {d: bytearray(size) for d, size in SIZES.items()}
        for entry in self.history:
            if entry.seq > seq:
                break
            if isinstance(entry, JournalWrite):
                content[entry.disk][entry.offset : entry.offset + len(entry.data)] = entry.data
            else:
                content[entry.disk][entry.offset : entry.offset + entry.length] = bytes(
                    entry.length
                )
        return content


def _entries(rng: random.Random, seq: int) -> list[JournalWrite | JournalZero]:
    out: list[JournalWrite | JournalZero] = []
    for _ in range(rng.randint(1, 3)):
        seq += 1
        disk = rng.choice(list(SIZES))
        offset = rng.randrange(SIZES[disk] - 1)
        length = rng.randint(1, min(2 * BLOCK, SIZES[disk] - offset))
        if rng.random() < 0.15:
            out.append(JournalZero(seq, disk, offset, length))
        else:
            out.append(JournalWrite(seq, disk, offset, rng.randbytes(length)))
    return out


def build_golden(root: Path, seed: int = 1) -> tuple[Path, Path, Model]:
    """Two golden journals under ``root`` (open, closed) and the model of their history."""
    rng = random.Random(seed)
    work = root / "work"
    model = Model()
    journal = open_journal(work)
    seq = 0

    def checkpoint(n: int) -> None:
        cp = journal.checkpoint(tag=f"cp{n}", time_ns=n)
        content = model.content_at(cp.seq)
        model.checkpoints[cp.id] = (cp.seq, cp.tag, {d: digest(c) for d, c in content.items()})

    for n in range(1, 15):
        for _ in range(rng.randint(1, 4)):
            entries = _entries(rng, seq)
            journal.append(entries)
            model.history += entries
            seq = entries[-1].seq
            journal.commit()
        checkpoint(n)
        if n == 8:  # roll back to checkpoint 6: 7 and 8 and their entries are gone
            journal.rollback(6)
            seq = model.checkpoints[6][0]
            model.history = [e for e in model.history if e.seq <= seq]
            del model.checkpoints[7], model.checkpoints[8]
    journal.reclaim(now_ns=int(journal.retention_seconds * 1e9) + 3)  # drops times 1 and 2
    for cp_id in [c for c in model.checkpoints if c not in {x.id for x in journal.checkpoints()}]:
        del model.checkpoints[cp_id]
    assert sorted(model.checkpoints) == [c.id for c in journal.checkpoints()]
    for _ in range(3):  # entries after the last checkpoint, durable
        entries = _entries(rng, seq)
        journal.append(entries)
        model.history += entries
        seq = entries[-1].seq
        journal.commit()
    crashed = root / "crashed"
    shutil.copytree(work, crashed)  # as kill -9 would leave it: the journal still open
    journal.close()
    closed = root / "closed"
    shutil.copytree(work, closed)
    for number, path in list_segments(closed / "journal"):
        for item in SegmentScan(path):
            if item.header.type == RecordType.CHECKPOINT:
                from hvds.journal.records import decode_payload  # noqa: PLC0415

                mark = decode_payload(item.header.type, item.header.flags, item.payload)
                model.places[mark.id] = (number, item.offset + item.size)  # type: ignore[attr-defined]
    return crashed, closed, model


# -- damage ------------------------------------------------------------------------------------


@dataclass
class Damage:
    """What was done to the files; ``first`` is (segment, offset) of the earliest damaged byte."""

    actions: list[str] = field(default_factory=list)
    first: tuple[int, int] | None = None

    def note(self, action: str, segment: int, offset: int) -> None:
        self.actions.append(action)
        if self.first is None or (segment, offset) < self.first:
            self.first = (segment, offset)


def damage(c: Chooser, directory: Path) -> Damage:
    segments = list_segments(directory)
    done = Damage()
    for _ in range(c.integer(1, 3)):
        if not segments:
            break
        # Half the time the last segment: where a torn write can be told from corruption.
        number, path = segments[-1] if c.integer(0, 1) else c.pick(segments)
        data = bytearray(path.read_bytes())
        kind = c.integer(0, 6)
        if kind == 0 and data:  # flip bits of a few bytes
            for _ in range(c.integer(1, 4)):
                at = c.integer(0, len(data) - 1)
                data[at] ^= c.integer(1, 255)
                done.note(f"flip {path.name}@{at}", number, at)
        elif kind == 1 and data:  # overwrite with garbage
            at = c.integer(0, len(data) - 1)
            junk = c.blob(64) or b"\xff"
            data[at : at + len(junk)] = junk
            done.note(f"garbage {path.name}@{at}+{len(junk)}", number, at)
        elif kind == 2 and data:  # a lost sector: zeroes
            at = c.integer(0, len(data) - 1) & ~511
            data[at : at + 512] = bytes(min(512, len(data) - at))
            done.note(f"zero sector {path.name}@{at}", number, at)
        elif kind == 3:  # truncated
            at = c.integer(0, len(data))
            del data[at:]
            done.note(f"truncate {path.name}@{at}", number, at)
        elif kind == 4:  # garbage after the end (a torn append)
            junk = c.blob(300) or b"\x00"
            done.note(f"append {len(junk)} to {path.name}", number, len(data))
            data += junk
        elif kind == 5:  # a whole segment gone
            path.unlink()
            segments.remove((number, path))
            done.note(f"delete {path.name}", number, 0)
            continue
        else:  # the end of a record repeated (a write replayed by a confused disk)
            at = c.integer(0, len(data))
            piece = data[max(0, at - 64) : at]
            data[at:at] = piece
            done.note(f"repeat {len(piece)} at {path.name}@{at}", number, at)
        path.write_bytes(bytes(data))
    return done


# -- the check ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    refused: str | None = None  # the error's message when the journal was refused
    checkpoints: int = 0  # listed after recovery
    truncated: bool = False


def check(root: Path, model: Model, hurt: Damage) -> Outcome:
    """Open the damaged journal in ``root``; assert the contract; say what happened."""
    try:
        journal = open_journal(root)
    except JournalError as exc:
        assert str(root / "journal") in str(exc) or "segment" in str(exc), f"unclear: {exc}"
        return Outcome(refused=str(exc))
    with journal:
        listed = journal.checkpoints()
        kept = {c.id for c in listed}
        # Nothing before the damage is lost.
        for cp_id, place in model.places.items():
            if cp_id in model.checkpoints and (hurt.first is None or place <= hurt.first):
                assert cp_id in kept, f"checkpoint {cp_id} lost ({hurt.actions})"
        for cp in listed:
            assert cp.id in model.checkpoints, f"checkpoint {cp.id} was not kept ({hurt.actions})"
            seq, tag, want = model.checkpoints[cp.id]
            assert (cp.seq, cp.tag) == (seq, tag), f"checkpoint {cp.id} changed ({hurt.actions})"
            for spec in disks(root):
                got = journal.read_at(cp.id, spec.id, 0, spec.size)
                assert digest(got) == want[spec.id], (
                    f"wrong data: checkpoint {cp.id} disk {spec.id} ({hurt.actions})"
                )
        if listed:
            latest = listed[-1]
            assert journal.last_seq >= latest.seq
            for spec in disks(root):
                assert digest(spec.mirror.read_bytes()) == model.checkpoints[latest.id][2][spec.id]
        # And it goes on working.
        seq = journal.last_seq
        journal.append([JournalWrite(seq + 1, 0, 4096, b"after recovery")])
        cp = journal.checkpoint(tag="after")
        want = model.content_at(seq)[0]
        want[4096 : 4096 + 14] = b"after recovery"
        assert digest(journal.read_at(cp.id, 0, 0, SIZES[0])) == digest(want), hurt.actions
        return Outcome(checkpoints=len(listed), truncated=journal.recovery.truncated is not None)
