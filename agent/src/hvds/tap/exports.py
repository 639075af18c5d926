"""The exports the tap serves: each a disk, its dirty-block tracking and its metrics."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

from hvds.disk import Disk
from hvds.nbd.server import ExportInfo
from hvds.tap.bitmap import DirtyBitmap
from hvds.tap.config import ExportConfig
from hvds.tap.metrics import ExportStats
from hvds.tap.tracker import CopyTracker

log = logging.getLogger(__name__)


class Client(Protocol):
    def close(self) -> None: ...

    def deliver(self, reply: bytes) -> None: ...


@dataclass(eq=False)
class Hold:
    """A checkpoint barrier holds the answers to an export's writes and flushes: no write can
    complete, so none can cause another, until every host of the VPG has cut its stream."""

    cut: int
    replies: list[tuple[Client, bytes]] = field(default_factory=list)


@dataclass(eq=False)
class TapExport:
    id: int
    config: ExportConfig
    disk: Disk
    tracker: CopyTracker
    info: ExportInfo
    stats: ExportStats = field(default_factory=ExportStats)
    clients: set[Client] = field(default_factory=set)
    removed: bool = False
    hold: Hold | None = None

    def complete(self, client: Client, reply: bytes) -> bool:
        """Keep the answer to a write-like request while held; False if it may go now."""
        if self.hold is None:
            return False
        self.hold.replies.append((client, reply))
        return True

    def release(self) -> None:
        hold, self.hold = self.hold, None
        if hold is not None:
            for client, reply in hold.replies:
                client.deliver(reply)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def dirty_bytes(self) -> int:
        return self.tracker.dirty_bytes

    def close_if_unused(self) -> None:
        """Release the disk and bitmap of a removed export once its last client is gone."""
        if self.removed and not self.clients:
            self.tracker.bitmap.close()
            self.disk.close()


def bitmap_path(state_dir: Path, export_name: str) -> Path:
    return state_dir / f"{quote(export_name, safe='')}.bitmap"


class ExportRegistry:
    """Exports by name; implements the NBD core's ExportCatalog."""

    def __init__(self, state_dir: Path, bitmap_block_size: int) -> None:
        self._state_dir = state_dir
        self._block_size = bitmap_block_size
        self._by_name: dict[str, TapExport] = {}
        self._next_id = 1

    # ExportCatalog
    def lookup(self, name: str) -> ExportInfo | None:
        export = self._by_name.get(name)
        return export.info if export else None

    def names(self) -> Iterable[str]:
        return list(self._by_name)

    def __iter__(self) -> Iterator[TapExport]:
        return iter(list(self._by_name.values()))

    def get(self, name: str) -> TapExport | None:
        return self._by_name.get(name)

    def add(self, config: ExportConfig) -> TapExport:
        disk = Disk(config.path, read_only=config.read_only)
        try:
            bitmap = DirtyBitmap(
                bitmap_path(self._state_dir, config.name), disk.size, self._block_size
            )
        except OSError:
            disk.close()
            raise
        info = ExportInfo(config.name, disk.size, config.read_only, config.description)
        export = TapExport(self._next_id, config, disk, CopyTracker(bitmap), info)
        self._next_id += 1
        self._by_name[config.name] = export
        log.info(
            "export %s: %s, %d bytes, %d dirty blocks",
            config.name,
            config.path,
            disk.size,
            bitmap.dirty_blocks,
        )
        return export

    def remove(self, name: str) -> TapExport:
        export = self._by_name.pop(name)
        export.removed = True
        try:
            export.tracker.bitmap.sync()
            export.disk.flush()
        except OSError as exc:  # it goes all the same: a reload must not stop half-way
            log.error("export %s: flushing it on removal failed: %s", name, exc)
        for client in list(export.clients):
            client.close()
        export.close_if_unused()
        log.info("export %s removed", name)
        return export
