"""Identities: an Ed25519 key to sign with and an X25519 key to receive task keys with.

An :class:`Identity` holds both private keys and never leaves its owner's machine; its
:class:`PublicIdentity` (name plus the two public keys) is what others are given. On disk an
identity is two files in one directory:

- ``<name>.key``: both private keys (raw, base64) in a small JSON object, mode ``0600``,
  created with that mode so it is never readable by others, not even for a moment;
- ``<name>.pub.json``: the public identity, mode ``0644``.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from fedloom._registry import NAME_PATTERN
from fedloom.errors import BadSignatureError, ConfigError, InsecureKeyFileError, KeyFileError

KEY_BYTES = 32
"""Length of every raw Ed25519 / X25519 key, private or public."""

SIGNATURE_BYTES = 64
"""Length of an Ed25519 signature."""

KEY_FILE_SUFFIX = ".key"
PUBLIC_FILE_SUFFIX = ".pub.json"
KEY_FILE_MODE = 0o600
PUBLIC_FILE_MODE = 0o644

_KEY_FILE_FORMAT = "fedloom-identity-key"
_FORMAT_VERSION = 1
_MAX_FILE_BYTES = 4096


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ConfigError(
            f"identity name {name!r} is not valid: use a lower-case word "
            "([a-z][a-z0-9_-]*, at most 64 characters)"
        )
    return name


def _b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _b64decode_key(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be a base64 string")
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error) as exc:
        raise ConfigError(f"{what} is not valid base64") from exc
    if len(raw) != KEY_BYTES:
        raise ConfigError(f"{what} must be {KEY_BYTES} bytes, got {len(raw)}")
    return raw


def _check_fields(data: object, expected: set[str], what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ConfigError(f"{what} must be a JSON object")
    keys = set(data)
    if keys != expected:
        missing = sorted(expected - keys)
        unknown = sorted(str(k) for k in keys - expected)
        raise ConfigError(f"{what} has missing fields {missing} / unknown fields {unknown}")
    return data


@dataclass(frozen=True)
class PublicIdentity:
    """The shareable half of an :class:`Identity`: a name and two raw public keys.

    Raises:
        ConfigError: the name is not a valid name, or a key is not a 32-byte public key.
    """

    name: str
    ed25519_public: bytes
    x25519_public: bytes

    def __post_init__(self) -> None:
        _check_name(self.name)
        for what, raw in (
            ("ed25519_public", self.ed25519_public),
            ("x25519_public", self.x25519_public),
        ):
            if not isinstance(raw, bytes) or len(raw) != KEY_BYTES:
                raise ConfigError(f"{what} must be {KEY_BYTES} bytes")
        try:
            Ed25519PublicKey.from_public_bytes(self.ed25519_public)
            X25519PublicKey.from_public_bytes(self.x25519_public)
        except ValueError as exc:
            raise ConfigError(f"public identity {self.name!r} holds an invalid key") from exc

    def to_dict(self) -> dict[str, str]:
        """The JSON-able form: the name and base64 of both public keys."""
        return {
            "name": self.name,
            "ed25519_public": _b64encode(self.ed25519_public),
            "x25519_public": _b64encode(self.x25519_public),
        }

    @classmethod
    def from_dict(cls, data: object) -> PublicIdentity:
        """Rebuild a public identity from :meth:`to_dict`'s output.

        Raises:
            ConfigError: ``data`` is not a map with exactly the fields ``to_dict`` writes,
                or a field is malformed.
        """
        fields = _check_fields(
            data, {"name", "ed25519_public", "x25519_public"}, "a public identity"
        )
        return cls(
            name=_check_name(fields["name"]),
            ed25519_public=_b64decode_key(fields["ed25519_public"], "ed25519_public"),
            x25519_public=_b64decode_key(fields["x25519_public"], "x25519_public"),
        )


@dataclass(frozen=True, eq=False)
class Identity:
    """A named party's private keys: Ed25519 to sign, X25519 to receive task keys.

    Compare identities through :meth:`public`; the private keys never appear in ``repr``.

    Raises:
        ConfigError: the name is not a valid name, or a key has the wrong type.
    """

    name: str
    signing_key: Ed25519PrivateKey = field(repr=False)
    encryption_key: X25519PrivateKey = field(repr=False)

    def __post_init__(self) -> None:
        _check_name(self.name)
        if not isinstance(self.signing_key, Ed25519PrivateKey):
            raise ConfigError("signing_key must be an Ed25519PrivateKey")
        if not isinstance(self.encryption_key, X25519PrivateKey):
            raise ConfigError("encryption_key must be an X25519PrivateKey")

    @classmethod
    def generate(cls, name: str) -> Identity:
        """A new identity with fresh random keys.

        Raises:
            ConfigError: ``name`` is not a valid name.
        """
        return cls(
            name=_check_name(name),
            signing_key=Ed25519PrivateKey.generate(),
            encryption_key=X25519PrivateKey.generate(),
        )

    def public(self) -> PublicIdentity:
        """The shareable public identity."""
        return PublicIdentity(
            name=self.name,
            ed25519_public=self.signing_key.public_key().public_bytes(
                Encoding.Raw, PublicFormat.Raw
            ),
            x25519_public=self.encryption_key.public_key().public_bytes(
                Encoding.Raw, PublicFormat.Raw
            ),
        )


def sign(identity: Identity, data: bytes) -> bytes:
    """The 64-byte Ed25519 signature of ``data`` by ``identity``."""
    return identity.signing_key.sign(data)


def verify(public: PublicIdentity, data: bytes, signature: bytes) -> None:
    """Check that ``signature`` is ``public``'s signature of ``data``.

    Raises:
        BadSignatureError: the signature is malformed or does not match (``"bad signature"``).
    """
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_BYTES:
        raise BadSignatureError(f"bad signature: not a {SIGNATURE_BYTES}-byte Ed25519 signature")
    try:
        Ed25519PublicKey.from_public_bytes(public.ed25519_public).verify(signature, data)
    except InvalidSignature as exc:
        raise BadSignatureError(f"bad signature: not signed by {public.name!r}") from exc


# --- files -----------------------------------------------------------------------------


def write_file(path: Path, content: bytes, mode: int, *, exclusive: bool) -> None:
    """Write ``content`` to ``path`` with exactly ``mode`` (the umask cannot widen or narrow it).

    ``exclusive`` refuses an existing file (FileExistsError). A failed write leaves no file
    behind.
    """
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, mode)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, mode)  # the umask may only have narrowed it; make it exact
        with os.fdopen(fd, "wb") as handle:
            fd = -1
            handle.write(content)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        path.unlink(missing_ok=True)
        raise


def save_identity(identity: Identity, directory: str | os.PathLike[str]) -> Path:
    """Write ``<name>.key`` (mode 0600) and ``<name>.pub.json`` (0644) into ``directory``.

    The directory is created (mode 0700) if it does not exist. Returns the key file's path.

    Raises:
        KeyFileError: a key file for this name already exists (it is never overwritten), or
            the files cannot be written.
    """
    folder = Path(directory)
    key_path = folder / f"{identity.name}{KEY_FILE_SUFFIX}"
    public_path = folder / f"{identity.name}{PUBLIC_FILE_SUFFIX}"
    key_doc = {
        "format": _KEY_FILE_FORMAT,
        "version": _FORMAT_VERSION,
        "name": identity.name,
        "ed25519_private": _b64encode(
            identity.signing_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        ),
        "x25519_private": _b64encode(
            identity.encryption_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        ),
    }
    public_doc = json.dumps(identity.public().to_dict(), indent=2) + "\n"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_file(key_path, json.dumps(key_doc).encode(), KEY_FILE_MODE, exclusive=True)
    except FileExistsError as exc:
        raise KeyFileError(
            f"key file {str(key_path)!r} already exists; refusing to overwrite it "
            "(move it away or choose another name)"
        ) from exc
    except OSError as exc:
        raise KeyFileError(f"cannot write key file {str(key_path)!r}: {exc.strerror}") from exc
    try:
        write_file(public_path, public_doc.encode(), PUBLIC_FILE_MODE, exclusive=False)
    except OSError as exc:
        raise KeyFileError(
            f"cannot write public identity {str(public_path)!r}: {exc.strerror}"
        ) from exc
    return key_path


def _read_small(path: Path, what: str, *, private: bool) -> bytes:
    try:
        # non-blocking, so a FIFO in the key's place cannot hang the caller
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise KeyFileError(f"cannot read {what} {str(path)!r}: {exc.strerror}") from exc
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise KeyFileError(f"{what} {str(path)!r} is not a regular file")
    with os.fdopen(fd, "rb") as handle:
        if private and os.name == "posix" and stat.S_IMODE(info.st_mode) & ~KEY_FILE_MODE:
            raise InsecureKeyFileError(
                f"key file {str(path)!r} has mode {stat.S_IMODE(info.st_mode):04o}, which lets "
                f"others read or change it; run `chmod 600 {path}` and try again"
            )
        content = handle.read(_MAX_FILE_BYTES + 1)
    if len(content) > _MAX_FILE_BYTES:
        raise KeyFileError(f"{what} {str(path)!r} is larger than {_MAX_FILE_BYTES} bytes")
    return content


def _parse_json(content: bytes, what: str, path: Path) -> object:
    try:
        return json.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise KeyFileError(f"{what} {str(path)!r} is not valid JSON") from exc


def load_identity(path: str | os.PathLike[str]) -> Identity:
    """Read an identity from a key file written by :func:`save_identity`.

    Raises:
        KeyFileError: the file is missing, readable by anyone but its owner (mode wider than
            0600), not valid JSON, of another format, or holds keys of the wrong length.
    """
    key_path = Path(path)
    content = _read_small(key_path, "key file", private=True)
    try:
        return _identity_from_json(content, key_path)
    except KeyFileError:
        raise
    except ConfigError as exc:
        raise KeyFileError(f"key file {str(key_path)!r} is malformed: {exc}") from exc


def _identity_from_json(content: bytes, key_path: Path) -> Identity:
    fields = _check_fields(
        _parse_json(content, "key file", key_path),
        {"format", "version", "name", "ed25519_private", "x25519_private"},
        f"key file {str(key_path)!r}",
    )
    if fields["format"] != _KEY_FILE_FORMAT or fields["version"] != _FORMAT_VERSION:
        raise KeyFileError(
            f"key file {str(key_path)!r} is not a version-{_FORMAT_VERSION} fedloom key file"
        )
    return Identity(
        name=_check_name(fields["name"]),
        signing_key=Ed25519PrivateKey.from_private_bytes(
            _b64decode_key(fields["ed25519_private"], "ed25519_private")
        ),
        encryption_key=X25519PrivateKey.from_private_bytes(
            _b64decode_key(fields["x25519_private"], "x25519_private")
        ),
    )


def load_public_identity(path: str | os.PathLike[str]) -> PublicIdentity:
    """Read a public identity from a ``<name>.pub.json`` file.

    Raises:
        KeyFileError: the file is missing, not valid JSON, or not a valid public identity.
    """
    public_path = Path(path)
    content = _read_small(public_path, "public identity", private=False)
    try:
        return PublicIdentity.from_dict(_parse_json(content, "public identity", public_path))
    except KeyFileError:
        raise
    except ConfigError as exc:
        raise KeyFileError(f"public identity {str(public_path)!r} is malformed: {exc}") from exc


def load_pinned_identities(
    paths: Mapping[str, Path], where: object = "the configuration"
) -> dict[str, PublicIdentity]:
    """Public identities pinned by name in a configuration (name → ``.pub.json`` path).

    Raises:
        KeyFileError: a file is missing or malformed.
        ConfigError: a file holds another name's identity.
    """
    keys = {name: load_public_identity(path) for name, path in paths.items()}
    for name, public in keys.items():
        if public.name != name:
            raise ConfigError(f"the key pinned for {name!r} in {where} is {public.name!r}'s")
    return keys
