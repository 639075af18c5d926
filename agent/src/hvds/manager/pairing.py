"""Mutual-TLS credentials between paired sites (decision 0018).

Each manager keeps a pairing CA of its own in ``state_dir/pairing`` (``ca.pem``, ``ca.key``
mode 0600), made on its first start. At pairing, each side signs a client certificate for the
other (common name and DNS name: the peer's site name) from the other's certificate signing
request, and records the certificate's SHA-256 fingerprint in the peer's row: that fingerprint,
presented over TLS to the API's listener (which asks for client certificates signed by this
pairing CA), is what grants the peer role. Unpairing deletes the row, so the certificate is
refused after. The key and certificate a site presents to each peer are kept in one file,
``state_dir/pairing/peers/<site>.pem`` (mode 0600), never in the database.
"""

from __future__ import annotations

import datetime
import hashlib
import re
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hvds.files import write_atomic

CERT_DAYS = 3650  # a pairing lasts until it is undone; unpairing is what revokes
_KEY = re.compile(rb"-----BEGIN PRIVATE KEY-----\n.*?-----END PRIVATE KEY-----\n", re.S)


class PairingError(Exception):
    """A certificate signing request or a certificate that pairing cannot take."""


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )  # fmt: skip


def fingerprint(cert_pem: str) -> str:
    """The SHA-256 of a certificate's DER form, in hex (as ``openssl x509 -fingerprint``)."""
    try:
        der = ssl.PEM_cert_to_DER_cert(cert_pem.strip() + "\n")
    except ValueError as exc:
        raise PairingError(f"not a PEM certificate: {exc}") from None
    return hashlib.sha256(der).hexdigest()


def new_request(site: str) -> tuple[bytes, str]:
    """A new private key (PEM) and a certificate signing request for it, named ``site``."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder().subject_name(_name(site)).sign(key, hashes.SHA256())
    )
    return _key_pem(key), csr.public_bytes(serialization.Encoding.PEM).decode()


class PairingAuthority:
    """This manager's pairing CA: loaded from ``directory`` if there, made if not."""

    def __init__(self, directory: Path, site: str) -> None:
        self.directory = directory
        self.ca_path = directory / "ca.pem"
        key_path = directory / "ca.key"
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        (directory / "peers").mkdir(mode=0o700, exist_ok=True)
        if self.ca_path.exists() and key_path.exists():
            loaded = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if not isinstance(loaded, ec.EllipticCurvePrivateKey):
                raise PairingError(f"{key_path}: not an EC private key")
            self._key = loaded
            self.cert = x509.load_pem_x509_certificate(self.ca_path.read_bytes())
            return
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(f"hvds pairing CA of {site}"))
            .issuer_name(_name(f"hvds pairing CA of {site}"))
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2 * CERT_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        write_atomic(key_path, _key_pem(self._key))  # 0600 from its creation
        write_atomic(self.ca_path, self.cert.public_bytes(serialization.Encoding.PEM), 0o644)

    @property
    def ca_pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def sign(self, csr_pem: str, site: str) -> str:
        """A client certificate for the peer ``site``, for the key of its request (whose own
        names are ignored: the certificate names the site this manager paired with)."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
        except (ValueError, UnicodeError) as exc:
            raise PairingError(f"not a PEM certificate signing request: {exc}") from None
        try:
            valid = csr.is_signature_valid
        except (ValueError, InvalidSignature):
            valid = False
        if not valid:
            raise PairingError("the certificate signing request's signature is not valid")
        public_key = csr.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            raise PairingError("the certificate signing request's key is neither EC nor RSA")
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(site))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(site)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM).decode()

    # -- what this site presents to each peer -------------------------------------------------

    def credentials_path(self, peer: str) -> Path:
        return self.directory / "peers" / f"{peer}.pem"

    def keep_credentials(self, peer: str, key_pem: bytes, cert_pem: str = "") -> Path:
        """Keep the key (and, once signed, the certificate) this site calls ``peer`` with."""
        path = self.credentials_path(peer)
        write_atomic(path, key_pem + cert_pem.encode())
        return path

    def add_certificate(self, peer: str, cert_pem: str, ca_pem: str) -> Path:
        """The certificate ``peer`` signed for the key kept for it: checked against that key
        and the peer's pairing CA, then kept beside the key."""
        try:
            kept = self.credentials_path(peer).read_bytes()
        except FileNotFoundError:
            raise PairingError(f"no key is kept for {peer}: pair again") from None
        found = _KEY.search(kept)
        if found is None:
            raise PairingError(f"no key is kept for {peer}: pair again")
        check_certificate(found.group(), cert_pem, ca_pem)
        return self.keep_credentials(peer, found.group(), cert_pem)

    def has_certificate(self, peer: str) -> bool:
        try:
            return b"-----BEGIN CERTIFICATE-----" in self.credentials_path(peer).read_bytes()
        except FileNotFoundError:
            return False

    def forget(self, peer: str) -> None:
        self.credentials_path(peer).unlink(missing_ok=True)


def check_certificate(key_pem: bytes, cert_pem: str, ca_pem: str) -> None:
    """That ``cert_pem`` is for the key in ``key_pem`` and signed by the CA in ``ca_pem``."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
        ca = x509.load_pem_x509_certificate(ca_pem.encode())
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, UnicodeError, TypeError) as exc:
        raise PairingError(f"not a PEM certificate: {exc}") from None
    if cert.public_key() != key.public_key():
        raise PairingError("the certificate is not for the key of this site's request")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise PairingError(
            f"the certificate is not signed by the peer's pairing CA: {exc}"
        ) from None
