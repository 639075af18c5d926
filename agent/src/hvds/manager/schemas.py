"""The API's request and response bodies (pydantic): what docs/api.md describes."""

from __future__ import annotations

import datetime
import ssl
from typing import Annotated, Any, Literal

import httpx
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from hvds.manager.config import NAME_PATTERN
from hvds.recovery.vm import VmBoot

Name = Annotated[str, Field(pattern=NAME_PATTERN, description="letters, digits, . _ -")]


def _as_utc(value: datetime.datetime) -> datetime.datetime:
    # SQLite hands back naive datetimes; every time the manager stores is UTC.
    return value if value.tzinfo else value.replace(tzinfo=datetime.UTC)


Time = Annotated[datetime.datetime, AfterValidator(_as_utc)]


def _site_url(value: str) -> str:
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL as exc:
        raise ValueError(f"not a URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError("expected http(s)://HOST[:PORT]")
    return value


def _ca_bundle(value: str) -> str:
    if value:
        try:
            ssl.create_default_context(cadata=value)
        except (ssl.SSLError, ValueError, TypeError) as exc:  # TypeError: not ASCII
            raise ValueError(f"not PEM CA certificates: {exc}") from None
    return value


SiteUrl = Annotated[
    str, Field(max_length=500, description="https://HOST[:PORT] of a site's manager"),
    AfterValidator(_site_url),
]  # fmt: skip
CaPem = Annotated[
    str, Field(description="PEM CA that signs the peer's API certificate; empty: the system's"),
    AfterValidator(_ca_bundle),
]  # fmt: skip


class Body(BaseModel):
    """Unknown fields are refused: a misspelt setting must not be silently ignored."""

    model_config = ConfigDict(extra="forbid")


class Disk(Body):
    export: Annotated[str, Field(min_length=1, max_length=4096)]


class Vm(Body):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    host: Name
    disks: Annotated[list[Disk], Field(min_length=1, max_length=64)]
    boot: VmBoot | None = Field(
        default=None, description="how the VM boots at the recovery site; none: disks only"
    )


class Target(Body):
    site: Name
    host: Name
    datastore: Name
    in_place: dict[str, str] = Field(
        default_factory=dict,
        description="disk name -> an image at the target to keep the mirror in instead of the "
        "datastore: a failback's old disks, each a detached export of the target host",
    )


Network = Annotated[str, Field(
    pattern=r"^((bridge|netns):[A-Za-z0-9][A-Za-z0-9._-]{0,14})?$",
    description="bridge:NAME (a Linux bridge) or netns:NAME (a network namespace) at the "
    "recovery host; empty: no network",
)]  # fmt: skip
Script = Annotated[str, Field(
    pattern=r"^([A-Za-z0-9][A-Za-z0-9._-]{0,127})?$",
    description="a script in the recovery host VDSA's scripts_dir, by name; empty: none",
)]  # fmt: skip


class RecoverySettings(Body):
    """How the VPG's VMs are recovered: their networks, and scripts run around it."""

    test_network: Network = ""
    failover_network: Network = ""
    pre_script: Script = ""  # before the VMs boot; a failure stops the operation
    post_script: Script = ""  # after they booted


class VpgSpec(Body):
    name: Name
    vms: Annotated[list[Vm], Field(min_length=1, max_length=256)]
    targets: Annotated[list[Target], Field(min_length=1, max_length=8)]
    rpo_alert_seconds: Annotated[int, Field(ge=60, le=864_200)] = 300
    journal_history_hours: Annotated[float, Field(gt=0, le=30 * 24)] = 1.0
    journal_size_limit_bytes: Annotated[int, Field(ge=64 * 1024**2)] = 150 * 1024**3
    checkpoint_interval_seconds: Annotated[float, Field(ge=0.1, le=3600)] = 5.0
    priority: Literal["low", "medium", "high"] = "medium"
    compression: bool = True
    bandwidth_limit_bytes: Annotated[int, Field(ge=0)] = 0
    recovery: RecoverySettings = Field(default_factory=RecoverySettings)

    @model_validator(mode="after")
    def _unique(self) -> VpgSpec:
        vms = [vm.name for vm in self.vms]
        if len(set(vms)) != len(vms):
            raise ValueError("a VM is listed twice")
        disks = [(vm.host, disk.export) for vm in self.vms for disk in vm.disks]
        if len(set(disks)) != len(disks):
            raise ValueError("a disk is listed twice")
        sites = [target.site for target in self.targets]
        if len(set(sites)) != len(sites):
            raise ValueError("one target per site")
        return self


VpgState = Literal[
    "initializing", "syncing", "protected", "testing", "failing_over", "failed_over", "error"
]


class VpgOut(VpgSpec):
    model_config = ConfigDict(extra="forbid", from_attributes=True)
    state: VpgState
    rpo_seconds: float | None
    created_at: Time
    updated_at: Time
    reverse_site: str | None = Field(
        default=None,
        description="after a failover and reverse protection: the site that protects this VPG's "
        "VMs back to this site (its VPG there has the same name); null otherwise",
    )


def _journal_text(value: str) -> str:
    try:
        size = len(value.encode())
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode text") from None
    if size > JOURNAL_TEXT_BYTES:
        raise ValueError(f"at most {JOURNAL_TEXT_BYTES} bytes in UTF-8, not {size}")
    return value


# What the target's journal keeps of a checkpoint's tag and description (hvds.journal.records):
# longer, the target would refuse the checkpoint, and every one after it.
JOURNAL_TEXT_BYTES = 1024
JournalText = Annotated[str, AfterValidator(_journal_text)]


class CheckpointIn(Body):
    tag: Annotated[JournalText, Field(min_length=1, max_length=200)]
    description: Annotated[
        JournalText, Field(max_length=JOURNAL_TEXT_BYTES, description="at most 1024 bytes UTF-8")
    ] = ""


class CheckpointOut(BaseModel):
    id: int = Field(description="the cut's time in nanoseconds since the epoch")
    time: Time
    tag: str
    description: str


class CheckpointChoice(Body):
    checkpoint: int | None = Field(default=None, description="a checkpoint id; default latest")
    tag: str | None = Field(default=None, description="or the newest checkpoint with this tag")


class FailoverIn(CheckpointChoice):
    auto_commit_seconds: float | None = Field(
        default=None, ge=0, le=7 * 24 * 3600,
        description="commit on its own after this long unless rolled back; none: wait",
    )  # fmt: skip


class RecoveryVm(Body):
    name: str
    disks: list[str] = Field(description="the VM's disks (exports at the source), in order")
    boot: VmBoot | None = None


class RestoreIn(CheckpointChoice):
    disk: Annotated[str, Field(min_length=1, max_length=4096, description="the disk (export)")]
    datastore: Name = Field(description="a datastore of the recovery host, to hold the image")
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")] = Field(
        description="the restored image's name (<datastore>/restores/<name>.raw)"
    )


