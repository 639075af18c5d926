"""The VDSA's configuration file (TOML), validated with pydantic.

One VDSA per host plays both roles: source for the protection groups (VPGs) whose disks this
host's tap serves, target for the VPGs replicated to this host.

    [vdsa]
    id = "host-a1"
    tap_socket = "/run/hvds/vdsa.sock"     # the tap's copies arrive here (source role)
    listen = "0.0.0.0:5400"                # source VDSAs of other sites connect here (target)
    journal_dir = "/var/lib/hvds/journal"
    metrics = "127.0.0.1:9712"
    log_file = "/var/log/hvds/vdsa.log"     # also log here; omit under systemd (the journal)

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

from hvds.settings import ConfigError, HostPort, StrictModel, load_toml


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


class ManagerLink(StrictModel):
    """Where this host registers and heartbeats: its site's manager (hvds-manager)."""

    url: Annotated[str, Field(pattern=r"^https?://")]
    token_file: Path  # a bearer token of role "host", readable by root only
    ca: Path | None = None  # verify the manager's TLS against this CA; system CAs if unset
    heartbeat_interval: Annotated[float, Field(gt=0, le=300)] = 5.0
    # How the manager reaches this VDSA's control socket, and peers its target role.
    control_url: str = ""  # default: unix:// + control_socket
    replication_address: str = ""  # default: vdsa.listen


class Datastore(StrictModel):
    """A directory where the manager may place mirrors of replicated disks."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")]
    path: Path


class VdsaSettings(StrictModel):
    id: Annotated[str, Field(min_length=1)]
    tap_socket: Path | None = None
    listen: HostPort | None = None
    journal_dir: Path | None = None
    metrics: HostPort | None = None
    # Local commands (checkpoint, status) as JSON lines; the site manager drives it.
    control_socket: Path | None = None
    # The same over TCP with mutual TLS, for a site manager on another machine; only clients
    # whose certificate names one of control_clients are served.
    control_listen: HostPort | None = None
    control_clients: list[str] = Field(default_factory=list)
    # Where point-in-time views of replicated disks are served over NBD (target role).
    view_socket: Path | None = None
    # The VPGs the site manager pushed (`configure`), kept here (JSON) across restarts.
    managed_config: Path | None = None
    # The tap's configuration, read to report this host's disks (exports) to the manager.
    tap_config: Path | None = None
    # QEMU's accelerators for recovered VMs, in order of preference ("tcg": emulation only).
    vm_accel: str = "kvm:tcg"
    # The recovery scripts a VPG may name (pre_script, post_script); none may run without it.
    scripts_dir: Path | None = None
    # Also write the log here (it goes to stderr, the journal under systemd, all the same);
    # the manager's log bundles read this host's logs here, else from the journal.
    log_file: Path | None = None

    @field_validator("listen", "metrics", "control_listen", mode="before")
    @classmethod
    def _host_port(cls, value: object) -> object:
        return HostPort.coerce(value)


class ManagedVpgs(StrictModel):
    """What the site manager decides for a host: the VPGs it protects and those it keeps."""

    source_vpg: list[SourceVpg] = Field(default_factory=list)
    target_vpg: list[TargetVpg] = Field(default_factory=list)


class VdsaConfig(StrictModel):
    vdsa: VdsaSettings
    tls: TlsFiles | None = None
    manager: ManagerLink | None = None
    datastore: list[Datastore] = Field(default_factory=list)
    source_vpg: list[SourceVpg] = Field(default_factory=list)
    target_vpg: list[TargetVpg] = Field(default_factory=list)

    def with_managed(self, managed: ManagedVpgs) -> VdsaConfig:
        """This configuration plus the manager's VPGs, validated as a whole."""
        merged = self.model_dump()
        merged["source_vpg"] += managed.model_dump()["source_vpg"]
        merged["target_vpg"] += managed.model_dump()["target_vpg"]
        return VdsaConfig.model_validate(merged)

    @model_validator(mode="after")
    def _roles_complete(self) -> VdsaConfig:
        if self.source_vpg and self.vdsa.tap_socket is None:
            raise ValueError("source_vpg needs vdsa.tap_socket")
        if self.target_vpg and (self.vdsa.listen is None or self.vdsa.journal_dir is None):
            raise ValueError("target_vpg needs vdsa.listen and vdsa.journal_dir")
        if (self.source_vpg or self.target_vpg) and self.tls is None:
            raise ValueError("replication needs [tls]: VDSAs only talk over mutual TLS")
        if self.vdsa.control_listen is not None:
            if self.tls is None or not self.vdsa.control_clients:
                raise ValueError("control_listen needs [tls] and control_clients (managers)")
            if self.manager is not None and not self.manager.control_url:
                raise ValueError("with control_listen, say how the manager reaches it: "
                                 "manager.control_url = \"tls://HOST:PORT\"")  # fmt: skip
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


def load_managed(path: Path | None) -> ManagedVpgs:
    """The manager's VPGs as last pushed; none before the first push."""
    if path is None or not path.exists():
        return ManagedVpgs()
    try:
        return ManagedVpgs.model_validate_json(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
