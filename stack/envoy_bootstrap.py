"""Envoy's bootstrap for the local stack: the template in ``envoy/bootstrap.yaml``, rendered with the
stack's ports, and with ``--tls`` mutual TLS to the scheduler and a private admin socket."""

from __future__ import annotations

import os
import string
from pathlib import Path

import yaml

from apis.validation import is_ip_address
from stack.config import StackConfig
from stack.tls import StackTls

ENVOY_DIR = Path(__file__).resolve().parent.parent / "envoy"
XDS_CLUSTER = "meshserve_xds"  # envoy/bootstrap.yaml's static cluster for the scheduler's xDS
LRS_CLUSTER = "meshserve_lrs"  # the same address, a connection of its own for load reports


def envoy_admin_url(config: StackConfig) -> str:
    """Where agents read Envoy's in-flight requests per model (agent/inflight.py)."""
    socket_path = config.envoy_admin_socket
    if socket_path is not None:
        return f"unix:{socket_path}"
    return f"http://{config.host}:{config.envoy_admin_port}"


def write_envoy_bootstrap(config: StackConfig) -> Path:
    template = string.Template((ENVOY_DIR / "bootstrap.yaml").read_text())
    path = config.home / "envoy.yaml"
    text = template.substitute(
        node_id=f"meshserve-{config.http_port}",
        admin_address=config.host,
        admin_port=config.envoy_admin_port,
        xds_host=config.host,
        xds_port=config.xds_port,
    )
    if config.tls:
        text = _with_tls(text, config)
    path.write_text(text)
    return path


def _with_tls(text: str, config: StackConfig) -> str:
    """The rendered bootstrap with ``--tls``'s two changes (the template's placeholders stay the same):
    the scheduler's clusters (xDS, load reports) speak mutual TLS with Envoy's client certificate,
    and admin is a unix socket only this user can open (docs/security.md)."""
    bootstrap = yaml.safe_load(text)
    files = config.tls_files
    host = config.host
    san_type = "IP_ADDRESS" if is_ip_address(host) else "DNS"
    clusters = bootstrap["static_resources"]["clusters"]
    scheduler = [c for c in clusters if c["name"] in (XDS_CLUSTER, LRS_CLUSTER)]
    if len(scheduler) != 2:
        raise ValueError(f"Envoy's bootstrap must define the clusters {XDS_CLUSTER} and {LRS_CLUSTER}")
    for cluster in scheduler:
        cluster["transport_socket"] = _client_tls(files, san_type, host)
    admin_socket = config.envoy_admin_socket
    assert admin_socket is not None  # set whenever tls is
    private_folder(admin_socket.parent)
    admin_socket.unlink(missing_ok=True)  # left by an Envoy that was killed
    bootstrap["admin"]["address"] = {"pipe": {"path": str(admin_socket), "mode": 0o600}}
    return str(yaml.safe_dump(bootstrap, sort_keys=False))


def _client_tls(files: StackTls, san_type: str, host: str) -> dict[str, object]:
    """Envoy's side of mutual TLS to the scheduler: its client certificate, the stack's CA."""
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": str(files.cert("envoy"))},
                        "private_key": {"filename": str(files.key("envoy"))},
                    }
                ],
                "validation_context": {
                    "trusted_ca": {"filename": str(files.ca)},
                    "match_typed_subject_alt_names": [{"san_type": san_type, "matcher": {"exact": host}}],
                },
            },
        },
    }


def private_folder(folder: Path) -> None:
    """``folder`` exists, is ours and only we can enter it (the admin socket's home)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if folder.stat().st_uid != os.getuid():
        raise PermissionError(f"{folder} belongs to another user; refusing to put Envoy's admin socket there")
    os.chmod(folder, 0o700)
