"""A site manager on another machine than its hosts: it reaches their VDSAs' control over TCP
with mutual TLS, and a VDSA serves only the managers it names."""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import free_port, qemu_io, sha256_file
from sites import TwoSites

from hvds.tls import client_context

pytestmark = pytest.mark.slow


@pytest.fixture
def sites(tmp_path: Path) -> Iterator[TwoSites]:
    sites = TwoSites(tmp_path)
    port = free_port()
    sites.vdsa_b.tls = sites.ca.issue("b1", ["127.0.0.1"])  # reached as 127.0.0.1
    sites.vdsa_b.settings.update(control_listen=f"127.0.0.1:{port}",
                                 control_clients=["manager-b"])  # fmt: skip
    sites.vdsa_b.sections["manager"]["control_url"] = f"tls://127.0.0.1:{port}"
    tls = sites.manager_b.tls
    sites.manager_b.write_config()
    config = sites.manager_b.config_path
    config.write_text(config.read_text() + f'\n[vdsa_tls]\nca = "{tls.ca}"\n'
                      f'cert = "{tls.cert}"\nkey = "{tls.key}"\n')  # fmt: skip
    sites.control_port = port
    try:
        sites.start()
        yield sites
    finally:
        sites.stop()


def ask(port: int, context: ssl.SSLContext | None) -> dict[str, object]:
    """One status request to the VDSA's TLS control port, as a client with ``context``."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    if context is None:
        context = ssl.create_default_context(cafile=None)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    with context.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
        conn.sendall(b'{"op": "status"}\n')
        answer = conn.recv(1 << 20)
    return json.loads(answer) if answer else {}


def refused(port: int, context: ssl.SSLContext | None) -> bool:
    """Closed without an answer, or failed in the handshake."""
    try:
        return ask(port, context) == {}
    except (ssl.SSLError, ConnectionError):
        return True


def test_manager_drives_its_host_over_mutual_tls_and_no_one_else_may(
    sites: TwoSites, tmp_path: Path
) -> None:
    qemu_io(sites.tap.uri("vm1-disk0"), "write -P 0x31 0 2M")
    sites.pair()
    sites.manager_a.ok("POST", "/vpgs", sites.admin_a, sites.vpg())
    sites.wait_state("erp", "protected")  # b1 was configured over TLS control
    sites.manager_a.ok("POST", "/vpgs/erp/checkpoints", sites.admin_a, {"tag": "tls"})
    (mirror,) = (tmp_path / "b1" / "ds1").rglob("disk1.raw")
    assert sha256_file(mirror) == sha256_file(sites.disk)

    port = sites.control_port
    assert ask(port, client_context(sites.manager_b.tls))["ok"]  # the manager: served
    assert refused(port, None)  # no certificate (TLS 1.3 may say so after the handshake)
    assert refused(port, client_context(sites.vdsa_a.tls))  # of the CA, but not a manager
    log = (sites.vdsa_b.root / "vdsa.log").read_text()
    assert "certificate 'a1' is not a manager's" in log
