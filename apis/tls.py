"""Mutual TLS on the scheduler's control ports: PEM files turned into gRPC credentials.

With TLS on, the scheduler serves its three ports (Scheduler API, AgentService, xDS) with
``require_client_auth``: a client must present a certificate signed by the CA the scheduler was
given (``--tls-client-ca``), and it checks the scheduler's certificate against the same CA. The
agent, the CLI and the local stack's controller and demo loader open their channels through
:func:`channel`. ``meshserve up --tls`` generates the CA and every certificate (``stack/tls.py``);
docs/security.md says what this closes and what it does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc


class TlsSettingsError(ValueError):
    """Some but not all of a process's TLS files were given, or one cannot be read."""


@dataclass(frozen=True)
class ClientTls:
    """What a client presents (``cert``, ``key``) and what it trusts (``ca``), as PEM files."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def from_settings(cls, ca: Path | None, cert: Path | None, key: Path | None) -> ClientTls | None:
        """None when no file is given (plain text); all three, or :class:`TlsSettingsError`."""
        given = {"tls_ca": ca, "tls_cert": cert, "tls_key": key}
        if not any(given.values()):
            return None
        if ca is None or cert is None or key is None:
            absent = ", ".join(f"--{name.replace('_', '-')}" for name, value in given.items() if not value)
            raise TlsSettingsError(f"TLS needs a CA, a certificate and its key: {absent} missing")
        return cls(ca=ca, cert=cert, key=key)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca),
            private_key=_read(self.key),
            certificate_chain=_read(self.cert),
        )


def server_credentials(cert: Path, key: Path, client_ca: Path) -> grpc.ServerCredentials:
    """The scheduler's: its own certificate, and only clients whose certificate ``client_ca`` signed."""
    return grpc.ssl_server_credentials(
        [(_read(key), _read(cert))], root_certificates=_read(client_ca), require_client_auth=True
    )


def server_files(
    cert: Path | None, key: Path | None, client_ca: Path | None
) -> tuple[Path, Path, Path] | None:
    """The scheduler's three settings: all (mutual TLS), none (plain text), else an error."""
    given = {"tls_cert": cert, "tls_key": key, "tls_client_ca": client_ca}
    if not any(given.values()):
        return None
    if cert is None or key is None or client_ca is None:
        absent = ", ".join(f"--{name.replace('_', '-')}" for name, value in given.items() if not value)
        raise TlsSettingsError(f"TLS needs a certificate, its key and the clients' CA: {absent} missing")
    return cert, key, client_ca


def channel(
    target: str,
    tls: ClientTls | None,
    *,
    options: Sequence[tuple[str, Any]] = (),
    interceptors: Sequence[Any] | None = None,
) -> grpc.aio.Channel:
    """A channel to a scheduler port: mutual TLS with ``tls``, plain text without."""
    if tls is None:
        return grpc.aio.insecure_channel(target, options=list(options), interceptors=interceptors)
    credentials = tls.credentials()
    return grpc.aio.secure_channel(target, credentials, options=list(options), interceptors=interceptors)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsSettingsError(f"cannot read {path}: {exc.strerror or exc}") from exc
