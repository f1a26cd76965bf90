"""``meshserve up --tls``'s certificates (stack/tls.py), their loading (apis/tls.py), the TLS
settings of each process and the Envoy bootstrap the stack renders with TLS on."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import stat
import string
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from agent.config import parse_config
from apis import tls
from scheduler.config import parse_args as scheduler_args
from stack.components import components, scheduler_tls_flags
from stack.config import StackConfig
from stack.envoy_bootstrap import ENVOY_DIR, write_envoy_bootstrap
from stack.ports import free_ports
from stack.tls import CLIENTS, SERVER, StackTls, ensure


@pytest.fixture
def certs(tmp_path: Path) -> StackTls:
    return ensure(tmp_path / "tls")


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_every_file_is_generated_and_keys_are_private(certs: StackTls) -> None:
    assert all(path.is_file() for path in certs.files())
    assert stat.S_IMODE(certs.folder.stat().st_mode) == 0o700
    for key in certs.private_keys():
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert len(certs.private_keys()) == 1 + 1 + len(CLIENTS)  # CA, scheduler, each client


def test_keys_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        files = ensure(tmp_path / "tls")
    finally:
        os.umask(old)
    assert {stat.S_IMODE(key.stat().st_mode) for key in files.private_keys()} == {0o600}


def test_the_ca_chain_verifies_for_the_server_and_every_client(certs: StackTls) -> None:
    store = Store([_cert(certs.ca)])
    now = dt.datetime.now(dt.UTC)
    server = PolicyBuilder().store(store).time(now)
    for subject in (x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")):
        chain = server.build_server_verifier(subject).verify(_cert(certs.cert(SERVER)), [])
        assert chain[-1] == _cert(certs.ca)
    with pytest.raises(VerificationError):  # the scheduler's certificate names only loopback
        server.build_server_verifier(x509.DNSName("example.com")).verify(_cert(certs.cert(SERVER)), [])
    client = PolicyBuilder().store(store).time(now).build_client_verifier()
    for name in CLIENTS:
        assert client.verify(_cert(certs.cert(name)), []).chain[-1] == _cert(certs.ca)
    # A client certificate is not a server certificate (extended key usage).
    with pytest.raises(VerificationError):
        server.build_server_verifier(x509.DNSName("cli.meshserve.local")).verify(_cert(certs.cert("cli")), [])


def test_a_valid_set_is_kept_and_a_broken_one_made_afresh(tmp_path: Path) -> None:
    files = ensure(tmp_path / "tls")
    ca = files.ca.read_bytes()
    assert ensure(tmp_path / "tls").ca.read_bytes() == ca  # exported CLI paths stay good
    files.key("agent").unlink()
    assert ensure(tmp_path / "tls").ca.read_bytes() != ca
    # A certificate signed by another CA (a copied file) is not trusted: everything is remade.
    other = ensure(tmp_path / "other")
    ca = files.ca.read_bytes()
    files.cert("envoy").write_bytes(other.cert("envoy").read_bytes())
    assert ensure(tmp_path / "tls").ca.read_bytes() != ca


def test_a_new_server_name_remakes_the_set(tmp_path: Path) -> None:
    ca = ensure(tmp_path / "tls").ca.read_bytes()
    files = ensure(tmp_path / "tls", hosts=("127.0.0.2", "localhost"))
    assert files.ca.read_bytes() != ca
    names = _cert(files.cert(SERVER)).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert x509.IPAddress(ipaddress.ip_address("127.0.0.2")) in names


@pytest.fixture
def health_server(certs: StackTls) -> Iterator[str]:
    """A plain grpc server (sync: no event loop needed) with the scheduler's credentials."""
    from concurrent import futures

    server = grpc.server(futures.ThreadPoolExecutor(2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    credentials = tls.server_credentials(certs.cert(SERVER), certs.key(SERVER), certs.ca)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0)


async def test_mutual_tls_needs_a_client_certificate(certs: StackTls, health_server: str) -> None:
    async def check(client: tls.ClientTls | None) -> grpc.StatusCode:
        async with tls.channel(health_server, client) as channel:
            try:
                await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            except grpc.aio.AioRpcError as error:
                return error.code()
        return grpc.StatusCode.OK

    for name in CLIENTS:
        assert await check(certs.client(name)) == grpc.StatusCode.OK
    assert await check(None) == grpc.StatusCode.UNAVAILABLE


def test_client_settings_are_all_or_nothing(certs: StackTls) -> None:
    assert tls.ClientTls.from_settings(None, None, None) is None
    with pytest.raises(tls.TlsSettingsError, match="--tls-key"):
        tls.ClientTls.from_settings(certs.ca, certs.cert("cli"), None)
    with pytest.raises(tls.TlsSettingsError, match="cannot read"):
        tls.ClientTls(certs.ca, certs.cert("cli"), certs.folder / "nothing.pem").credentials()


def test_scheduler_and_agent_refuse_half_a_tls_setting(certs: StackTls, tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        scheduler_args([f"--tls-cert={certs.cert(SERVER)}"], env={})
    config = scheduler_args(
        [],
        env={
            "MESHSERVE_SCHEDULER_TLS_CERT": str(certs.cert(SERVER)),
            "MESHSERVE_SCHEDULER_TLS_KEY": str(certs.key(SERVER)),
            "MESHSERVE_SCHEDULER_TLS_CLIENT_CA": str(certs.ca),
        },
    )
    assert config.tls_client_ca == certs.ca
    with pytest.raises(SystemExit):
        parse_config([f"--models-dir={tmp_path}", f"--tls-ca={certs.ca}"], env={})
    agent = parse_config(
        [
            f"--models-dir={tmp_path}",
            *(
                f"--tls-{k}={v}"
                for k, v in {"ca": certs.ca, "cert": certs.cert("agent"), "key": certs.key("agent")}.items()
            ),
        ],
        env={},
    )
    assert agent.scheduler_tls == certs.client("agent")


def test_the_cli_names_its_tls_settings() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "cli.main", "model", "list", "--tls-ca=/nonexistent"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 1
    assert "--tls-cert, --tls-key missing" in out.stderr


def _stack(tmp_path: Path, *, tls_on: bool) -> StackConfig:
    return StackConfig.on_free_ports(tmp_path / "home", tls=tls_on)


def test_without_tls_the_bootstrap_is_the_template_as_is(tmp_path: Path) -> None:
    config = _stack(tmp_path, tls_on=False)
    config.home.mkdir(parents=True)
    rendered = yaml.safe_load(write_envoy_bootstrap(config).read_text())
    assert rendered["admin"]["address"]["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": config.envoy_admin_port,
    }
    assert "transport_socket" not in rendered["static_resources"]["clusters"][0]
    assert scheduler_tls_flags(config) == []
    assert config.client_tls("cli") is None and config.envoy_admin_socket is None


def test_with_tls_envoy_speaks_mtls_to_xds_and_admin_is_a_private_socket(tmp_path: Path) -> None:
    config = _stack(tmp_path, tls_on=True)
    config.home.mkdir(parents=True)
    planned = {c.name: c for c in components(config)}  # makes the certificates
    assert f"--tls-client-ca={config.tls_files.ca}" in planned["scheduler"].argv
    assert f"--tls-cert={config.tls_files.cert('agent')}" in planned["agent"].argv
    path = write_envoy_bootstrap(config)
    rendered = yaml.safe_load(path.read_text())
    socket = config.envoy_admin_socket
    assert socket is not None
    assert rendered["admin"]["address"] == {"pipe": {"path": str(socket), "mode": 0o600}}
    assert stat.S_IMODE(socket.parent.stat().st_mode) == 0o700
    clusters = rendered["static_resources"]["clusters"]
    assert [c["name"] for c in clusters] == ["meshserve_xds", "meshserve_lrs"]  # xDS, load reports
    for cluster in clusters:
        context = cluster["transport_socket"]["typed_config"]["common_tls_context"]
        assert context["tls_certificates"][0]["private_key"] == {
            "filename": str(config.tls_files.key("envoy"))
        }
        assert context["validation_context"]["trusted_ca"] == {"filename": str(config.tls_files.ca)}
    envoy = config.binary("envoy")
    check = subprocess.run(
        [envoy, "--mode", "validate", "-c", str(path), "--base-id", str(free_ports(1)[0])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_deep_home_puts_the_admin_socket_in_a_short_private_folder(tmp_path: Path) -> None:
    config = StackConfig(home=tmp_path / ("d" * 120), tls=True)
    socket = config.envoy_admin_socket
    assert socket is not None and len(str(socket)) < 100
    assert socket.parent.name.startswith(f"meshserve-{os.getuid()}-")


def test_the_template_keeps_its_placeholders() -> None:
    # Other renderers (bench, tests/xdsserver) fill exactly these five; TLS adds none.
    template = string.Template((ENVOY_DIR / "bootstrap.yaml").read_text())
    names = {"node_id", "admin_address", "admin_port", "xds_host", "xds_port"}
    assert set(template.get_identifiers()) == names
