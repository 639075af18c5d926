"""The checkpoint barrier of a VPG whose disks live on several hosts (decision 0009).

Phase one asks every source VDSA of the VPG, at once, to hold the answers to the VPG's writes
and cut its stream; phase two, once all have cut (or one failed), releases them all. While held,
no write of the VPG completes, so no write after the cut on one host can have caused one before
the cut on another: the cuts together are a consistent checkpoint. The hold lasts about one
round trip to the slowest VDSA. The site manager drives this; `hvds-vdsa coordinate` does too.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from hvds.vdsa.control import request

log = logging.getLogger(__name__)


def coordinated_checkpoint(
    controls: list[Path], vpg: str, tag: str = "", description: str = ""
) -> bool:
    """Take one checkpoint of ``vpg`` across the VDSAs at ``controls``; True if every host cut."""
    cut = time.time_ns()  # names the checkpoint on every host, and says when it was taken
    hold = {"op": "hold", "vpg": vpg, "cut": cut, "tag": tag, "description": description}
    with ThreadPoolExecutor(max_workers=len(controls)) as pool:
        answers = list(pool.map(lambda path: _ask(path, hold), controls))
        list(pool.map(lambda path: _ask(path, {"op": "release", "vpg": vpg, "cut": cut}), controls))
    taken = all(answer.get("ok") and answer.get("taken") for answer in answers)
    if not taken:
        log.warning("checkpoint %d of %s not taken everywhere: %s", cut, vpg, answers)
    return taken


def _ask(path: Path, message: dict[str, Any]) -> dict[str, Any]:
    try:
        return request(path, message)
    except (OSError, ValueError) as exc:
        return {"ok": False, "error": f"{path}: {exc}"}
