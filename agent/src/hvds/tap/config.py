"""The tap's configuration file (TOML), validated with pydantic.

[tap]
unix_socket = "/run/hvds/tap.sock"      # NBD on a unix socket (for QEMU on this host)
tcp = "127.0.0.1:10809"                 # NBD on TCP; omit to serve only the unix socket
vdsa_socket = "/run/hvds/vdsa.sock"     # where this host's VDSA takes the write copies
state_dir = "/var/lib/hvds/tap"         # dirty-block bitmaps
metrics = "127.0.0.1:9711"              # Prometheus endpoint; omit to disable

exports_dir = "/var/lib/hvds/tap/exports.d"   # drop-in files, see below
log_file = "/var/log/hvds/tap.log"      # also log here; omit under systemd (the journal)

[[export]]
name = "vm1-disk0"
path = "/var/lib/hvds/images/vm1-disk0.raw"

The VDSA manages the drop-in directory during recovery (decision 0012): each ``*.toml`` there
may add ``[[export]]`` entries (disks recovered here) and list ``detached`` export names (the
old copies of VMs failed over elsewhere, which no VM may write any more). The tap looks at the
directory every second and on SIGHUP.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from hvds.settings import ConfigError, HostPort, StrictModel, load_toml


class ExportConfig(StrictModel):
    name: Annotated[str, Field(min_length=1, max_length=4096)]
    path: Path
    read_only: bool = False
    description: str = ""


class TapSettings(StrictModel):
    unix_socket: Path | None = None
    tcp: HostPort | None = None
    vdsa_socket: Path | None = None
    state_dir: Path
    metrics: HostPort | None = None
    bitmap_block_size: Annotated[int, Field(ge=4096, le=64 * 1024 * 1024)] = 64 * 1024
    # Copies queued to the VDSA beyond this are not kept: their blocks go to the dirty bitmap.
    link_buffer_bytes: Annotated[int, Field(ge=1024 * 1024)] = 64 * 1024 * 1024
    tap_id: str = ""
    exports_dir: Path | None = None
    # Also write the log here (besides stderr); the VDSA reads it for the manager's bundles.
    log_file: Path | None = None

    @field_validator("tcp", "metrics", mode="before")
    @classmethod
    def _host_port(cls, value: object) -> object:
        return HostPort.coerce(value)

    @field_validator("bitmap_block_size")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError("must be a power of two")
        return value

    @model_validator(mode="after")
    def _listens_somewhere(self) -> TapSettings:
        if self.unix_socket is None and self.tcp is None:
            raise ValueError("set unix_socket, tcp or both")
        return self


class TapConfig(StrictModel):
    tap: TapSettings
    export: list[ExportConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> TapConfig:
        names = [e.name for e in self.export]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"export names must be unique, repeated: {', '.join(duplicates)}")
        return self


# Written by the tap into exports_dir after each change: the names it serves now.
SERVED_FILE = "served.json"


class ExportsDropIn(StrictModel):
    export: list[ExportConfig] = Field(default_factory=list)
    detached: list[str] = Field(default_factory=list)


def load_config(path: Path) -> TapConfig:
    return load_toml(path, TapConfig)


def drop_ins(config: TapConfig) -> dict[Path, ExportsDropIn]:
    directory = config.tap.exports_dir
    if directory is None or not directory.is_dir():
        return {}
    return {path: load_toml(path, ExportsDropIn) for path in sorted(directory.glob("*.toml"))}


def served_exports(config: TapConfig) -> list[ExportConfig]:
    """The exports to serve: the file's and the drop-ins', less the detached ones."""
    found = drop_ins(config)
    exports = list(config.export) + [e for drop in found.values() for e in drop.export]
    detached = {name for drop in found.values() for name in drop.detached}
    names = [e.name for e in exports]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"export names must be unique, repeated: {', '.join(repeated)}")
    return [e for e in exports if e.name not in detached]
