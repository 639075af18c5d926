"""The VDSA's hand on its host's tap during recovery, through the tap's drop-in directory
(``exports_dir``, decision 0012): it detaches the disks of VMs failed over elsewhere, so that no
VM left behind can write them (the split-brain guard), and publishes disks recovered here, so
that VMs run on them through the tap and their writes are protected again. Each change is
answered once the tap says (its SERVED_FILE) that it serves what was asked."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tomli_w

from hvds.files import write_atomic
from hvds.settings import ConfigError
from hvds.tap.config import SERVED_FILE, ExportsDropIn, TapConfig, drop_ins
from hvds.tap.config import load_config as load_tap_config

DETACHED_FILE = "detached.toml"
TAP_TIMEOUT_SECONDS = 10.0  # the tap looks at its drop-ins every second


class TapExports:
    def __init__(self, tap_config: Path | None) -> None:
        self._tap_config = tap_config

    def _config(self) -> tuple[TapConfig, Path]:
        if self._tap_config is None:
            raise ValueError("this VDSA has no tap_config: it cannot manage the tap's exports")
        try:
            config = load_tap_config(self._tap_config)
        except ConfigError as exc:
            raise ValueError(f"the tap's configuration: {exc}") from None
        if config.tap.exports_dir is None:
            raise ValueError(f"{self._tap_config} sets no exports_dir")
        return config, config.tap.exports_dir

    @staticmethod
    def _drop_ins(config: TapConfig) -> dict[Path, ExportsDropIn]:
        try:
            return drop_ins(config)
        except ConfigError as exc:  # then the tap refuses changes too: say which file
            raise ValueError(f"a drop-in of the tap is invalid: {exc}") from None

    @staticmethod
    def _write(directory: Path, name: str, drop_in: ExportsDropIn) -> None:
        content = tomli_w.dumps(drop_in.model_dump(mode="json", exclude_defaults=True))
        write_atomic(directory / name, content.encode(), mode=0o644)

    @staticmethod
    async def _served(directory: Path, done: Callable[[set[str]], bool]) -> None:
        """Until the tap says that it serves what ``done`` wants."""
        deadline = asyncio.get_running_loop().time() + TAP_TIMEOUT_SECONDS
        while True:
            try:
                served = set(json.loads((directory / SERVED_FILE).read_text())["exports"])
            except (OSError, ValueError, KeyError):
                served = None
            if served is not None and done(served):
                return
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"the tap did not take the change within "
                                   f"{TAP_TIMEOUT_SECONDS:.0f} s (is it running?)")  # fmt: skip
            await asyncio.sleep(0.1)

    async def detach(self, names: list[str], detached: bool = True) -> dict[str, Any]:
        """Stop serving (or serve again) these exports of the tap."""
        config, directory = self._config()
        current = set(
            self._drop_ins(config).get(directory / DETACHED_FILE, ExportsDropIn()).detached
        )
        wanted = current | set(names) if detached else current - set(names)
        self._write(directory, DETACHED_FILE, ExportsDropIn(detached=sorted(wanted)))
        if detached:
            await self._served(directory, lambda served: not served & set(names))
        else:
            await self._served(directory, lambda served: set(names) <= served)
        return {"detached": sorted(wanted)}

    async def publish(self, group: str, disks: dict[str, str]) -> dict[str, str]:
        """Serve recovered disks (name -> image path) through the tap; their NBD URIs. A disk
        that is a detached export's image is that export again (a failback).

        What the tap could not take is refused here, before anything is written: a drop-in the
        tap refuses stops it from applying any later change of its drop-ins, the split-brain
        guard's detaching included. So: a group name that is a file of ours, an export name
        another export has, a path that is not an existing image."""
        config, directory = self._config()
        if f"{group}.toml" == DETACHED_FILE:
            raise ValueError(f"group {group!r}: the name of the tap's list of detached disks")
        found = self._drop_ins(config)
        own = directory / f"{group}.toml"  # published again: its previous file is replaced
        every = list(config.export) + [e for drop in found.values() for e in drop.export]
        others = list(config.export) + [
            e for path, drop in found.items() if path != own for e in drop.export
        ]
        by_path = {str(export.path): export.name for export in every}
        taken = {export.name: str(export.path) for export in others}
        for name, path in disks.items():
            if path in by_path:
                continue
            if name in taken:
                raise ValueError(f"the tap serves {name!r} already (from {taken[name]})")
            _check_image(path)
        again = [by_path[path] for path in disks.values() if path in by_path]
        if again:
            await self.detach(again, detached=False)
        added = [{"name": name, "path": path} for name, path in disks.items()
                 if path not in by_path]  # fmt: skip
        if added:
            self._write(directory, f"{group}.toml", ExportsDropIn.model_validate({"export": added}))
        names = {name: by_path.get(path, name) for name, path in disks.items()}
        await self._served(directory, lambda served: set(names.values()) <= served)
        socket = config.tap.unix_socket
        return {name: f"nbd+unix:///{export}?socket={socket}" for name, export in names.items()}


def _check_image(path: str) -> None:
    """An image the tap can serve: an absolute path to a regular file or a block device."""
    if not os.path.isabs(path) or "\x00" in path:
        raise ValueError(f"{path!r} is not an absolute path")
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise ValueError(f"image {path}: {exc.strerror}") from None
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        raise ValueError(f"image {path} is neither a file nor a block device")
