"""TLS material for the gRPC hub: a private CA, the hub's server certificate, client certificates.

``fedloom hub init`` calls :func:`init_hub_tls`, which writes four files into one directory:

- ``ca.crt`` / ``ca.key``: a self-signed certificate authority that only this hub uses;
- ``hub.crt`` / ``hub.key``: the hub's server certificate, signed by that CA, naming the
  host names and IP addresses the hub is reached under (SubjectAltName).

Modellers and pods are given ``ca.crt`` and trust nothing else for the hub. For mutual TLS,
:func:`issue_client_certificate` signs a client certificate per participant with the same CA.
Keys are ECDSA P-256 and signatures SHA-256, which gRPC (BoringSSL) accepts everywhere.
Private keys are created with mode ``0600`` in one step (never readable by others, not even
for a moment) and no file is ever overwritten.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedloom._registry import NAME_PATTERN
from fedloom.crypto import write_file
from fedloom.crypto._pem import _load_certificates, _load_private_key
from fedloom.errors import ConfigError, KeyFileError

CA_CERTIFICATE_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
SERVER_CERTIFICATE_FILE = "hub.crt"
SERVER_KEY_FILE = "hub.key"

DEFAULT_HOSTNAMES: tuple[str, ...] = ("localhost", "127.0.0.1")
DEFAULT_VALIDITY_DAYS = 825
"""The longest validity that every common TLS client accepts for a server certificate."""

MAX_VALIDITY_DAYS = 3650

KEY_FILE_MODE = 0o600
CERTIFICATE_FILE_MODE = 0o644
DIRECTORY_MODE = 0o700

_CLOCK_SKEW = datetime.timedelta(minutes=5)
"""Certificates start this long before now, so a peer whose clock is behind accepts them."""

_ORGANISATION = "fedloom"
_MAX_HOSTNAMES = 100
_DNS_NAME = re.compile(
    r"^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class HubTlsFiles:
    """The paths of one hub's TLS material, all in one directory."""

    directory: Path
    ca_certificate: Path
    ca_key: Path
    server_certificate: Path
    server_key: Path

    @classmethod
    def in_directory(cls, directory: str | os.PathLike[str]) -> HubTlsFiles:
        """The standard file names inside ``directory`` (nothing is read or checked)."""
        folder = Path(directory)
        return cls(
            directory=folder,
            ca_certificate=folder / CA_CERTIFICATE_FILE,
            ca_key=folder / CA_KEY_FILE,
            server_certificate=folder / SERVER_CERTIFICATE_FILE,
            server_key=folder / SERVER_KEY_FILE,
        )


# --- checks ----------------------------------------------------------------------------


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ConfigError(
            f"certificate name {name!r} is not valid: use a lower-case word "
            "([a-z][a-z0-9_-]*, at most 64 characters)"
        )
    return name


def _check_days(days: object) -> int:
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_VALIDITY_DAYS:
        raise ConfigError(
            f"certificate validity must be a whole number of days from 1 to "
            f"{MAX_VALIDITY_DAYS}, got {days!r}"
        )
    return days


def _subject_alt_names(hostnames: Sequence[str]) -> list[x509.GeneralName]:
    if isinstance(hostnames, str):  # a lone string would be split into letters
        raise ConfigError(f"hostnames must be a list of names, got the string {hostnames!r}")
    names: list[x509.GeneralName] = []
    for host in hostnames:
        if not isinstance(host, str):
            raise ConfigError(f"a hostname must be a string, got {host!r}")
        general: x509.GeneralName
        try:
            general = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            if not _DNS_NAME.fullmatch(host):
                raise ConfigError(
                    f"hostname {host!r} is neither a DNS name (ASCII labels of letters, digits "
                    "and '-') nor an IP address"
                ) from None
            general = x509.DNSName(host.lower())
        if general not in names:
            names.append(general)
    if not names:
        raise ConfigError("at least one hostname is needed for the hub's server certificate")
    if len(names) > _MAX_HOSTNAMES:
        raise ConfigError(f"at most {_MAX_HOSTNAMES} hostnames, got {len(names)}")
    return names


