"""fedloom.crypto: identities on disk, signatures, per-task encryption and key wrapping."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedloom.crypto import (
    Identity,
    PublicIdentity,
    TaskKey,
    load_identity,
    load_public_identity,
    save_identity,
    sign,
    unwrap_task_key,
    verify,
    wrap_task_key,
)
from fedloom.errors import (
    BadSignatureError,
    ConfigError,
    DecryptionError,
    InsecureKeyFileError,
    KeyFileError,
)

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")

AD = b"task-1/pod-a/EVALUATION_RESULTS/7"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _flip(data: bytes, index: int) -> bytes:
    changed = bytearray(data)
    changed[index] ^= 0x01
    return bytes(changed)


# --- identities ------------------------------------------------------------------------


def test_generate_gives_distinct_identities() -> None:
    a, b = Identity.generate("pod-a"), Identity.generate("pod-a")
    assert a.public() != b.public()
    assert a.public().name == "pod-a"
    assert len(a.public().ed25519_public) == len(a.public().x25519_public) == 32


def test_private_keys_are_not_in_repr() -> None:
    identity = Identity.generate("alice")
    key = TaskKey.generate()
    assert repr(identity) == "Identity(name='alice')"
    assert key.secret.hex() not in repr(key)


@pytest.mark.parametrize("name", ["", "Alice", "a.b", "1pod", "x" * 65, "os.system"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="identity name"):
        Identity.generate(name)


def test_public_identity_dict_round_trip() -> None:
    public = Identity.generate("modeller").public()
    data = json.loads(json.dumps(public.to_dict()))
    assert PublicIdentity.from_dict(data) == public


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("name"),
        lambda d: d.update(extra="x"),
        lambda d: d.update(name="Not A Name"),
        lambda d: d.update(ed25519_public="!!!"),
        lambda d: d.update(x25519_public=base64.b64encode(b"short").decode()),
        lambda d: d.update(ed25519_public=12),
    ],
)
def test_public_identity_from_dict_is_strict(mutate: object) -> None:
    data = Identity.generate("modeller").public().to_dict()
    mutate(data)  # type: ignore[operator]
    with pytest.raises(ConfigError):
        PublicIdentity.from_dict(data)
    with pytest.raises(ConfigError):
        PublicIdentity.from_dict([data])


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    identity = Identity.generate("pod-a")
    key_path = save_identity(identity, tmp_path / "keys")
    assert key_path == tmp_path / "keys" / "pod-a.key"
    loaded = load_identity(key_path)
    assert loaded.name == "pod-a"
    assert loaded.public() == identity.public()
    assert load_public_identity(tmp_path / "keys" / "pod-a.pub.json") == identity.public()
    # the loaded keys really work: signatures and unwrapping
    verify(identity.public(), b"hello", sign(loaded, b"hello"))
    task_key = TaskKey.generate()
    wrapped = wrap_task_key(task_key, identity.public(), task_id="t1")
    assert unwrap_task_key(wrapped, loaded, task_id="t1") == task_key


@posix_only
def test_file_modes(tmp_path: Path) -> None:
    old_umask = os.umask(0)  # even with a permissive umask, the key file is 0600
    try:
        key_path = save_identity(Identity.generate("pod-a"), tmp_path)
    finally:
        os.umask(old_umask)
    assert _mode(key_path) == 0o600
    assert _mode(tmp_path / "pod-a.pub.json") == 0o644


@posix_only
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o700, 0o666])
def test_load_refuses_wide_permissions(tmp_path: Path, mode: int) -> None:
    key_path = save_identity(Identity.generate("pod-a"), tmp_path)
    key_path.chmod(mode)
    with pytest.raises(InsecureKeyFileError, match="chmod 600") as info:
        load_identity(key_path)
    assert str(key_path) in str(info.value)


@posix_only
def test_load_accepts_narrower_permissions(tmp_path: Path) -> None:
    key_path = save_identity(Identity.generate("pod-a"), tmp_path)
    key_path.chmod(0o400)
    assert load_identity(key_path).name == "pod-a"


def test_save_refuses_to_overwrite(tmp_path: Path) -> None:
    first = Identity.generate("pod-a")
    key_path = save_identity(first, tmp_path)
    before = key_path.read_bytes()
    with pytest.raises(KeyFileError, match="already exists"):
        save_identity(Identity.generate("pod-a"), tmp_path)
    assert key_path.read_bytes() == before
    assert load_identity(key_path).public() == first.public()


def _write_key_file(path: Path, content: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)
    return path


def _valid_key_doc(tmp_path: Path) -> dict[str, object]:
    key_path = save_identity(Identity.generate("pod-a"), tmp_path / "source")
    doc: dict[str, object] = json.loads(key_path.read_text())
    return doc


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[]",
        b'{"name": "pod-a"}',
        b"x" * 10_000,
    ],
)
def test_malformed_key_files(tmp_path: Path, content: bytes) -> None:
    path = _write_key_file(tmp_path / "bad.key", content)
    with pytest.raises(KeyFileError):
        load_identity(path)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ed25519_private", base64.b64encode(b"\x01" * 31).decode()),
        ("x25519_private", base64.b64encode(b"\x01" * 33).decode()),
        ("ed25519_private", "not base64!"),
        ("x25519_private", None),
        ("format", "something-else"),
        ("version", 2),
        ("name", "../etc"),
        ("unknown", "field"),
    ],
)
def test_bad_fields_in_key_file(tmp_path: Path, field: str, value: object) -> None:
    doc = _valid_key_doc(tmp_path)
    doc[field] = value
    path = _write_key_file(tmp_path / "bad.key", json.dumps(doc).encode())
    with pytest.raises(KeyFileError):
        load_identity(path)


def test_missing_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError):
        load_identity(tmp_path / "nobody.key")
    with pytest.raises(KeyFileError):
        load_public_identity(tmp_path / "nobody.pub.json")


def test_malformed_public_file(tmp_path: Path) -> None:
    path = tmp_path / "x.pub.json"
    path.write_text('{"name": "x"}')
    with pytest.raises(KeyFileError):
        load_public_identity(path)


# --- signatures ------------------------------------------------------------------------


def test_sign_and_verify() -> None:
    identity = Identity.generate("modeller")
    signature = sign(identity, b"JOB_REQUEST body")
    assert len(signature) == 64
    verify(identity.public(), b"JOB_REQUEST body", signature)


def test_verify_refuses_changes_and_other_signers() -> None:
    identity, other = Identity.generate("modeller"), Identity.generate("mallory")
    data = b"JOB_REQUEST body"
    signature = sign(identity, data)
    with pytest.raises(BadSignatureError, match="bad signature"):
        verify(identity.public(), _flip(data, 0), signature)
    with pytest.raises(BadSignatureError, match="bad signature"):
        verify(identity.public(), data, _flip(signature, 10))
    with pytest.raises(BadSignatureError, match="bad signature"):
        verify(other.public(), data, signature)
    with pytest.raises(BadSignatureError, match="bad signature"):
        verify(identity.public(), data, sign(other, data))
    with pytest.raises(BadSignatureError, match="bad signature"):
        verify(identity.public(), data, signature[:-1])


# --- task keys -------------------------------------------------------------------------


def test_encrypt_decrypt_round_trip() -> None:
    key = TaskKey.generate()
    ciphertext = key.encrypt(b"model update", associated_data=AD)
    assert key.decrypt(ciphertext, associated_data=AD) == b"model update"
    assert len(ciphertext) == 12 + len(b"model update") + 16


def test_nonces_are_fresh_and_marker_is_hidden() -> None:
    key = TaskKey.generate()
    marker = b"SECRET-MARKER-d41d8cd98f00b204"
    plaintext = b"prefix " + marker * 20 + b" suffix"
    first = key.encrypt(plaintext, associated_data=AD)
    second = key.encrypt(plaintext, associated_data=AD)
    assert first != second
    assert first[:12] != second[:12]
    for ciphertext in (first, second):
        assert marker not in ciphertext
        assert marker[:8] not in ciphertext


def test_tampering_is_detected() -> None:
    key = TaskKey.generate()
    ciphertext = key.encrypt(b"statistics", associated_data=AD)
    for index in (0, 11, 12, len(ciphertext) - 1):  # nonce, body, tag
        with pytest.raises(DecryptionError):
            key.decrypt(_flip(ciphertext, index), associated_data=AD)
    with pytest.raises(DecryptionError):
        key.decrypt(ciphertext, associated_data=AD + b"x")
    with pytest.raises(DecryptionError):
        key.decrypt(ciphertext, associated_data=b"")
    with pytest.raises(DecryptionError):
        TaskKey.generate().decrypt(ciphertext, associated_data=AD)
    for length in (0, 5, 27, len(ciphertext) - 1):
        with pytest.raises(DecryptionError):
            key.decrypt(ciphertext[:length], associated_data=AD)


def test_task_key_size_is_checked() -> None:
    with pytest.raises(ConfigError):
        TaskKey(b"\x00" * 16)


@settings(max_examples=50, deadline=None)
@given(plaintext=st.binary(max_size=256), associated_data=st.binary(max_size=32))
def test_encrypt_decrypt_property(plaintext: bytes, associated_data: bytes) -> None:
    key = TaskKey.generate()
    ciphertext = key.encrypt(plaintext, associated_data=associated_data)
    assert len(ciphertext) == len(plaintext) + 28
    assert key.decrypt(ciphertext, associated_data=associated_data) == plaintext


# --- wrapping --------------------------------------------------------------------------


def test_wrap_unwrap_round_trip() -> None:
    pod = Identity.generate("pod-a")
    key = TaskKey.generate()
    wrapped = wrap_task_key(key, pod.public(), task_id="task-42")
    assert len(wrapped) == 92
    assert key.secret not in wrapped
    assert unwrap_task_key(wrapped, pod, task_id="task-42") == key
    assert wrap_task_key(key, pod.public(), task_id="task-42") != wrapped  # fresh ephemeral


def test_unwrap_refuses_other_identity_task_or_changes() -> None:
    pod, other = Identity.generate("pod-a"), Identity.generate("pod-b")
    wrapped = wrap_task_key(TaskKey.generate(), pod.public(), task_id="task-42")
    with pytest.raises(DecryptionError, match="cannot unwrap"):
        unwrap_task_key(wrapped, other, task_id="task-42")
    with pytest.raises(DecryptionError, match="cannot unwrap"):
        unwrap_task_key(wrapped, pod, task_id="task-43")
    for index in (0, 31, 32, 50, 91):  # ephemeral key, nonce, sealed key, tag
        with pytest.raises(DecryptionError):
            unwrap_task_key(_flip(wrapped, index), pod, task_id="task-42")
    with pytest.raises(DecryptionError):
        unwrap_task_key(wrapped[:-1], pod, task_id="task-42")
    with pytest.raises(DecryptionError):
        unwrap_task_key(b"\x00" * 92, pod, task_id="task-42")  # low-order ephemeral key


def test_unwrap_refuses_same_keys_under_another_name() -> None:
    pod = Identity.generate("pod-a")
    renamed = Identity("pod-z", pod.signing_key, pod.encryption_key)
    wrapped = wrap_task_key(TaskKey.generate(), pod.public(), task_id="t")
    with pytest.raises(DecryptionError):
        unwrap_task_key(wrapped, renamed, task_id="t")


@pytest.mark.parametrize("task_id", ["", "x" * 257])
def test_bad_task_ids(task_id: str) -> None:
    pod = Identity.generate("pod-a")
    with pytest.raises(ConfigError):
        wrap_task_key(TaskKey.generate(), pod.public(), task_id=task_id)
    with pytest.raises(ConfigError):
        unwrap_task_key(b"\x00" * 92, pod, task_id=task_id)


def test_key_path_that_is_a_directory_or_fifo_is_a_key_file_error(tmp_path: Path) -> None:
    folder = tmp_path / "folder.key"
    folder.mkdir()
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_identity(folder)
    fifo = tmp_path / "fifo.key"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_identity(fifo)  # must not block waiting for a writer


def test_pinned_identities_must_be_of_the_name_they_are_pinned_for(tmp_path: Path) -> None:
    from fedloom.crypto import load_pinned_identities

    save_identity(Identity.generate("alice"), tmp_path)
    public = tmp_path / "alice.pub.json"
    assert load_pinned_identities({"alice": public})["alice"].name == "alice"
    with pytest.raises(ConfigError, match="pinned for 'bob'"):
        load_pinned_identities({"bob": public}, "pod.toml")
    with pytest.raises(KeyFileError):
        load_pinned_identities({"carol": tmp_path / "carol.pub.json"})
