"""Pairing exchanges the one-time token for mutual-TLS credentials (decision 0018): two real
managers over real TLS. A paired site's manager is known by the client certificate the other
signed for it; no certificate, one from another CA, and one of a pairing undone are refused;
the pairing token serves once."""

from __future__ import annotations

import shutil
import sqlite3
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from harness import Manager

from hvds.manager.pairing import PairingAuthority, fingerprint, new_request
from hvds.pki import CertificateAuthority

pytestmark = pytest.mark.slow


class Pair:
    def __init__(self, root: Path) -> None:
        self.ca = CertificateAuthority(root / "pki")
        self.a = Manager(root / "manager-a", "site-a", self.ca.issue("manager-a", ["127.0.0.1"]))
        self.b = Manager(root / "manager-b", "site-b", self.ca.issue("manager-b", ["127.0.0.1"]))
        self.admin_a = self.a.token("admin", "admin")
        self.admin_b = self.b.token("admin", "admin")

    def pairing_token(self) -> str:
        return str(self.b.ok("POST", "/pairing-tokens", self.admin_b)["token"])

    def pair(self, token: str) -> httpx.Response:
        body = {"url": self.b.url, "pairing_token": token, "ca_pem": self.ca.path.read_text()}
        response: httpx.Response = self.a.api("POST", "/peers", self.admin_a, body)
        return response

    def credentials(self, manager: Manager, peer: str) -> Path:
        """The key and certificate ``manager`` calls ``peer`` with."""
        return manager.root / "state" / "pairing" / "peers" / f"{peer}.pem"


def call(
    manager: Manager, ca: Path, method: str, path: str, *, cert: Path | tuple[Path, Path] | None,
    json: Any = None, token: str = "",
) -> httpx.Response:  # fmt: skip
    """One call to ``manager``'s API as a peer would make it: with this client certificate."""
    context = ssl.create_default_context(cafile=str(ca))
    if isinstance(cert, tuple):
        context.load_cert_chain(*cert)
    elif cert is not None:
        context.load_cert_chain(cert)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(verify=context, timeout=30) as client:
        return client.request(method, f"{manager.url}/api/v1{path}", json=json, headers=headers)


@pytest.fixture
def sites(tmp_path: Path) -> Iterator[Pair]:
    pair = Pair(tmp_path)
    try:
        pair.a.start()
        pair.b.start()
        yield pair
    finally:
        pair.a.stop()
        pair.b.stop()


def test_pairing_gives_each_site_a_client_certificate_of_the_others_ca(
    sites: Pair, tmp_path: Path
) -> None:
    a, b, ca = sites.a, sites.b, sites.ca.path
    token = sites.pairing_token()
    paired = sites.pair(token)
    assert paired.status_code == 201, paired.text
    assert paired.json()["name"] == "site-b"
    assert [p["name"] for p in b.ok("GET", "/peers", sites.admin_b)] == ["site-a"]

    # Each site's pairing CA (made at its first start) signed the other's client certificate,
    # named after the other site; keys are readable by the manager only.
    a_calls_b, b_calls_a = sites.credentials(a, "site-b"), sites.credentials(b, "site-a")
    for manager, credentials, me, issuer in ((a, a_calls_b, "site-a", "site-b"),
                                             (b, b_calls_a, "site-b", "site-a")):  # fmt: skip
        assert (manager.root / "state" / "pairing" / "ca.key").stat().st_mode & 0o777 == 0o600
        assert credentials.stat().st_mode & 0o777 == 0o600
        cert = x509.load_pem_x509_certificate(credentials.read_bytes())
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == me
        issued_by = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        assert issued_by == f"hvds pairing CA of {issuer}"
    # The site that signed records the certificate's fingerprint, nothing secret.
    with sqlite3.connect(b.root / "state" / "manager.db") as db:
        ((recorded,),) = db.execute("SELECT fingerprint FROM peers WHERE name = 'site-a'")
    pem = a_calls_b.read_text()
    assert recorded == fingerprint(pem[pem.index("-----BEGIN CERTIFICATE-----") :])

    # A paired peer works, both ways: through each manager, and called directly.
    assert a.ok("GET", "/peers/site-b/topology", sites.admin_a)["site"] == "site-b"
    assert b.ok("GET", "/peers/site-a/topology", sites.admin_b)["site"] == "site-a"
    assert call(b, ca, "GET", "/topology", cert=a_calls_b).status_code == 200
    assert call(a, ca, "GET", "/topology", cert=b_calls_a).status_code == 200
    asked = call(b, ca, "GET", "/replicas/nothing", cert=a_calls_b)
    assert asked.status_code == 400 and "no replica of nothing from site-a" in asked.text

    # Refused: no certificate (and no token); an admin token where only a peer may call.
    assert call(b, ca, "GET", "/topology", cert=None).status_code == 401
    admin = call(b, ca, "DELETE", "/replicas/nothing", cert=None, token=sites.admin_b)
    assert admin.status_code == 403
    # Refused at the handshake: a certificate of the deployment's CA named site-a, and one from
    # another pairing CA (a site that was never paired with B).
    deployment = sites.ca.issue("site-a")
    rogue = PairingAuthority(tmp_path / "rogue", "site-a")
    key, csr = new_request("site-a")
    forged = tmp_path / "forged.pem"
    forged.write_bytes(key + rogue.sign(csr, "site-a").encode())
    for cert in ((deployment.cert, deployment.key), forged):
        with pytest.raises(httpx.TransportError):
            call(b, ca, "GET", "/topology", cert=cert)
    # The last step of pairing is done once: not again, even by the paired site.
    again = call(a, ca, "POST", "/pairing/certificate", cert=b_calls_a,
                 json={"certificate": pem, "ca": pem})  # fmt: skip
    assert again.status_code == 409

    # The pairing token served once.
    reused = sites.pair(token)
    assert reused.status_code == 502 and "unknown, used or expired" in reused.text
    direct = call(b, ca, "POST", "/pairing", cert=None, json={
        "site": "site-c", "url": "https://127.0.0.1:1", "pairing_token": token,
        "csr": new_request("site-c")[1],
    })  # fmt: skip
    assert direct.status_code == 401

    # Unpaired (from A, both sides): the certificates no longer count, though still signed.
    kept = {name: shutil.copy(path, tmp_path / f"kept-{name}.pem")
            for name, path in (("a", a_calls_b), ("b", b_calls_a))}  # fmt: skip
    assert a.api("DELETE", "/peers/site-b", sites.admin_a).status_code == 204
    assert a.ok("GET", "/peers", sites.admin_a) == []
    assert b.ok("GET", "/peers", sites.admin_b) == []
    assert not a_calls_b.exists() and not b_calls_a.exists()
    for manager, cert in ((b, kept["a"]), (a, kept["b"])):
        refused = call(manager, ca, "GET", "/topology", cert=Path(cert))
        assert refused.status_code == 401 and "not a paired site's" in refused.text

    # Paired again (a new token): new certificates work, the old ones stay refused.
    assert sites.pair(sites.pairing_token()).status_code == 201
    assert call(b, ca, "GET", "/topology", cert=a_calls_b).status_code == 200
    assert call(b, ca, "GET", "/topology", cert=Path(kept["a"])).status_code == 401
    assert a.ok("GET", "/peers/site-b/topology", sites.admin_a)["site"] == "site-b"
