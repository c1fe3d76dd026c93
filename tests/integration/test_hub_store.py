"""fedloom.hub._store: durable hub mailboxes on real SQLite files and spool folders."""

from __future__ import annotations

import gc
import logging
import mmap
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fedloom.crypto import Identity, PublicIdentity
from fedloom.errors import (
    ConfigError,
    MessageTooLargeError,
    NotFoundError,
    SchemaVersionError,
    StoreError,
    UnknownIdentityError,
    UnknownRecipientError,
)
from fedloom.hub._store import (
    HUB_APPLICATION_ID,
    HUB_ROLES,
    HUB_SCHEMA_VERSION,
    MAX_FRAME_BYTES,
    HubStore,
    HubStoreStatistics,
    RegisteredIdentity,
    StoredMessage,
)

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX signals and file modes")

POD_A = Identity.generate("pod-a").public()
POD_B = Identity.generate("pod-b").public()
MODELLER = Identity.generate("modeller").public()
SIG = bytes(range(64))
THRESHOLD = 1024  # frames above this go to spool files in these tests
BIG = bytes(range(256)) * 20  # 5120 bytes: spooled
SMALL = b"x" * 200

StoreFactory = Callable[..., HubStore]


@pytest.fixture
def open_store(tmp_path: Path) -> Iterator[StoreFactory]:
    """Open hub stores in tmp_path/hub (default: spool above 1 KiB); close them afterwards."""
    opened: list[HubStore] = []

    def factory(**options: Any) -> HubStore:
        options.setdefault("spool_threshold", THRESHOLD)
        store = HubStore(tmp_path / "hub", **options)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: StoreFactory) -> HubStore:
    """A store with pod-a, pod-b (pods) and modeller registered."""
    hub = open_store()
    _register_all(hub)
    return hub


def _register_all(hub: HubStore) -> None:
    hub.register(POD_A, "pod")
    hub.register(POD_B, "pod")
    hub.register(MODELLER, "modeller")


def _spool_files(hub: HubStore) -> list[str]:
    return sorted(path.name for path in (hub.data_dir / "spool").iterdir())


def _snapshot(hub: HubStore) -> tuple[object, ...]:
    return (
        hub.statistics(),
        [hub.last_sequence(name) for name in ("pod-a", "pod-b", "modeller")],
        hub.pending("modeller", limit=1000),
        hub.pending("pod-a", limit=1000),
        _spool_files(hub),
    )


# --- round trips and ordering ------------------------------------------------------------


def test_small_frame_round_trip_is_stored_inline(store: HubStore) -> None:
    message = store.append("pod-a", "modeller", 1, SMALL, SIG)
    assert message is not None and message.id >= 1
    assert message == StoredMessage(message.id, "pod-a", "modeller", 1, len(SMALL))
    assert store.load(message.id) == (SMALL, SIG)
    assert store.pending("modeller") == [message]
    assert _spool_files(store) == []


def test_large_frame_round_trip_goes_through_a_spool_file(store: HubStore) -> None:
    at_threshold = store.append("pod-a", "modeller", 1, b"t" * THRESHOLD, SIG)
    assert _spool_files(store) == []  # exactly the threshold stays inline
    message = store.append("pod-a", "modeller", 2, memoryview(bytearray(BIG)), SIG)
    assert at_threshold is not None and message is not None
    assert message.size == len(BIG)
    assert _spool_files(store) == [f"{message.id}.frame"]
    assert (store.data_dir / "spool" / f"{message.id}.frame").read_bytes() == BIG
    frame, signature = store.load(message.id)
    assert (type(frame), frame, signature) == (bytes, BIG, SIG)
    assert store.load(at_threshold.id) == (b"t" * THRESHOLD, SIG)


