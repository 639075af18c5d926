"""The manager's state: SQLAlchemy models and the engine. The schema is made and changed only by
the Alembic migrations in ``migrations/`` (applied at start), never by ``create_all``."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import JSON, DateTime, ForeignKey, Integer, String, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class Base(DeclarativeBase):
    type_annotation_map = {  # noqa: RUF012 - SQLAlchemy reads it from the class
        dict[str, Any]: JSON,
        list[Any]: JSON,
        datetime.datetime: DateTime(timezone=True),
    }


class Token(Base):
    """An API bearer token; only its SHA-256 digest is kept (tokens are 256 random bits, so a
    fast hash is enough: there is nothing to brute-force)."""

    __tablename__ = "tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20))
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime.datetime | None] = mapped_column(default=None)


class PairingToken(Base):
    __tablename__ = "pairing_tokens"
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime.datetime]
    used: Mapped[bool] = mapped_column(default=False)


class Peer(Base):
    """A paired site: where its manager is (and the CA its server certificate is checked
    against), the fingerprint of the client certificate this site signed for it (what grants
    it the peer role here), and the file of the key and certificate this site calls it with
    (decision 0018)."""

    __tablename__ = "peers"
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    url: Mapped[str] = mapped_column(String(500))
    ca_pem: Mapped[str] = mapped_column(default="")
    paired_at: Mapped[datetime.datetime] = mapped_column(default=utcnow)
    fingerprint: Mapped[str] = mapped_column(String(64), default="", index=True)
    credentials: Mapped[str] = mapped_column(String(1000), default="")


class Host(Base):
    """A hypervisor of this site, as its VDSA's heartbeats describe it."""

    __tablename__ = "hosts"
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    version: Mapped[str] = mapped_column(String(50), default="")
    control_url: Mapped[str] = mapped_column(String(500), default="")
    replication_address: Mapped[str] = mapped_column(String(300), default="")
    exports: Mapped[list[Any]] = mapped_column(default=list)
    datastores: Mapped[list[Any]] = mapped_column(default=list)
    status: Mapped[dict[str, Any]] = mapped_column(default=dict)
    last_seen: Mapped[datetime.datetime] = mapped_column(default=utcnow)


class Vpg(Base):
    """A protection group protected from this site: its settings as the API took them."""

    __tablename__ = "vpgs"
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    spec: Mapped[dict[str, Any]]
    # Disk ids on the wire, by "vm/export": kept so an edit does not renumber them.
    disk_ids: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Where each target site keeps it: [{site, address, server_name}], from the peers.
    links: Mapped[list[Any]] = mapped_column(default=list)
    state: Mapped[str] = mapped_column(String(20), default="initializing")
    rpo_seconds: Mapped[float | None] = mapped_column(default=None)
    # A failover test or live failover under way (at the target site): what the API reports.
    recovery: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    created_at: Mapped[datetime.datetime] = mapped_column(default=utcnow)
    # When the settings last changed (site.save_vpg), not the watch's updates of state and RPO.
    updated_at: Mapped[datetime.datetime] = mapped_column(default=utcnow)


class VpgMember(Base):
    """Which VPGs a VM is in (a VM may be in at most three)."""

    __tablename__ = "vpg_members"
    vpg: Mapped[str] = mapped_column(ForeignKey("vpgs.name", ondelete="CASCADE"), primary_key=True)
    vm: Mapped[str] = mapped_column(String(200), primary_key=True, index=True)


class Replica(Base):
    """The target side, at this site, of a VPG protected from a peer site."""

    __tablename__ = "replicas"
    vpg: Mapped[str] = mapped_column(String(63), primary_key=True)
    source_site: Mapped[str] = mapped_column(String(63), primary_key=True)
    host: Mapped[str] = mapped_column(String(63))
    datastore: Mapped[str] = mapped_column(String(63))
    spec: Mapped[dict[str, Any]]
    # A failover test or live failover under way here: its kind, checkpoint, views, VMs, state.
    recovery: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    created_at: Mapped[datetime.datetime] = mapped_column(default=utcnow)


class CommandRow(Base):
    __tablename__ = "commands"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(40))
    vpg: Mapped[str | None] = mapped_column(String(63), default=None, index=True)
    status: Mapped[str] = mapped_column(String(20), default="queued")
    progress: Mapped[int] = mapped_column(default=0)
    started_at: Mapped[datetime.datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime.datetime | None] = mapped_column(default=None)
    result: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    error: Mapped[str | None] = mapped_column(default=None)


class AuditEntry(Base):
    """Every change made through the API: who, what, when, and how it ended."""

    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    time: Mapped[datetime.datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(200))
    method: Mapped[str] = mapped_column(String(10))
    path: Mapped[str] = mapped_column(String(500))
    status: Mapped[int]


class Store:
    """The database: migrated to the newest schema when opened, one session per unit of work."""

    def __init__(self, url: str) -> None:
        self.engine = _engine(url)
        upgrade(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work, committed at its end (rolled back on an exception)."""
        with self._sessions.begin() as session:
            yield session

    @contextmanager
    def request_session(self) -> Iterator[Session]:
        """An API request's session: the route commits what it changed, as soon as it is done
        (SQLite has one writer: a write lock must not wait for the response to be sent)."""
        with self._sessions() as session:
            yield session


def _engine(url: str) -> Engine:
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _pragmas(connection: Any, _record: Any) -> None:
        # WAL: readers never wait for the writer; FULL: a committed change survives power loss.
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


def upgrade(engine: Engine) -> None:
    """Apply every migration not yet applied (Alembic, on the given engine's connection)."""
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
