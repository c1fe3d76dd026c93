"""fedloom cryptography: identities, signatures and per-task end-to-end encryption.

- :class:`Identity` / :class:`PublicIdentity`: Ed25519 (signing) + X25519 (key agreement)
  key pairs under a name, saved as a private ``<name>.key`` (mode 0600) and a public
  ``<name>.pub.json``;
- :func:`sign` / :func:`verify`: Ed25519 signatures;
- :class:`TaskKey`, :func:`wrap_task_key`, :func:`unwrap_task_key`: one AES-256-GCM key per
  task, delivered to each pod so that only that pod can read it.

Bad key files raise :class:`~fedloom.errors.KeyFileError` (a private key readable by
others: :class:`~fedloom.errors.InsecureKeyFileError`); other bad local inputs raise
:class:`~fedloom.errors.ConfigError`. Received data that fails authentication raises an
:class:`~fedloom.errors.AuthenticationError`: :class:`~fedloom.errors.BadSignatureError`
or :class:`~fedloom.errors.DecryptionError`.
"""

from fedloom.crypto._identity import (
    Identity,
    PublicIdentity,
    load_identity,
    load_pinned_identities,
    load_public_identity,
    save_identity,
    sign,
    verify,
    write_file,
)
from fedloom.crypto._task_keys import TaskKey, unwrap_task_key, wrap_task_key

__all__ = [
    "Identity",
    "PublicIdentity",
    "TaskKey",
    "load_identity",
    "load_pinned_identities",
    "load_public_identity",
    "save_identity",
    "sign",
    "unwrap_task_key",
    "verify",
    "wrap_task_key",
    "write_file",
]
