"""PEM files for TLS: certificates and private keys, read with a size bound and checked.

:func:`read_pem` gives gRPC the bytes of a certificate (chain) or an unencrypted private key
only its owner can read; anyone who opens TLS connections or serves them reads its files
here, without the hub's CA code.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from fedloom.errors import InsecureKeyFileError, KeyFileError

__all__ = ["MAX_PEM_BYTES", "read_pem"]

MAX_PEM_BYTES = 1 << 20
"""Largest PEM file :func:`read_pem` reads (a certificate chain is a few KiB)."""


def _read_bounded(path: Path, *, private: bool) -> bytes:
    what = "private key file" if private else "certificate file"
    try:
        # O_NONBLOCK: opening a FIFO put in place of the file must not hang; it is refused below.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError as exc:
        raise KeyFileError(f"{what} {str(path)!r} does not exist") from exc
    except OSError as exc:
        raise KeyFileError(f"cannot read {what} {str(path)!r}: {exc.strerror}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileError(f"{what} {str(path)!r} is not a regular file")
        if private and os.name == "posix" and stat.S_IMODE(info.st_mode) & 0o077:
            raise InsecureKeyFileError(
                f"private key file {str(path)!r} has mode {stat.S_IMODE(info.st_mode):#o} and "
                f"is readable by others than its owner; run `chmod 600 {path}`"
            )
        with os.fdopen(fd, "rb") as handle:
            fd = -1
            data = handle.read(MAX_PEM_BYTES + 1)
    except OSError as exc:
        raise KeyFileError(f"cannot read {what} {str(path)!r}: {exc.strerror}") from exc
    finally:
        if fd >= 0:
            os.close(fd)
    if len(data) > MAX_PEM_BYTES:
        raise KeyFileError(f"{what} {str(path)!r} is larger than {MAX_PEM_BYTES} bytes")
    return data


def _load_certificates(path: Path) -> tuple[bytes, list[x509.Certificate]]:
    data = _read_bounded(path, private=False)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise KeyFileError(
            f"certificate file {str(path)!r} holds no valid PEM certificate"
        ) from exc
    return data, certificates


def _load_private_key(path: Path) -> tuple[bytes, CertificateIssuerPrivateKeyTypes]:
    data = _read_bounded(path, private=True)
    try:
        key = load_pem_private_key(data, password=None)
    except TypeError as exc:  # the key is encrypted; gRPC cannot take a passphrase
        raise KeyFileError(
            f"private key file {str(path)!r} is encrypted; gRPC needs an unencrypted key"
        ) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(
            f"private key file {str(path)!r} holds no valid PEM private key"
        ) from exc
    if not isinstance(
        key,
        ec.EllipticCurvePrivateKey
        | rsa.RSAPrivateKey
        | ed25519.Ed25519PrivateKey
        | ed448.Ed448PrivateKey,
    ):
        raise KeyFileError(
            f"private key file {str(path)!r} holds a {type(key).__name__}, which cannot be "
            "used for TLS; use an ECDSA P-256 key"
        )
    return data, key


def read_pem(path: str | os.PathLike[str], *, private: bool = False) -> bytes:
    """The bytes of a PEM file, after checking that they are what they claim to be.

    With ``private=False`` the file must hold one or more certificates; with
    ``private=True`` an unencrypted private key, in a file only its owner can read. The
    bytes are returned as read, ready for ``grpc.ssl_server_credentials`` or
    ``grpc.ssl_channel_credentials``.

    Raises:
        KeyFileError: the file is missing, unreadable, not a regular file, larger than
            :data:`MAX_PEM_BYTES`, or does not parse as a certificate (private key).
        InsecureKeyFileError: ``private`` and the file is readable or writable by group or
            others (``chmod 600`` it).
    """
    if private:
        return _load_private_key(Path(path))[0]
    return _load_certificates(Path(path))[0]
