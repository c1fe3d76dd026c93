"""End-to-end protection of messages that travel through a hub.

A hub stores and forwards messages it must not be able to read or forge:

- **Sealing.** Every task has its own AES-256-GCM :class:`~fedloom.crypto.TaskKey`. The
  first party to send a message of a task makes the key; every sealed message carries the
  key wrapped for its recipient's X25519 key (92 bytes, cached per task and recipient),
  so a recipient can open any message of the task, in any order, even after a restart.
  A recipient that has no key for the task yet adopts the one it received, so the normal
  flow (modeller's JOB_REQUEST first) uses a single key per task in both directions.
  The whole plaintext message (envelope, body, tensors) is encrypted; the envelope the hub
  routes by is repeated outside and bound to the ciphertext as associated data, and checked
  against the inner copy on opening.
- **Signing.** A sealed frame is signed with the sender's Ed25519 key over a SHA-256 digest
  of the whole frame (domain-separated), so the hub and the recipient can both check it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

import msgpack
import numpy as np

from fedloom.crypto import (
    Identity,
    PublicIdentity,
    TaskKey,
    sign,
    unwrap_task_key,
    verify,
    wrap_task_key,
)
from fedloom.errors import ConfigError, DecryptionError, WireError
from fedloom.wire import DEFAULT_MAX_MESSAGE_BYTES, Message, decode, encode

KeyLookup = Callable[[str], Awaitable[PublicIdentity]]
"""Returns the public identity of a name (raises UnknownRecipientError if there is none)."""

SEALED_TENSOR = "sealed"
WRAPPED_KEY_FIELD = "key"
_SIGNATURE_DOMAIN = b"fedloom-frame-v1\x00"
_NO_TASK = "~"  # task keys are bound to a task id; messages outside a task share this one
MAX_CACHED_TASKS = 4096
"""Task keys kept per party; the oldest are forgotten first (a task that old is over)."""


def frame_digest(frame: bytes | bytearray | memoryview) -> bytes:
    """The domain-separated digest a frame signature covers."""
    return _SIGNATURE_DOMAIN + hashlib.sha256(frame).digest()


def sign_frame(identity: Identity, frame: bytes | bytearray | memoryview) -> bytes:
    """``identity``'s signature of an encoded frame."""
    return sign(identity, frame_digest(frame))


def verify_frame(
    public: PublicIdentity, frame: bytes | bytearray | memoryview, signature: bytes
) -> None:
    """Check a frame signature.

    Raises:
        BadSignatureError: ``signature`` is not ``public``'s signature of ``frame``.
    """
    verify(public, frame_digest(frame), signature)


def envelope_bytes(message: Message) -> bytes:
    """The routed envelope of ``message``, as authenticated data of its sealed payload."""
    return msgpack.packb(
        [
            message.type.value,
            message.sender,
            message.recipient,
            message.task_id,
            message.sequence,
            float(message.timestamp),
        ]
    )


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _BoundedCache(Generic[K, V]):
    """An insertion-ordered dict that forgets its oldest entries past ``limit``."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._items: dict[K, V] = {}

    def get(self, key: K) -> V | None:
        return self._items.get(key)

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        while len(self._items) > self._limit:
            del self._items[next(iter(self._items))]

    def __len__(self) -> int:
        return len(self._items)


class _TaskKeys:
    """A task's key and its wrapped copies, by recipient."""

    def __init__(self, key: TaskKey) -> None:
        self.key = key
        self.wrapped: dict[str, bytes] = {}


class Sealer:
    """Seals outgoing and opens incoming messages for one identity."""

    def __init__(
        self,
        identity: Identity,
        lookup: KeyLookup,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.identity = identity
        self._lookup = lookup
        self._max_bytes = max_message_bytes
        self._task_keys: _BoundedCache[str, _TaskKeys] = _BoundedCache(MAX_CACHED_TASKS)
        self._unwrapped: _BoundedCache[tuple[str, bytes], TaskKey] = _BoundedCache(MAX_CACHED_TASKS)

    def task_key(self, task_id: str) -> TaskKey | None:
        """The key this party uses for ``task_id``, if it has one."""
        keys = self._task_keys.get(task_id or _NO_TASK)
        return None if keys is None else keys.key

    async def prepare(self, message: Message) -> None:
        """Make sure the task key of ``message`` is wrapped for its recipient.

        Raises:
            UnknownRecipientError: the recipient's public identity cannot be found.
        """
        task = message.task_id or _NO_TASK
        keys = self._task_keys.get(task)
        if keys is None:
            keys = _TaskKeys(TaskKey.generate())
            self._task_keys.put(task, keys)
        if message.recipient not in keys.wrapped:
            recipient = await self._lookup(message.recipient)
            keys.wrapped[message.recipient] = wrap_task_key(keys.key, recipient, task_id=task)

    def seal(self, message: Message) -> Message:
        """The sealed form of a stamped ``message`` (same envelope, encrypted content).

        CPU-bound and thread-safe for distinct messages; call :meth:`prepare` first.

        Raises:
            ConfigError: :meth:`prepare` was not called for this task and recipient.
            WireError: the message cannot be encoded or is too large.
        """
        task = message.task_id or _NO_TASK
        keys = self._task_keys.get(task)
        wrapped = None if keys is None else keys.wrapped.get(message.recipient)
        if keys is None or wrapped is None:
            raise ConfigError(f"no task key prepared for {task!r} and {message.recipient!r}")
        plaintext = encode(message, max_bytes=self._max_bytes)
        ciphertext = keys.key.encrypt(plaintext, associated_data=envelope_bytes(message))
        return message.with_updates(
            body={WRAPPED_KEY_FIELD: wrapped},
            tensors={SEALED_TENSOR: np.frombuffer(ciphertext, dtype=np.uint8)},
        )

    def open(self, sealed: Message) -> Message:
        """The plaintext message inside ``sealed``.

        Raises:
            DecryptionError: the message is not sealed for this identity, was changed on the
                way, or its inner envelope differs from the routed one.
            WireError: the decrypted content is not a valid message.
        """
        body = sealed.body
        wrapped = body.get(WRAPPED_KEY_FIELD) if isinstance(body, dict) else None
        ciphertext = sealed.tensors.get(SEALED_TENSOR)
        if (
            not isinstance(wrapped, bytes)
            or ciphertext is None
            or len(sealed.tensors) != 1
            or ciphertext.dtype != np.uint8
            or ciphertext.ndim != 1
        ):
            raise DecryptionError(
                f"{sealed.type.value} from {sealed.sender!r} is not a sealed message"
            )
        task = sealed.task_id or _NO_TASK
        key = self._unwrapped.get((task, wrapped))
        if key is None:
            key = unwrap_task_key(wrapped, self.identity, task_id=task)
            self._unwrapped.put((task, wrapped), key)
            if self._task_keys.get(task) is None:
                self._task_keys.put(task, _TaskKeys(key))
        plaintext = key.decrypt(ciphertext.data, associated_data=envelope_bytes(sealed))
        try:
            inner = decode(plaintext, max_bytes=self._max_bytes)
        except WireError as exc:
            raise WireError(f"sealed message from {sealed.sender!r} holds garbage: {exc}") from exc
        if envelope_bytes(inner) != envelope_bytes(sealed):
            raise DecryptionError(
                f"sealed message from {sealed.sender!r}: inner envelope differs from the routed one"
            )
        return inner
