"""The VDSA's configuration file (TOML), validated with pydantic.

One VDSA per host plays both roles: source for the protection groups (VPGs) whose disks this
host's tap serves, target for the VPGs replicated to this host.

    [vdsa]
    id = "host-a1"
    tap_socket = "/run/hvds/vdsa.sock"     # the tap's copies arrive here (source role)
    listen = "0.0.0.0:5400"                # source VDSAs of other sites connect here (target)
    journal_dir = "/var/lib/hvds/journal"
    metrics = "127.0.0.1:9712"

    [tls]                                  # mutual TLS between VDSAs
    ca = "/etc/hvds/pki/ca.pem"
    cert = "/etc/hvds/pki/vdsa.pem"
    key = "/etc/hvds/pki/vdsa.key"

    [[source_vpg]]
    name = "erp"
    checkpoint_interval = 1.0
    disks = [{ export = "erp-db-disk0", disk = 1 }]
    targets = [{ address = "192.0.2.20:5400", server_name = "vdsa-b1" }]

    [[target_vpg]]
    name = "crm"
    retention_hours = 4
    disks = [{ disk = 1, name = "crm-disk0", size = 10737418240,
               mirror = "/var/lib/hvds/mirrors/crm-disk0.raw" }]
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from hvds.settings import HostPort, StrictModel, load_toml


class TlsFiles(StrictModel):
    ca: Path
    cert: Path
    key: Path


class SourceDisk(StrictModel):
    export: Annotated[str, Field(min_length=1)]
    disk: Annotated[int, Field(ge=1, le=2**32 - 1)]


class TargetAddress(StrictModel):
    address: HostPort
    server_name: Annotated[str, Field(min_length=1)]

    @field_validator("address", mode="before")
    @classmethod
    def _host_port(cls, value: object) -> object:
        return HostPort.coerce(value)


class SourceVpg(StrictModel):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    disks: Annotated[list[SourceDisk], Field(min_length=1)]
    targets: Annotated[list[TargetAddress], Field(min_length=1)]
    checkpoint_interval: Annotated[float, Field(gt=0, le=3600)] = 1.0
    compression: bool = True
    # Bytes per second on the wire to each target; 0 is no limit.
    bandwidth_limit: Annotated[int, Field(ge=0)] = 0
    # Writes held for the targets beyond this stop being read from the tap, which then keeps
    # them in its dirty bitmap.
    max_unacknowledged_bytes: Annotated[int, Field(ge=1024 * 1024)] = 256 * 1024 * 1024
    # A VPG whose disks span hosts takes its checkpoints from a coordinator's barrier (the
    # site manager, or `hvds-vdsa coordinate`), not from this VDSA's timer.
    coordinated: bool = False

    @model_validator(mode="after")
    def _unique_disks(self) -> SourceVpg:
        ids = [d.disk for d in self.disks]
        exports = [d.export for d in self.disks]
        if len(set(ids)) != len(ids) or len(set(exports)) != len(exports):
            raise ValueError(f"VPG {self.name}: disk ids and exports must be unique")
        return self


class TargetDisk(StrictModel):
    disk: Annotated[int, Field(ge=1, le=2**32 - 1)]
    name: Annotated[str, Field(min_length=1)]
    size: Annotated[int, Field(gt=0)]
    mirror: Path
    # The id of the source VDSA (host) whose tap serves this disk, when the VPG spans hosts.
    source: str = ""


class TargetVpg(StrictModel):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    disks: Annotated[list[TargetDisk], Field(min_length=1)]
    retention_hours: Annotated[float, Field(gt=0, le=30 * 24)] = 1.0
    journal_size_limit: Annotated[int, Field(ge=64 * 1024 * 1024)] = 150 * 1024**3
    # How often the data analyzer looks again at mirrors that changed (seconds); 0: never.
    analysis_interval: Annotated[float, Field(ge=0)] = 60.0

    @property
    def sources(self) -> list[str]:
        """The source VDSAs feeding this VPG; [""] when it comes from a single host."""
        return sorted({disk.source for disk in self.disks})

    @model_validator(mode="after")
    def _sources_all_or_none(self) -> TargetVpg:
        if "" in self.sources and len(self.sources) > 1:
            raise ValueError(f"VPG {self.name}: give every disk its source, or none")
        return self


class VdsaSettings(StrictModel):
    id: Annotated[str, Field(min_length=1)]
    tap_socket: Path | None = None
    listen: HostPort | None = None
    journal_dir: Path | None = None
    metrics: HostPort | None = None
    # Local commands (checkpoint, status) as JSON lines; the site manager drives it.
    control_socket: Path | None = None
    # Where point-in-time views of replicated disks are served over NBD (target role).
    view_socket: Path | None = None

    @field_validator("listen", "metrics", mode="before")
    @classmethod
    def _host_port(cls, value: object) -> object:
        return HostPort.coerce(value)


class VdsaConfig(StrictModel):
    vdsa: VdsaSettings
    tls: TlsFiles | None = None
    source_vpg: list[SourceVpg] = Field(default_factory=list)
    target_vpg: list[TargetVpg] = Field(default_factory=list)

    @model_validator(mode="after")
    def _roles_complete(self) -> VdsaConfig:
        if self.source_vpg and self.vdsa.tap_socket is None:
            raise ValueError("source_vpg needs vdsa.tap_socket")
        if self.target_vpg and (self.vdsa.listen is None or self.vdsa.journal_dir is None):
            raise ValueError("target_vpg needs vdsa.listen and vdsa.journal_dir")
        if (self.source_vpg or self.target_vpg) and self.tls is None:
            raise ValueError("replication needs [tls]: VDSAs only talk over mutual TLS")
        for role in (self.source_vpg, self.target_vpg):
            names = [v.name for v in role]
            if len(set(names)) != len(names):
                raise ValueError("VPG names must be unique within a role")
        exports = [d.export for v in self.source_vpg for d in v.disks]
        if len(set(exports)) != len(exports):
            raise ValueError("an export can belong to one VPG of a host only")
        return self


def load_config(path: Path) -> VdsaConfig:
    return load_toml(path, VdsaConfig)