class FileOut(BaseModel):
    path: str
    size: int
    checkpoint: int = Field(description="the journal's id of the checkpoint read")
    content: str = Field(description="the file's bytes, base64")


class ReverseIn(Body):
    """A source site asks its recovery site to protect a committed VPG back to it."""

    host: Name
    in_place: dict[str, str] = Field(description="disk name -> the old disk's image there")


class RecoveryIn(CheckpointChoice):
    """What a source site asks of the recovery site (manager to manager)."""

    vms: list[RecoveryVm] = Field(default_factory=list)
    network: Network = ""
    pre_script: Script = ""
    post_script: Script = ""


class CommandOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    kind: str
    vpg: str | None
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    progress: int
    started_at: Time
    ended_at: Time | None
    result: dict[str, Any] | None
    error: str | None


class DatastoreReport(Body):
    name: Name
    path: str
    total_bytes: Annotated[int, Field(ge=0)]
    free_bytes: Annotated[int, Field(ge=0)]


class ExportReport(Body):
    name: str
    size: Annotated[int, Field(ge=0)]
    path: str = ""
    detached: bool = Field(default=False, description="not served: failed over elsewhere")


class Heartbeat(Body):
    version: Annotated[str, Field(max_length=50)]
    control_url: Annotated[
        str, Field(pattern=r"^((unix|tls)://\S+)?$", max_length=500,
                   description="where it takes control requests: unix://PATH or tls://HOST:PORT")
    ]  # fmt: skip
    replication_address: Annotated[
        str, Field(pattern=r"^(\S+:[0-9]{1,5})?$", max_length=300,
                   description="HOST:PORT of its replication listener; empty: it is no target")
    ]  # fmt: skip
    exports: list[ExportReport]
    datastores: list[DatastoreReport]
    status: dict[str, Any]


