"""``meshserve up --tls``: a local CA and the certificates of every control-plane party.

Under ``$MESHSERVE_HOME/tls/`` (mode 0700): ``ca.pem`` (+ ``ca-key.pem``), the scheduler's server
certificate ``scheduler.pem`` (SAN ``127.0.0.1`` and ``localhost``), and one client certificate
per caller: ``agent.pem``, ``envoy.pem``, ``cli.pem``, ``controller.pem`` (the supervisor's
controller and demo loader). Each ``<name>-key.pem`` is mode 0600. Keys are ECDSA P-256.

A complete, valid set is kept across ``up``s, so paths exported for the CLI stay good; a missing
file, a certificate near its end, or one the CA did not sign makes a fresh set (new CA included).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from apis.tls import ClientTls

SERVER = "scheduler"
CLIENTS = ("agent", "envoy", "cli", "controller")
CA_DAYS = 3650
LEAF_DAYS = 365
RENEW_BEFORE = dt.timedelta(days=7)
KEY_MODE = 0o600
FOLDER_MODE = 0o700


@dataclass(frozen=True)
class StackTls:
    """Where each PEM file of a stack lives (``folder`` is ``$MESHSERVE_HOME/tls``)."""

    folder: Path

    @property
    def ca(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.folder / "ca-key.pem"

    def cert(self, name: str) -> Path:
        return self.folder / f"{name}.pem"

    def key(self, name: str) -> Path:
        return self.folder / f"{name}-key.pem"

    def client(self, name: str) -> ClientTls:
        if name not in CLIENTS:
            raise ValueError(f"no client certificate {name!r}; one of {', '.join(CLIENTS)}")
        return ClientTls(ca=self.ca, cert=self.cert(name), key=self.key(name))

    def files(self) -> list[Path]:
        names = (SERVER, *CLIENTS)
        return [self.ca, self.ca_key, *(self.cert(n) for n in names), *(self.key(n) for n in names)]

    def private_keys(self) -> list[Path]:
        return [self.ca_key, *(self.key(n) for n in (SERVER, *CLIENTS))]


def ensure(folder: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> StackTls:
    """The stack's certificates in ``folder``: kept when complete and valid, else made afresh."""
    tls = StackTls(folder)
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, FOLDER_MODE)
    if not _usable(tls, hosts):
        generate(tls, hosts)
    for key in tls.private_keys():
        os.chmod(key, KEY_MODE)
    return tls


def generate(tls: StackTls, hosts: tuple[str, ...]) -> None:
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshserve local CA")])
    ca = (
        _builder(ca_name, ca_name, ca_key.public_key(), now, CA_DAYS)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(tls.ca_key, _private_pem(ca_key), KEY_MODE)
    _write(tls.ca, ca.public_bytes(serialization.Encoding.PEM), 0o644)
    server_names = [_san(host) for host in hosts]
    for name in (SERVER, *CLIENTS):
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"meshserve {name}")])
        usage = ExtendedKeyUsageOID.SERVER_AUTH if name == SERVER else ExtendedKeyUsageOID.CLIENT_AUTH
        names = server_names if name == SERVER else [x509.DNSName(f"{name}.meshserve.local")]
        cert = (
            _builder(subject, ca.subject, key.public_key(), now, LEAF_DAYS)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        _write(tls.key(name), _private_pem(key), KEY_MODE)
        _write(tls.cert(name), cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _usable(tls: StackTls, hosts: tuple[str, ...]) -> bool:
    if not all(path.is_file() for path in tls.files()):
        return False
    try:
        ca = x509.load_pem_x509_certificate(tls.ca.read_bytes())
        leaves = {n: x509.load_pem_x509_certificate(tls.cert(n).read_bytes()) for n in (SERVER, *CLIENTS)}
        for cert in leaves.values():
            cert.verify_directly_issued_by(ca)
        server_names = leaves[SERVER].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, x509.ExtensionNotFound, InvalidSignature):
        return False
    renew = dt.datetime.now(dt.UTC) + RENEW_BEFORE
    if any(cert.not_valid_after_utc < renew for cert in [ca, *leaves.values()]):
        return False
    return all(_san(host) in server_names for host in hosts)


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, now: dt.datetime, days: int
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    """Written beside and renamed into place; the file has ``mode`` from its first byte."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as file:
        os.fchmod(fd, mode)  # whatever the umask
        file.write(data)
    os.replace(temporary, path)
