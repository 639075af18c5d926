"""The site manager's configuration file (TOML).

[manager]
site = "site-a"                          # this site's name, unique among paired sites
listen = "0.0.0.0:9443"
url = "https://manager-a.example:9443"   # how peer sites and VDSAs reach this manager
state_dir = "/var/lib/hvds/manager"
database_url = ""                        # default: SQLite in state_dir; or postgresql://...

[tls]                                    # the API's TLS; omit only on a lab's loopback
                                         # (then no pairing: peers use client certificates)
cert = "/etc/hvds/pki/manager.pem"
key = "/etc/hvds/pki/manager.key"
ca = "/etc/hvds/pki/ca.pem"              # signs cert: given to peers at pairing to check it
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator

from hvds.settings import HostPort, StrictModel, load_toml

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"


class ApiTls(StrictModel):
    cert: Path
    key: Path
    ca: Path | None = None


class ManagerSettings(StrictModel):
    site: Annotated[str, Field(pattern=NAME_PATTERN)]
    listen: HostPort
    url: Annotated[str, Field(pattern=r"^https?://")]
    state_dir: Path
    database_url: str = ""
    # A host whose heartbeats stop for this long is down (and raises an alert).
    host_timeout: Annotated[float, Field(gt=0)] = 20.0
    pairing_token_minutes: Annotated[float, Field(gt=0, le=24 * 60)] = 30.0
    # How often each VPG's state (sync, RPO) is looked at again.
    watch_interval: Annotated[float, Field(gt=0)] = 2.0

    @field_validator("listen", mode="before")
    @classmethod
    def _host_port(cls, value: object) -> object:
        return HostPort.coerce(value)

    @property
    def database(self) -> str:
        return self.database_url or f"sqlite:///{self.state_dir / 'manager.db'}"


class VdsaTls(StrictModel):
    """The manager's certificate towards its hosts' VDSAs (their control_listen)."""

    ca: Path
    cert: Path
    key: Path


class ManagerConfig(StrictModel):
    manager: ManagerSettings
    tls: ApiTls | None = None
    vdsa_tls: VdsaTls | None = None


def load_config(path: Path) -> ManagerConfig:
    return load_toml(path, ManagerConfig)
