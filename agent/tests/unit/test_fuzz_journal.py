"""Fuzz of the journal reader: damaged segment files must be refused clearly or recovered to a
consistent state, never crash the reader or return wrong data (tests/journal_fuzz.py says
what is checked). CI-sized by default; the long run is ``make fuzz``."""

from __future__ import annotations

import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fuzzing import Figures, RandomChooser, examples, seed, watchdog
from journal_fuzz import Damage, Model, build_golden, check, damage

from hvds.journal.segments import SegmentScan, list_segments


@pytest.fixture(scope="module")
def golden() -> Iterator[tuple[Path, Path, Model]]:
    # tmpfs when there is one: every input copies a journal and opens it (fsyncs).
    base = "/dev/shm" if Path("/dev/shm").is_dir() else None
    root = Path(tempfile.mkdtemp(prefix="hvds-journal-fuzz-", dir=base))
    try:
        yield build_golden(root)
    finally:
        shutil.rmtree(root)


@pytest.mark.parametrize("which", ["crashed", "closed"])
def test_damaged_journals_are_refused_or_recovered_exactly(
    golden: tuple[Path, Path, Model], which: str
) -> None:
    crashed, closed, model = golden
    source = crashed if which == "crashed" else closed
    run_seed = seed()
    rng = random.Random(run_seed)
    chooser = RandomChooser(rng)
    figures = Figures(f"journal.{which}", seed=run_seed)
    outcomes = {"refused": 0, "recovered": 0, "recovered_with_cut": 0}
    work = source.parent / f"input-{which}"
    for n in range(examples(150)):
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(source, work)
        hurt = damage(chooser, work / "journal")
        try:
            with watchdog():
                outcome = check(work, model, hurt)
        except AssertionError as exc:
            raise AssertionError(f"seed {run_seed}, input {n}: {exc}") from exc
        except Exception as exc:
            raise AssertionError(
                f"seed {run_seed}, input {n}: the reader crashed on {hurt.actions}: {exc!r}"
            ) from exc
        if outcome.refused is not None:
            outcomes["refused"] += 1
        elif outcome.truncated:
            outcomes["recovered_with_cut"] += 1
        else:
            outcomes["recovered"] += 1
        figures.add(sum(len(a) for a in hurt.actions))
    shutil.rmtree(work, ignore_errors=True)
    figures.extra.update(outcomes)
    figures.report()


def test_every_segment_deleted_in_turn_is_refused_or_recovered_exactly(
    golden: tuple[Path, Path, Model],
) -> None:
    """Found by the fuzz: a deleted segment that still held the undo of a kept checkpoint
    was taken for one reclaimed, and read_at of that checkpoint returned the mirror's newer
    data. Snapshots now list the segments still needed and what they hold."""
    _, closed, model = golden
    work = closed.parent / "input-deleted"
    missing = []
    for number, path in list_segments(closed / "journal"):
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(closed, work)
        (work / "journal" / path.name).unlink()
        hurt = Damage()
        hurt.note(f"delete {path.name}", number, 0)
        outcome = check(work, model, hurt)
        if outcome.refused is not None and "segment missing" in outcome.refused:
            missing.append(number)
    shutil.rmtree(work, ignore_errors=True)
    assert len(missing) >= 5, missing  # the segments holding undo of kept checkpoints


def test_a_complete_segment_cut_at_a_record_boundary_is_refused(
    golden: tuple[Path, Path, Model],
) -> None:
    """Found by the long fuzz run: a segment other than the last, cut exactly between two
    records, scanned clean (nothing torn to see) and its lost records went unnoticed; read_at
    then returned newer data. Snapshots now record the final size of the segments still
    needed."""
    crashed, _, model = golden
    work = crashed.parent / "input-cut"
    segments = list_segments(crashed / "journal")
    refused = 0
    for number, path in segments[:-1]:
        starts = [item.offset for item in SegmentScan(path)]
        if len(starts) < 2:
            continue
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(crashed, work)
        with (work / "journal" / path.name).open("r+b") as f:
            f.truncate(starts[-1])  # the last record gone, the rest intact
        hurt = Damage()
        hurt.note(f"cut {path.name}@{starts[-1]}", number, starts[-1])
        outcome = check(work, model, hurt)
        refused += outcome.refused is not None and "when it was complete" in outcome.refused
    shutil.rmtree(work, ignore_errors=True)
    assert refused >= 5
