"""The site manager on PostgreSQL (database_url) instead of its default SQLite file: the same
end-to-end flow, and a kill -9 of the manager loses nothing. The server is a real PostgreSQL
15 cluster the test makes in a temporary directory (Debian's postgresql package)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import qemu_io, sha256_file
from sites import TwoSites

pytestmark = pytest.mark.slow
PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), None)


def as_postgres(*argv: str) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", *argv], check=True,
                   capture_output=True)  # fmt: skip


@pytest.fixture
def database() -> Iterator[str]:
    if PG_BIN is None or shutil.which("runuser") is None:
        pytest.fail("PostgreSQL is not installed (scripts/setup.sh installs it)")
    # Not under pytest's tmp_path: the postgres user must be able to reach it.
    root = Path(tempfile.mkdtemp(prefix="hvds-pg-", dir="/tmp"))
    root.chmod(0o755)
    shutil.chown(root, "postgres")
    data, sockets = root / "data", root
    as_postgres(str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
    as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-w", "-l", str(root / "log"),
                "-o", f"-k {sockets} -c listen_addresses=''", "start")  # fmt: skip
    try:
        as_postgres(str(PG_BIN / "createdb"), "-h", str(sockets), "hvds")
        yield f"postgresql+psycopg://postgres@/hvds?host={sockets}"
    finally:
        as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-w", "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


def test_the_manager_on_postgresql(tmp_path: Path, database: str) -> None:
    sites = TwoSites(tmp_path)
    a = sites.manager_a
    a.write_config(database_url=database)  # tokens from here on are kept in PostgreSQL
    sites.admin_a = a.token("admin", "admin")
    (sites.vdsa_a.root / "manager.token").write_text(a.token("a1", "host"))
    try:
        sites.start()
        qemu_io(sites.tap.uri("vm1-disk0"), "write -P 0x41 0 2M")
        sites.pair()
        a.ok("POST", "/vpgs", sites.admin_a, sites.vpg())
        sites.wait_state("erp", "protected")
        a.ok("POST", "/vpgs/erp/checkpoints", sites.admin_a, {"tag": "on-postgres"})
        (mirror,) = (tmp_path / "b1" / "ds1").rglob("disk1.raw")
        assert sha256_file(mirror) == sha256_file(sites.disk)
        before = a.ok("GET", "/vpgs/erp", sites.admin_a)
        assert a.service is not None
        a.service.kill()
        a.start()
        after = a.ok("GET", "/vpgs/erp", sites.admin_a)
        assert {k: after[k] for k in ("vms", "targets", "created_at")} == {
            k: before[k] for k in ("vms", "targets", "created_at")
        }
        sockets = database.split("host=")[1]
        stored = subprocess.run(
            ["runuser", "-u", "postgres", "--", str(PG_BIN / "psql"), "-h", sockets, "-At",
             "-c", "SELECT name, state FROM vpgs", "hvds"],
            check=True, capture_output=True, text=True,
        ).stdout.split()  # fmt: skip
        assert stored == ["erp|protected"]  # it was PostgreSQL all along
    finally:
        sites.stop()