def _public_der(key: CertificateIssuerPrivateKeyTypes | x509.Certificate) -> bytes:
    public = key.public_key()
    return public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


# --- certificates ----------------------------------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANISATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _hash_for(key: CertificateIssuerPrivateKeyTypes) -> hashes.SHA256 | None:
    # Ed25519 and Ed448 sign the message itself and take no separate hash.
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None
    return hashes.SHA256()


def _leaf_certificate(
    *,
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    issuer: x509.Certificate,
    issuer_key: CertificateIssuerPrivateKeyTypes,
    usage: x509.ObjectIdentifier,
    alt_names: list[x509.GeneralName] | None,
    days: int,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    # A certificate that outlives its issuer would fail verification from that day on anyway.
    not_after = min(now + datetime.timedelta(days=days), issuer.not_valid_after_utc)
    if not_after <= now:
        raise KeyFileError(
            f"the hub CA expired on {issuer.not_valid_after_utc:%Y-%m-%d}; "
            "create new TLS material with `fedloom hub init` in an empty directory"
        )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(max(now - _CLOCK_SKEW, issuer.not_valid_before_utc))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    return builder.sign(issuer_key, _hash_for(issuer_key))


def _ca_certificate(key: ec.EllipticCurvePrivateKey, days: int) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    # A random suffix keeps two hubs' CAs apart in a trust store that holds both.
    name = _name(f"fedloom hub CA {secrets.token_hex(4)}")
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=days))
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def _certificate_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(Encoding.PEM)


# --- files -----------------------------------------------------------------------------


def _refuse_existing(paths: Sequence[Path]) -> None:
    for path in paths:
        if os.path.lexists(path):
            raise KeyFileError(
                f"{str(path)!r} already exists; refusing to overwrite it "
                "(move it away or choose another directory or name)"
            )


def _write_all(files: Sequence[tuple[Path, bytes, int]]) -> None:
    """Create every file, or none: on any failure the ones already written are removed."""
    written: list[Path] = []
    try:
        for path, content, mode in files:
            write_file(path, content, mode, exclusive=True)
            written.append(path)
    except BaseException as exc:
        for path in written:
            path.unlink(missing_ok=True)
        if isinstance(exc, FileExistsError):
            raise KeyFileError(
                f"{exc.filename!r} already exists; refusing to overwrite it "
                "(move it away or choose another directory or name)"
            ) from exc
        if isinstance(exc, OSError):
            raise KeyFileError(f"cannot write {exc.filename!r}: {exc.strerror}") from exc
        raise


def _make_directory(directory: Path) -> None:
    try:
        directory.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise KeyFileError(f"cannot create directory {str(directory)!r}: {exc.strerror}") from exc


# --- public operations -----------------------------------------------------------------


def init_hub_tls(
    directory: str | os.PathLike[str],
    *,
    hostnames: Sequence[str] = DEFAULT_HOSTNAMES,
    days: int = DEFAULT_VALIDITY_DAYS,
) -> HubTlsFiles:
    """Create a hub's CA and server certificate in ``directory`` (``fedloom hub init``).

    The directory is created (mode 0700) if needed. The CA is self-signed and valid for
    ``days``; the server certificate is signed by it and names every entry of ``hostnames``
    in its SubjectAltName (IP address strings as IP addresses, the rest as DNS names). Either
    all four files are written or none.

    Raises:
        ConfigError: ``hostnames`` is empty or holds something that is neither a DNS name nor
            an IP address, or ``days`` is not from 1 to :data:`MAX_VALIDITY_DAYS`.
        KeyFileError: one of the files already exists (it is never overwritten; the message
            names it), or the directory or a file cannot be written.
    """
    alt_names = _subject_alt_names(hostnames)
    days = _check_days(days)
    tls = HubTlsFiles.in_directory(directory)
    paths = [tls.ca_certificate, tls.ca_key, tls.server_certificate, tls.server_key]
    _refuse_existing(paths)

    ca_key = _new_key()
    ca = _ca_certificate(ca_key, days)
    server_key = _new_key()
    # Clients check the SubjectAltName only; the CN is for people and has a 64-character cap.
    first_host = str(alt_names[0].value)
    server = _leaf_certificate(
        subject=_name(first_host if len(first_host) <= 64 else "fedloom hub"),
        public_key=server_key.public_key(),
        issuer=ca,
        issuer_key=ca_key,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        alt_names=alt_names,
        days=days,
    )
    _make_directory(tls.directory)
    _write_all(
        [
            (tls.ca_key, _key_pem(ca_key), KEY_FILE_MODE),
            (tls.ca_certificate, _certificate_pem(ca), CERTIFICATE_FILE_MODE),
            (tls.server_key, _key_pem(server_key), KEY_FILE_MODE),
            (tls.server_certificate, _certificate_pem(server), CERTIFICATE_FILE_MODE),
        ]
    )
    return tls