def test_pending_is_in_arrival_order_and_pages_with_after_id(store: HubStore) -> None:
    sent: list[StoredMessage] = []
    for index in range(1, 11):
        sender = "pod-a" if index % 2 else "pod-b"
        frame = BIG if index % 3 == 0 else SMALL
        message = store.append(sender, "modeller", 100 + index, frame, SIG)
        assert message is not None
        sent.append(message)
    store.append("modeller", "pod-a", 1, SMALL, SIG)  # another mailbox, in between
    ids = [message.id for message in sent]
    assert ids == sorted(ids) and len(set(ids)) == 10
    assert store.pending("modeller", limit=100) == sent
    paged: list[StoredMessage] = []
    after = 0
    while page := store.pending("modeller", after_id=after, limit=3):
        assert len(page) <= 3
        paged.extend(page)
        after = page[-1].id
    assert paged == sent
    assert store.pending("modeller", after_id=sent[-1].id) == []
    assert [m.recipient for m in store.pending("pod-a")] == ["pod-a"]
    assert store.queued("modeller") == 10 and store.queued("pod-a") == 1
    assert store.pending("nobody") == [] and store.queued("nobody") == 0


def test_ids_keep_increasing_after_every_message_is_acknowledged(
    open_store: StoreFactory,
) -> None:
    hub = open_store()
    _register_all(hub)
    first = hub.append("pod-a", "modeller", 1, SMALL, SIG)
    assert first is not None and hub.acknowledge("modeller", first.id)
    hub.close()
    reopened = open_store()
    second = reopened.append("pod-a", "modeller", 2, SMALL, SIG)
    assert second is not None and second.id > first.id


# --- sequences -----------------------------------------------------------------------------


@pytest.mark.parametrize("frame", [SMALL, BIG], ids=["inline", "spooled"])
def test_duplicate_replayed_and_reordered_messages_are_not_stored(
    store: HubStore, frame: bytes
) -> None:
    assert store.append("pod-a", "modeller", 5, frame, SIG) is not None
    before = _snapshot(store)
    assert store.append("pod-a", "modeller", 5, frame, SIG) is None  # duplicate
    assert store.append("pod-a", "modeller", 3, frame, SIG) is None  # reordered / replayed
    assert store.append("pod-a", "pod-b", 4, b"other", SIG) is None  # any recipient
    assert _snapshot(store) == before
    assert store.last_sequence("pod-a") == 5
    assert store.append("pod-a", "modeller", 9, frame, SIG) is not None  # gaps are fine
    assert store.last_sequence("pod-a") == 9
    assert store.last_sequence("pod-b") == 0
    assert store.append("pod-b", "modeller", 1, frame, SIG) is not None  # per sender


def test_sequences_survive_close_and_reopen(open_store: StoreFactory) -> None:
    hub = open_store()
    _register_all(hub)
    hub.append("pod-a", "modeller", 41, SMALL, SIG)
    hub.append("pod-b", "modeller", 7, BIG, SIG)
    hub.close()
    reopened = open_store()
    assert reopened.last_sequence("pod-a") == 41
    assert reopened.last_sequence("pod-b") == 7
    assert reopened.append("pod-a", "modeller", 41, SMALL, SIG) is None
    assert reopened.append("pod-b", "modeller", 2, BIG, SIG) is None
    assert reopened.queued("modeller") == 2


def test_changing_the_signing_key_restarts_the_sequence(store: HubStore) -> None:
    store.append("pod-a", "modeller", 10, SMALL, SIG)
    store.register(POD_A, "pod", replace=True)  # same keys: the counter stays
    assert store.last_sequence("pod-a") == 10
    new_keys = Identity.generate("pod-a").public()
    store.register(new_keys, "pod", replace=True)
    assert store.last_sequence("pod-a") == 0
    assert store.queued("modeller") == 1  # what was queued stays queued
    assert store.append("pod-a", "modeller", 1, SMALL, SIG) is not None


# --- durability ------------------------------------------------------------------------------


