"""Per-task end-to-end encryption: one AES-256-GCM key per task, wrapped for each pod.

The modeller draws a :class:`TaskKey` for each task and sends it to every pod wrapped with
:func:`wrap_task_key` (ephemeral X25519 key agreement with the pod's public X25519 key,
HKDF-SHA256, AES-256-GCM). Only that pod can :func:`unwrap_task_key` it, and only for that
task; the hub relays ciphertext it cannot read.

A wrapped key does not say who wrapped it: the sender is authenticated by signing the
message that carries it (:func:`fedloom.crypto.sign`).

Formats (all lengths in bytes):

- encrypted payload: ``nonce (12) || ciphertext || tag (16)``; nonces are random, so a key
  should encrypt well under 2**32 messages (one task never comes close);
- wrapped key: ``ephemeral X25519 public key (32) || nonce (12) || key (32) || tag (16)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fedloom.crypto._identity import KEY_BYTES, Identity, PublicIdentity
from fedloom.errors import ConfigError, DecryptionError

TASK_KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
WRAPPED_KEY_BYTES = KEY_BYTES + NONCE_BYTES + TASK_KEY_BYTES + TAG_BYTES
MAX_TASK_ID_BYTES = 256

_WRAP_LABEL = b"fedloom task key"


@dataclass(frozen=True)
class TaskKey:
    """A 32-byte AES-256-GCM key shared by the modeller and the pods of one task.

    The secret never appears in ``repr``.

    Raises:
        ConfigError: ``secret`` is not 32 bytes.
    """

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.secret, bytes) or len(self.secret) != TASK_KEY_BYTES:
            raise ConfigError(f"a task key must be {TASK_KEY_BYTES} bytes")

    @classmethod
    def generate(cls) -> TaskKey:
        """A fresh random task key."""
        return cls(AESGCM.generate_key(bit_length=TASK_KEY_BYTES * 8))

    def encrypt(self, plaintext: bytes, *, associated_data: bytes) -> bytes:
        """Encrypt ``plaintext``; ``associated_data`` is authenticated but not encrypted.

        Returns ``nonce || ciphertext || tag`` with a fresh random 12-byte nonce.
        """
        nonce = os.urandom(NONCE_BYTES)
        return nonce + AESGCM(self.secret).encrypt(nonce, plaintext, associated_data)

    def decrypt(
        self, ciphertext: bytes | bytearray | memoryview, *, associated_data: bytes
    ) -> bytes:
        """Decrypt the output of :meth:`encrypt` made with the same ``associated_data``.

        ``ciphertext`` may be any contiguous byte buffer; it is not copied.

        Raises:
            DecryptionError: the ciphertext is truncated or was changed, the associated data
                differs, or it was encrypted under another key.
        """
        if not isinstance(ciphertext, bytes | bytearray | memoryview):
            raise DecryptionError("an encrypted payload must be bytes")
        view = memoryview(ciphertext).cast("B")
        if len(view) < NONCE_BYTES + TAG_BYTES:
            raise DecryptionError("encrypted payload is truncated")
        nonce, body = bytes(view[:NONCE_BYTES]), view[NONCE_BYTES:]
        try:
            return AESGCM(self.secret).decrypt(nonce, body, associated_data)
        except InvalidTag as exc:
            raise DecryptionError(
                "encrypted payload failed authentication (tampered, or wrong key or context)"
            ) from exc


def _task_id_bytes(task_id: str) -> bytes:
    if not isinstance(task_id, str) or not task_id:
        raise ConfigError("task_id must be a non-empty string")
    raw = task_id.encode("utf-8")
    if len(raw) > MAX_TASK_ID_BYTES:
        raise ConfigError(f"task_id must be at most {MAX_TASK_ID_BYTES} bytes of UTF-8")
    return raw


def _wrap_context(
    task_id: bytes, recipient: str, ephemeral_public: bytes, recipient_public: bytes
) -> bytes:
    """HKDF info (also the AEAD associated data); every variable part is length-prefixed."""
    name = recipient.encode("utf-8")
    return b"".join(
        (
            _WRAP_LABEL,
            len(task_id).to_bytes(2, "big"),
            task_id,
            len(name).to_bytes(2, "big"),
            name,
            ephemeral_public,
            recipient_public,
        )
    )


def _derive(shared: bytes, context: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=TASK_KEY_BYTES, salt=None, info=context).derive(
        shared
    )


def wrap_task_key(key: TaskKey, recipient: PublicIdentity, *, task_id: str) -> bytes:
    """Encrypt ``key`` so that only ``recipient`` can recover it, and only for ``task_id``.

    Returns :data:`WRAPPED_KEY_BYTES` bytes (see the module docstring for the layout).

    Raises:
        ConfigError: ``task_id`` is empty or too long, or the recipient's X25519 key is a
            degenerate (low-order) point.
    """
    task = _task_id_bytes(task_id)
    ephemeral = X25519PrivateKey.generate()
    ephemeral_public = ephemeral.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    try:
        shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient.x25519_public))
    except ValueError as exc:
        raise ConfigError(f"public identity {recipient.name!r} has an unusable X25519 key") from exc
    context = _wrap_context(task, recipient.name, ephemeral_public, recipient.x25519_public)
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(_derive(shared, context)).encrypt(nonce, key.secret, context)
    return ephemeral_public + nonce + sealed


def unwrap_task_key(wrapped: bytes, identity: Identity, *, task_id: str) -> TaskKey:
    """Recover a task key that :func:`wrap_task_key` wrapped for ``identity``.

    Raises:
        ConfigError: ``task_id`` is empty or too long.
        DecryptionError: ``wrapped`` has the wrong length, was wrapped for another identity or
            another task, or was changed.
    """
    task = _task_id_bytes(task_id)
    if not isinstance(wrapped, bytes) or len(wrapped) != WRAPPED_KEY_BYTES:
        raise DecryptionError(f"a wrapped task key must be {WRAPPED_KEY_BYTES} bytes")
    ephemeral_public = wrapped[:KEY_BYTES]
    nonce = wrapped[KEY_BYTES : KEY_BYTES + NONCE_BYTES]
    sealed = wrapped[KEY_BYTES + NONCE_BYTES :]
    own_public = identity.encryption_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    try:
        shared = identity.encryption_key.exchange(
            X25519PublicKey.from_public_bytes(ephemeral_public)
        )
    except ValueError as exc:
        raise DecryptionError("wrapped task key holds an unusable ephemeral key") from exc
    context = _wrap_context(task, identity.name, ephemeral_public, own_public)
    try:
        secret = AESGCM(_derive(shared, context)).decrypt(nonce, sealed, context)
    except InvalidTag as exc:
        raise DecryptionError(
            f"cannot unwrap task key: not wrapped for {identity.name!r} and task "
            f"{task_id!r}, or changed on the way"
        ) from exc
    return TaskKey(secret)