def _load_pair(
    certificate_path: Path, key_path: Path
) -> tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes]:
    certificate = _load_certificates(certificate_path)[1][0]
    key = _load_private_key(key_path)[1]
    if _public_der(key) != _public_der(certificate):
        raise KeyFileError(
            f"private key {str(key_path)!r} does not belong to certificate "
            f"{str(certificate_path)!r}; were the files mixed up with another hub's?"
        )
    return certificate, key


def load_hub_tls(directory: str | os.PathLike[str]) -> HubTlsFiles:
    """Check the TLS material that :func:`init_hub_tls` wrote into ``directory``.

    Every file must exist and parse, each private key must belong to its certificate, and
    the server certificate must be signed by the CA.

    Raises:
        KeyFileError: a file is missing, unreadable or malformed, or the files do not belong
            together (run ``fedloom hub init`` to create them).
        InsecureKeyFileError: a private key file is readable by others than its owner.
    """
    tls = HubTlsFiles.in_directory(directory)
    if not tls.directory.is_dir():
        raise KeyFileError(
            f"hub TLS directory {str(tls.directory)!r} does not exist; "
            "create it with `fedloom hub init`"
        )
    ca, _ = _load_pair(tls.ca_certificate, tls.ca_key)
    server, _ = _load_pair(tls.server_certificate, tls.server_key)
    try:
        server.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise KeyFileError(
            f"server certificate {str(tls.server_certificate)!r} is not signed by the CA in "
            f"{str(tls.ca_certificate)!r}"
        ) from exc
    return tls


def issue_client_certificate(
    tls: HubTlsFiles,
    name: str,
    out_dir: str | os.PathLike[str],
    *,
    days: int = DEFAULT_VALIDITY_DAYS,
) -> tuple[Path, Path]:
    """Sign a client certificate for mutual TLS with the hub's CA.

    The certificate has CN ``name`` and extended key usage clientAuth; it never outlives
    the CA. ``<name>.crt`` (0644) and ``<name>.key`` (0600) are written into ``out_dir``
    (created with mode 0700 if needed). Returns ``(certificate path, key path)``.

    Raises:
        ConfigError: ``name`` is not a lower-case word (``[a-z][a-z0-9_-]{0,63}``), or
            ``days`` is out of range.
        KeyFileError: a file for ``name`` already exists in ``out_dir``, the CA files are
            missing, malformed or do not belong together, the CA has expired, or the files
            cannot be written.
        InsecureKeyFileError: the CA's private key file is readable by others.
    """
    name = _check_name(name)
    days = _check_days(days)
    folder = Path(out_dir)
    certificate_path = folder / f"{name}.crt"
    key_path = folder / f"{name}.key"
    _refuse_existing([certificate_path, key_path])
    ca, ca_key = _load_pair(tls.ca_certificate, tls.ca_key)

    key = _new_key()
    certificate = _leaf_certificate(
        subject=_name(name),
        public_key=key.public_key(),
        issuer=ca,
        issuer_key=ca_key,
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        alt_names=None,
        days=days,
    )
    _make_directory(folder)
    _write_all(
        [
            (key_path, _key_pem(key), KEY_FILE_MODE),
            (certificate_path, _certificate_pem(certificate), CERTIFICATE_FILE_MODE),
        ]
    )
    return certificate_path, key_path
