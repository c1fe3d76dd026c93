"""fedloom.hub._tls: the hub's CA, server and client certificates, and real TLS;
fedloom.crypto._pem: reading those files."""

from __future__ import annotations

import ipaddress
import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    PrivateFormat,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedloom.crypto._pem import MAX_PEM_BYTES, read_pem
from fedloom.errors import ConfigError, InsecureKeyFileError, KeyFileError
from fedloom.hub._tls import (
    HubTlsFiles,
    init_hub_tls,
    issue_client_certificate,
    load_hub_tls,
)

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")

CALL_TIMEOUT = 10.0
METHOD = "/fedloom.test.Echo/Echo"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _all_files(tls: HubTlsFiles) -> list[Path]:
    return [tls.ca_certificate, tls.ca_key, tls.server_certificate, tls.server_key]


@pytest.fixture
def tls(tmp_path: Path) -> HubTlsFiles:
    return init_hub_tls(tmp_path / "hub-tls")


# --- init ------------------------------------------------------------------------------


@posix_only
def test_init_creates_directory_and_files_with_private_modes(tmp_path: Path) -> None:
    tls = init_hub_tls(tmp_path / "a" / "tls")
    assert tls.directory == tmp_path / "a" / "tls"
    assert _mode(tls.directory) == 0o700
    assert [p.name for p in _all_files(tls)] == ["ca.crt", "ca.key", "hub.crt", "hub.key"]
    assert _mode(tls.ca_key) == _mode(tls.server_key) == 0o600
    assert _mode(tls.ca_certificate) == _mode(tls.server_certificate) == 0o644


def test_ca_is_a_self_signed_certificate_authority(tls: HubTlsFiles) -> None:
    ca = _cert(tls.ca_certificate)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    assert ca.issuer == ca.subject
    ca.verify_directly_issued_by(ca)
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert ca.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]


def test_server_certificate_is_signed_by_the_ca_and_names_every_host(tmp_path: Path) -> None:
    tls = init_hub_tls(tmp_path, hostnames=["hub.example.org", "10.0.0.5", "::1", "localhost"])
    ca, server = _cert(tls.ca_certificate), _cert(tls.server_certificate)
    server.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["hub.example.org", "localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.5"),
        ipaddress.ip_address("::1"),
    ]
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usages = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert server.not_valid_after_utc <= ca.not_valid_after_utc


def test_default_hosts_and_validity(tls: HubTlsFiles) -> None:
    server = _cert(tls.server_certificate)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    lifetime = server.not_valid_after_utc - server.not_valid_before_utc
    assert 824 < lifetime.days <= 826


def test_each_hub_gets_its_own_ca(tmp_path: Path) -> None:
    one, two = init_hub_tls(tmp_path / "one"), init_hub_tls(tmp_path / "two")
    with pytest.raises((ValueError, InvalidSignature)):
        _cert(one.server_certificate).verify_directly_issued_by(_cert(two.ca_certificate))


def test_init_refuses_to_overwrite_and_leaves_files_alone(tls: HubTlsFiles) -> None:
    before = {path: path.read_bytes() for path in _all_files(tls)}
    with pytest.raises(KeyFileError, match=r"ca\.crt"):
        init_hub_tls(tls.directory)
    assert {path: path.read_bytes() for path in _all_files(tls)} == before


def test_init_refuses_when_any_one_file_exists_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "hub.key").write_bytes(b"someone's key")
    with pytest.raises(KeyFileError, match=r"hub\.key.*refusing to overwrite"):
        init_hub_tls(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hub.key"]
    assert (tmp_path / "hub.key").read_bytes() == b"someone's key"


@pytest.mark.parametrize(
    "hostnames",
    [[], [""], ["bad host"], ["under_score.example"], ["a" * 64 + ".example"], "localhost", [7]],
)
def test_init_refuses_bad_hostnames(tmp_path: Path, hostnames: object) -> None:
    with pytest.raises(ConfigError):
        init_hub_tls(tmp_path, hostnames=hostnames)  # type: ignore[arg-type]
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("days", [0, -1, 100_000, True, 1.5])
def test_init_refuses_bad_validity(tmp_path: Path, days: object) -> None:
    with pytest.raises(ConfigError, match="days"):
        init_hub_tls(tmp_path, days=days)  # type: ignore[arg-type]


# --- load and read ---------------------------------------------------------------------


def test_load_returns_the_files_of_a_valid_directory(tls: HubTlsFiles) -> None:
    assert load_hub_tls(tls.directory) == tls


@pytest.mark.parametrize("name", ["ca.crt", "ca.key", "hub.crt", "hub.key"])
def test_load_detects_a_missing_file(tls: HubTlsFiles, name: str) -> None:
    (tls.directory / name).unlink()
    with pytest.raises(KeyFileError, match=name.replace(".", r"\.")):
        load_hub_tls(tls.directory)


def test_load_detects_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="fedloom hub init"):
        load_hub_tls(tmp_path / "nowhere")