def test_messages_survive_a_store_that_was_never_closed(tmp_path: Path) -> None:
    folder = tmp_path / "hub"
    crashed = HubStore(folder, spool_threshold=THRESHOLD)
    _register_all(crashed)
    small = crashed.append("pod-a", "modeller", 1, SMALL, SIG)
    big = crashed.append("pod-b", "modeller", 2, BIG, SIG)
    assert small is not None and big is not None
    with warnings.catch_warnings():  # the abandoned connection and lock file warn; expected
        warnings.simplefilter("ignore", ResourceWarning)
        del crashed
        gc.collect()
    with HubStore(folder, spool_threshold=THRESHOLD) as hub:
        assert hub.pending("modeller") == [small, big]
        assert hub.load(small.id) == (SMALL, SIG)
        assert hub.load(big.id) == (BIG, SIG)
        assert hub.append("pod-b", "modeller", 2, BIG, SIG) is None


_KILLED_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from fedloom.hub._store import HubStore

    hub = HubStore(sys.argv[1], spool_threshold=int(sys.argv[2]))
    small = hub.append("pod-a", "modeller", 3, b"small" * 40, bytes(range(64)))
    big = hub.append("pod-a", "modeller", 8, bytes(range(256)) * 20, bytes(range(64)))
    print(small.id, big.id, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


@posix_only
def test_an_accepted_message_survives_sigkill(tmp_path: Path) -> None:
    folder = tmp_path / "hub"
    with HubStore(folder, spool_threshold=THRESHOLD) as hub:
        _register_all(hub)
    child = subprocess.run(
        [sys.executable, "-c", _KILLED_CHILD, str(folder), str(THRESHOLD)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    small_id, big_id = (int(word) for word in child.stdout.split())
    with HubStore(folder, spool_threshold=THRESHOLD) as hub:
        assert [m.id for m in hub.pending("modeller")] == [small_id, big_id]
        assert hub.load(small_id) == (b"small" * 40, SIG)
        assert hub.load(big_id) == (BIG, SIG)
        assert hub.last_sequence("pod-a") == 8
        assert hub.append("pod-a", "modeller", 8, BIG, SIG) is None


def test_full_synchronous_mode_round_trips(open_store: StoreFactory) -> None:
    hub = open_store(synchronous="FULL")
    _register_all(hub)
    message = hub.append("pod-a", "modeller", 1, BIG, SIG)
    assert message is not None
    hub.close()
    assert open_store(synchronous="full").load(message.id) == (BIG, SIG)


# --- acknowledgement -------------------------------------------------------------------------


def test_acknowledge_deletes_the_row_and_the_spool_file(store: HubStore) -> None:
    small = store.append("pod-a", "modeller", 1, SMALL, SIG)
    big = store.append("pod-a", "modeller", 2, BIG, SIG)
    assert small is not None and big is not None
    assert store.acknowledge("modeller", big.id) is True
    assert _spool_files(store) == []
    assert store.pending("modeller") == [small]
    with pytest.raises(NotFoundError, match="not queued"):
        store.load(big.id)
    assert store.acknowledge("modeller", big.id) is False  # idempotent
    assert store.acknowledge("modeller", small.id) is True
    assert store.queued("modeller") == 0
    assert store.acknowledge("modeller", 10**30) is False


def test_acknowledge_never_deletes_another_recipients_message(store: HubStore) -> None:
    message = store.append("pod-a", "modeller", 1, BIG, SIG)
    assert message is not None
    assert store.acknowledge("pod-b", message.id) is False
    assert store.acknowledge("pod-a", message.id) is False  # not even the sender's
    assert store.pending("modeller") == [message]
    assert store.load(message.id) == (BIG, SIG)


# --- recovery on open -----------------------------------------------------------------------


def test_orphan_spool_files_are_removed_on_open(open_store: StoreFactory) -> None:
    hub = open_store()
    _register_all(hub)
    kept = hub.append("pod-a", "modeller", 1, BIG, SIG)
    assert kept is not None
    hub.close()
    spool = hub.data_dir / "spool"
    (spool / "999.frame").write_bytes(b"renamed but never committed")
    (spool / ".incoming-abc.tmp").write_bytes(b"half written")
    (spool / "README").write_text("not ours")
    reopened = open_store()
    assert _spool_files(reopened) == [f"{kept.id}.frame", "README"]
    assert reopened.load(kept.id) == (BIG, SIG)


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_message_whose_spool_file_is_lost_is_dropped_on_open(
    open_store: StoreFactory, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    hub = open_store()
    _register_all(hub)
    lost = hub.append("pod-a", "modeller", 1, BIG, SIG)
    kept = hub.append("pod-a", "modeller", 2, SMALL, SIG)
    assert lost is not None and kept is not None
    hub.close()
    path = hub.data_dir / "spool" / f"{lost.id}.frame"
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes(BIG[:100])
    with caplog.at_level(logging.ERROR, logger="fedloom.hub._store_core"):
        reopened = open_store()
    assert any(f"dropped message {lost.id}" in r.getMessage() for r in caplog.records)
    assert reopened.pending("modeller") == [kept]
    assert reopened.statistics().queued_bytes == len(SMALL)
    assert reopened.last_sequence("pod-a") == 2
    assert _spool_files(reopened) == []


def test_a_spool_file_lost_while_open_gives_not_found(
    store: HubStore, caplog: pytest.LogCaptureFixture
) -> None:
    message = store.append("pod-a", "modeller", 1, BIG, SIG)
    assert message is not None
    (store.data_dir / "spool" / f"{message.id}.frame").unlink()
    with (
        caplog.at_level(logging.ERROR, logger="fedloom.hub._store_core"),
        pytest.raises(NotFoundError, match="lost"),
    ):
        store.load(message.id)
    assert any("dropped message" in record.getMessage() for record in caplog.records)
    assert store.pending("modeller") == []


# --- failures leave state unchanged -----------------------------------------------------


@pytest.mark.parametrize("frame", [SMALL, BIG], ids=["inline", "spooled"])
def test_unknown_sender_or_recipient_changes_nothing(store: HubStore, frame: bytes) -> None:
    store.append("pod-a", "modeller", 3, SMALL, SIG)
    before = _snapshot(store)
    with pytest.raises(UnknownIdentityError, match="'stranger' is not registered"):
        store.append("stranger", "modeller", 1, frame, SIG)
    with pytest.raises(UnknownRecipientError, match="'nobody' is not registered"):
        store.append("pod-a", "nobody", 4, frame, SIG)
    assert _snapshot(store) == before
    assert store.last_sequence("pod-a") == 3
    assert store.last_sequence("stranger") == 0
    assert store.append("pod-a", "modeller", 4, frame, SIG) is not None  # 4 is still free


@pytest.mark.parametrize(
    ("sequence", "frame", "signature"),
    [
        (0, SMALL, SIG),
        (-1, SMALL, SIG),
        (True, SMALL, SIG),
        (1 << 63, SMALL, SIG),
        ("7", SMALL, SIG),
        (1, "text", SIG),
        (1, SMALL, SIG[:63]),
        (1, SMALL, "s" * 64),
    ],
)
def test_malformed_appends_are_refused(
    store: HubStore, sequence: object, frame: object, signature: object
) -> None:
    before = _snapshot(store)
    with pytest.raises(ConfigError):
        store.append("pod-a", "modeller", sequence, frame, signature)  # type: ignore[arg-type]
    assert _snapshot(store) == before


def test_a_frame_above_two_gib_is_refused_before_any_write(store: HubStore) -> None:
    with mmap.mmap(-1, MAX_FRAME_BYTES + 1) as huge:  # anonymous: no page is touched
        view = memoryview(huge)
        try:
            with pytest.raises(MessageTooLargeError, match="larger than"):
                store.append("pod-a", "modeller", 1, view, SIG)
        finally:
            view.release()
    assert store.last_sequence("pod-a") == 0 and _spool_files(store) == []


def test_non_contiguous_frames_are_refused_and_typed_views_are_bytes(store: HubStore) -> None:
    with pytest.raises(ConfigError, match="contiguous"):
        store.append("pod-a", "modeller", 1, memoryview(SMALL)[::2], SIG)
    words = memoryview(bytearray(16)).cast("I")
    message = store.append("pod-a", "modeller", 1, words, SIG)
    assert message is not None and message.size == 16
    assert store.load(message.id)[0] == bytes(16)


# --- identities ----------------------------------------------------------------------------


def test_register_is_idempotent_and_refuses_conflicts(store: HubStore) -> None:
    store.register(POD_A, "pod")  # same name, keys and role: nothing happens
    other_keys = Identity.generate("pod-a").public()
    with pytest.raises(ConfigError, match="replace=True"):
        store.register(other_keys, "pod")
    with pytest.raises(ConfigError, match="replace=True"):
        store.register(POD_A, "modeller")
    with pytest.raises(ConfigError, match="hub role"):
        store.register(Identity.generate("pod-c").public(), "admin")
    with pytest.raises(ConfigError, match="PublicIdentity"):
        store.register(POD_A.to_dict(), "pod")  # type: ignore[arg-type]
    assert store.identity("pod-a") == RegisteredIdentity("pod-a", "pod", POD_A)
    assert store.identity("pod-c") is None
    store.register(POD_A, "modeller", replace=True)
    assert store.identity("pod-a") == RegisteredIdentity("pod-a", "modeller", POD_A)
    assert [entry.name for entry in store.identities()] == ["modeller", "pod-a", "pod-b"]
    assert set(HUB_ROLES) == {"pod", "modeller"}


def test_identities_survive_reopen(open_store: StoreFactory) -> None:
    hub = open_store()
    _register_all(hub)
    before = hub.identities()
    hub.close()
    reopened = open_store()
    assert reopened.identities() == before
    assert isinstance(before[0].public, PublicIdentity)


def test_remove_drops_the_mailbox_but_keeps_sent_messages_and_sequence(store: HubStore) -> None:
    to_b = store.append("pod-a", "pod-b", 1, BIG, SIG)
    from_b = store.append("pod-b", "modeller", 5, SMALL, SIG)
    assert to_b is not None and from_b is not None
    store.remove("pod-b")
    assert store.identity("pod-b") is None
    assert store.queued("pod-b") == 0 and _spool_files(store) == []
    assert store.pending("modeller") == [from_b]
    with pytest.raises(NotFoundError, match="pod-b"):
        store.remove("pod-b")
    with pytest.raises(UnknownRecipientError):
        store.append("pod-a", "pod-b", 2, SMALL, SIG)
    store.register(POD_B, "pod")  # same key again: replays stay refused
    assert store.append("pod-b", "modeller", 5, SMALL, SIG) is None


# --- files that are not ours -----------------------------------------------------------


def _foreign_database(path: Path, application_id: int) -> None:
    path.parent.mkdir(parents=True)
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (body TEXT)")
    conn.execute("INSERT INTO notes VALUES ('keep me')")
    conn.execute(f"PRAGMA application_id = {application_id}")
    conn.commit()
    conn.close()


@pytest.mark.parametrize(
    ("application_id", "message"),
    [(0, "did not create"), (0x464C4F4D, "pod or modeller store")],
    ids=["other-program", "fedloom-store"],
)
def test_a_non_hub_sqlite_file_is_refused_untouched(
    tmp_path: Path, application_id: int, message: str
) -> None:
    path = tmp_path / "hub" / "hub.db"
    _foreign_database(path, application_id)
    original = path.read_bytes()
    with pytest.raises(SchemaVersionError, match=message):
        HubStore(tmp_path / "hub")
    assert path.read_bytes() == original
    assert not path.with_name("hub.db-wal").exists()


def test_a_file_that_is_not_sqlite_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "hub" / "hub.db"
    path.parent.mkdir()
    path.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(SchemaVersionError, match="not a fedloom hub database"):
        HubStore(tmp_path / "hub")
    assert path.read_bytes() == b"this is not a database at all" * 100


def test_a_newer_hub_schema_is_refused_untouched(open_store: StoreFactory) -> None:
    hub = open_store()
    _register_all(hub)
    hub.close()
    path = hub.data_dir / "hub.db"
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA application_id").fetchone()[0] == HUB_APPLICATION_ID
    conn.execute(f"PRAGMA user_version = {HUB_SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    original = path.read_bytes()
    with pytest.raises(SchemaVersionError, match="upgrade fedloom"):
        HubStore(hub.data_dir)
    assert path.read_bytes() == original


# --- configuration, folder, statistics, closing -----------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"synchronous": "OFF"},
        {"synchronous": 1},
        {"spool_threshold": -1},
        {"spool_threshold": 1 << 40},
        {"spool_threshold": True},
    ],
)
def test_bad_options_are_config_errors(tmp_path: Path, options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        HubStore(tmp_path / "hub", **options)


@posix_only
def test_the_folder_is_private_and_taken_by_one_store(open_store: StoreFactory) -> None:
    hub = open_store()
    assert stat.S_IMODE(hub.data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((hub.data_dir / "hub.db").stat().st_mode) == 0o600
    with pytest.raises(StoreError, match="in use by another open hub store"):
        HubStore(hub.data_dir)
    hub.close()
    open_store().close()  # closing released the folder


def test_statistics_count_identities_messages_and_bytes(store: HubStore) -> None:
    assert store.statistics() == HubStoreStatistics(3, 0, 0)
    store.append("pod-a", "modeller", 1, SMALL, SIG)
    big = store.append("pod-b", "modeller", 1, BIG, SIG)
    store.append("modeller", "pod-a", 1, b"", SIG)
    assert big is not None
    assert store.statistics() == HubStoreStatistics(3, 3, len(SMALL) + len(BIG))
    store.acknowledge("modeller", big.id)
    assert store.statistics() == HubStoreStatistics(3, 2, len(SMALL))


def test_concurrent_appends_from_threads_keep_every_message(store: HubStore) -> None:
    def send(sender: str) -> None:
        for sequence in range(1, 41):
            frame = BIG if sequence % 4 == 0 else SMALL
            assert store.append(sender, "modeller", sequence, frame, SIG) is not None

    threads = [threading.Thread(target=send, args=(name,)) for name in ("pod-a", "pod-b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    messages = store.pending("modeller", limit=1000)
    assert len(messages) == 80
    for sender in ("pod-a", "pod-b"):
        assert [m.sequence for m in messages if m.sender == sender] == list(range(1, 41))
    assert len(_spool_files(store)) == 20


def test_a_closed_store_refuses_every_call(store: HubStore) -> None:
    message = store.append("pod-a", "modeller", 1, SMALL, SIG)
    assert message is not None
    store.close()
    store.close()  # idempotent
    calls: list[Callable[[], object]] = [
        lambda: store.register(POD_A, "pod"),
        lambda: store.remove("pod-a"),
        lambda: store.identity("pod-a"),
        store.identities,
        lambda: store.last_sequence("pod-a"),
        lambda: store.append("pod-a", "modeller", 2, SMALL, SIG),
        lambda: store.append("pod-a", "modeller", 3, BIG, SIG),
        lambda: store.pending("modeller"),
        lambda: store.load(message.id),
        lambda: store.acknowledge("modeller", message.id),
        lambda: store.queued("modeller"),
        store.statistics,
    ]
    for call in calls:
        with pytest.raises(StoreError, match="closed"):
            call()