class HostOut(BaseModel):
    name: str
    state: Literal["up", "down"]
    version: str
    last_seen: Time
    exports: list[ExportReport]
    datastores: list[DatastoreReport]
    vpgs: dict[str, Any] = Field(description="the VDSA's replication state, per VPG and role")


class Alert(BaseModel):
    kind: str
    subject: str
    message: str


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    hosts_up: int
    hosts_down: int
    alerts: list[Alert]


class SiteOut(BaseModel):
    name: str
    version: str
    health: Health


class PairingTokenOut(BaseModel):
    token: str
    expires_at: Time


class PeerIn(Body):
    url: SiteUrl
    pairing_token: Annotated[str, Field(min_length=10, max_length=200)]
    ca_pem: CaPem = ""


class PeerOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    name: str
    url: str
    paired_at: Time


Pem = Annotated[str, Field(min_length=1, max_length=16 * 1024)]


class PairingIn(Body):
    """A peer's side of pairing (manager to manager): who asks, with the one-time pairing
    token, for a client certificate for the key of its certificate signing request."""

    site: Name
    url: SiteUrl
    pairing_token: Annotated[str, Field(min_length=10, max_length=200)]
    csr: Pem


class PairingOut(BaseModel):
    """The asking site's client certificate, the pairing CA that signed it, and a request
    of this site's own for the asking site to sign (``POST /pairing/certificate``)."""

    site: str
    certificate: str
    ca: str
    csr: str


class PairingCertificate(Body):
    """The client certificate the pairing site signed for this one, and its pairing CA."""

    certificate: Pem
    ca: Pem


class DatastoreOut(BaseModel):
    name: str
    free_bytes: int


class TopologyHost(BaseModel):
    name: str
    state: Literal["up", "down"]
    datastores: list[DatastoreOut]


class Topology(BaseModel):
    site: str
    hosts: list[TopologyHost]


class ReplicaDisk(Body):
    disk: Annotated[int, Field(ge=1)]
    name: str
    size: Annotated[int, Field(gt=0)]
    source: str = ""


class ReplicaIn(Body):
    """What a source site asks of this one for a VPG it protects here (manager to manager)."""

    host: Name
    datastore: Name
    disks: Annotated[list[ReplicaDisk], Field(min_length=1)]
    journal_history_hours: float
    journal_size_limit_bytes: int
    in_place: dict[str, str] = Field(default_factory=dict)


class ReplicaState(BaseModel):
    vpg: str
    source_site: str
    host: str
    recovery: Literal["test", "failover"] | None = None
    state: str | None = Field(default=None, description="opening, open or committed")
    checkpoint: CheckpointOut | None = None


class ReplicaOut(BaseModel):
    address: str = Field(description="the target VDSA's replication address")
    server_name: str = Field(description="the name its TLS certificate carries")
    latest_checkpoint: CheckpointOut | None