@posix_only
@pytest.mark.parametrize("name", ["ca.key", "hub.key"])
def test_load_refuses_a_private_key_readable_by_others(tls: HubTlsFiles, name: str) -> None:
    (tls.directory / name).chmod(0o644)
    with pytest.raises(InsecureKeyFileError, match="chmod 600"):
        load_hub_tls(tls.directory)


def test_load_detects_files_from_two_hubs(tmp_path: Path) -> None:
    one, two = init_hub_tls(tmp_path / "one"), init_hub_tls(tmp_path / "two")
    one.server_certificate.unlink()
    one.server_certificate.write_bytes(two.server_certificate.read_bytes())
    with pytest.raises(KeyFileError, match="does not belong"):
        load_hub_tls(one.directory)
    one.server_key.unlink()
    one.server_key.write_bytes(two.server_key.read_bytes())
    one.server_key.chmod(0o600)
    with pytest.raises(KeyFileError, match="not signed by the CA"):
        load_hub_tls(one.directory)


def test_read_pem_returns_certificates_and_keys(tls: HubTlsFiles) -> None:
    assert read_pem(tls.ca_certificate) == tls.ca_certificate.read_bytes()
    assert read_pem(tls.server_key, private=True).startswith(b"-----BEGIN PRIVATE KEY-----")


def test_read_pem_accepts_a_bundle_of_certificates(tls: HubTlsFiles, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(tls.ca_certificate.read_bytes() + tls.server_certificate.read_bytes())
    assert read_pem(bundle) == bundle.read_bytes()


def test_read_pem_refuses_what_is_not_pem(tls: HubTlsFiles, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    junk.chmod(0o600)
    with pytest.raises(KeyFileError, match="no valid PEM certificate"):
        read_pem(junk)
    with pytest.raises(KeyFileError, match="no valid PEM private key"):
        read_pem(junk, private=True)
    # A key is not a certificate, a certificate is not a key.
    with pytest.raises(KeyFileError, match="certificate"):
        read_pem(tls.server_key)
    cert_copy = tmp_path / "cert-as-key.pem"
    cert_copy.write_bytes(tls.server_certificate.read_bytes())
    cert_copy.chmod(0o600)
    with pytest.raises(KeyFileError, match="private key"):
        read_pem(cert_copy, private=True)


def test_read_pem_refuses_missing_oversized_and_non_regular_files(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        read_pem(tmp_path / "absent.crt")
    big = tmp_path / "big.crt"
    big.write_bytes(b"A" * (MAX_PEM_BYTES + 1))
    with pytest.raises(KeyFileError, match="larger than"):
        read_pem(big)
    with pytest.raises(KeyFileError, match="not a regular file"):
        read_pem(tmp_path)
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "fifo.key"
        os.mkfifo(fifo, 0o600)
        with pytest.raises(KeyFileError, match="not a regular file"):
            read_pem(fifo, private=True)


def test_read_pem_refuses_an_encrypted_key(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "locked.key"
    path.write_bytes(
        key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(b"pw"))
    )
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="encrypted"):
        read_pem(path, private=True)


@posix_only
def test_read_pem_checks_private_key_modes(tls: HubTlsFiles) -> None:
    tls.server_key.chmod(0o640)
    with pytest.raises(InsecureKeyFileError, match="0o640"):
        read_pem(tls.server_key, private=True)


# --- client certificates ---------------------------------------------------------------


def test_client_certificate_is_for_client_auth_and_signed_by_the_ca(
    tls: HubTlsFiles, tmp_path: Path
) -> None:
    cert_path, key_path = issue_client_certificate(tls, "pod-a", tmp_path / "clients")
    assert (cert_path.name, key_path.name) == ("pod-a.crt", "pod-a.key")
    if os.name == "posix":
        assert _mode(key_path) == 0o600
        assert _mode(cert_path) == 0o644
    cert = _cert(cert_path)
    cert.verify_directly_issued_by(_cert(tls.ca_certificate))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "pod-a"
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert read_pem(key_path, private=True) == key_path.read_bytes()


def test_client_certificate_never_outlives_the_ca(tmp_path: Path) -> None:
    tls = init_hub_tls(tmp_path / "hub", days=30)
    cert_path, _ = issue_client_certificate(tls, "pod-a", tmp_path, days=3000)
    assert _cert(cert_path).not_valid_after_utc <= _cert(tls.ca_certificate).not_valid_after_utc


def test_client_certificate_refuses_to_overwrite(tls: HubTlsFiles, tmp_path: Path) -> None:
    cert_path, key_path = issue_client_certificate(tls, "pod-a", tmp_path)
    before = (cert_path.read_bytes(), key_path.read_bytes())
    with pytest.raises(KeyFileError, match=r"pod-a\.(crt|key)"):
        issue_client_certificate(tls, "pod-a", tmp_path)
    assert (cert_path.read_bytes(), key_path.read_bytes()) == before


@pytest.mark.parametrize("name", ["", "Pod", "1pod", "pod.a", "../pod", "p" * 65, "pod a", None])
def test_client_certificate_refuses_bad_names(
    tls: HubTlsFiles, tmp_path: Path, name: object
) -> None:
    with pytest.raises(ConfigError, match="not valid"):
        issue_client_certificate(tls, name, tmp_path / "out")  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()


@posix_only
def test_client_certificate_refuses_an_exposed_ca_key(tls: HubTlsFiles, tmp_path: Path) -> None:
    tls.ca_key.chmod(0o644)
    with pytest.raises(InsecureKeyFileError):
        issue_client_certificate(tls, "pod-a", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- real TLS over gRPC ----------------------------------------------------------------


async def _echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return b"echo:" + request


@asynccontextmanager
async def _hub(tls: HubTlsFiles, *, require_client_auth: bool = False) -> AsyncIterator[int]:
    """A gRPC server on 127.0.0.1 with the hub's certificate; yields its port."""
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "fedloom.test.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}
    )
    server.add_generic_rpc_handlers((handler,))
    credentials = grpc.ssl_server_credentials(
        [(read_pem(tls.server_key, private=True), read_pem(tls.server_certificate))],
        root_certificates=read_pem(tls.ca_certificate) if require_client_auth else None,
        require_client_auth=require_client_auth,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    assert port > 0
    await server.start()
    try:
        yield port
    finally:
        await server.stop(None)


async def _call(
    port: int, root: bytes, client: tuple[Path, Path] | None = None, host: str = "127.0.0.1"
) -> bytes:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=root,
        private_key=read_pem(client[1], private=True) if client else None,
        certificate_chain=read_pem(client[0]) if client else None,
    )
    async with grpc.aio.secure_channel(f"{host}:{port}", credentials) as channel:
        echo: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(METHOD)
        reply = await echo(b"ping", timeout=CALL_TIMEOUT)
    assert isinstance(reply, bytes)
    return reply


async def test_grpc_client_trusting_the_hub_ca_connects(tls: HubTlsFiles) -> None:
    async with _hub(tls) as port:
        assert await _call(port, read_pem(tls.ca_certificate)) == b"echo:ping"


async def test_grpc_client_trusting_another_ca_is_refused(tls: HubTlsFiles, tmp_path: Path) -> None:
    other = init_hub_tls(tmp_path / "other")
    async with _hub(tls) as port:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _call(port, read_pem(other.ca_certificate))
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        # The refusal is about the peer, not the server: the right CA still gets in.
        assert await _call(port, read_pem(tls.ca_certificate)) == b"echo:ping"


async def test_grpc_client_refuses_a_host_the_certificate_does_not_name(tmp_path: Path) -> None:
    tls = init_hub_tls(tmp_path, hostnames=["hub.example.org"])
    async with _hub(tls) as port:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _call(port, read_pem(tls.ca_certificate))
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_grpc_mutual_tls_needs_an_issued_client_certificate(
    tls: HubTlsFiles, tmp_path: Path
) -> None:
    issued = issue_client_certificate(tls, "pod-a", tmp_path / "clients")
    stranger_ca = init_hub_tls(tmp_path / "stranger")
    stranger = issue_client_certificate(stranger_ca, "pod-a", tmp_path / "stranger-clients")
    root = read_pem(tls.ca_certificate)
    async with _hub(tls, require_client_auth=True) as port:
        for client in (None, stranger):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await _call(port, root, client)
            assert caught.value.code() is grpc.StatusCode.UNAVAILABLE, client
        assert await _call(port, root, issued) == b"echo:ping"
