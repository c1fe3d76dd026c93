"""Running a task through a hub: what ``fedloom run TASK.toml`` does.

The modeller connects outbound to the hub as its identity, runs the task file's protocol
on its pods under its request policy, and closes the connection.
"""

from __future__ import annotations

import contextlib
from typing import Any

from fedloom._events import EventStream
from fedloom.crypto import load_identity, load_pinned_identities
from fedloom.modeller._modeller import Modeller
from fedloom.modeller._result import TaskResult
from fedloom.modeller._task_file import TaskFile
from fedloom.session import RequestPolicy
from fedloom.store import ExperimentStore, SqliteExperimentStore
from fedloom.transport._grpc_mailbox import GrpcMailbox


async def connect_modeller(task: TaskFile, *, timeout: float = 15.0) -> GrpcMailbox:
    """Open the task file's identity's connection to its hub.

    Raises:
        KeyFileError: the identity or a pinned key cannot be loaded.
        HubUnavailableError: the hub cannot be reached within ``timeout`` seconds.
        AccessDeniedError / AuthenticationError: the hub refused the identity.
    """
    identity = load_identity(task.identity_path)
    mailbox = GrpcMailbox(
        identity,
        task.hub_address,
        tls=task.tls,
        insecure=task.insecure,
        pinned=load_pinned_identities(task.pod_keys, task.path),
    )
    return await mailbox.connect(timeout=timeout)


async def run_task_file(
    task: TaskFile, *, events: EventStream | None = None, **options: Any
) -> TaskResult[Any]:
    """Run ``task`` through its hub; ``options`` go to :meth:`Modeller.run`.

    The task's events are published on ``events`` (see :class:`Modeller`).

    Raises:
        ConfigError: the policy table is invalid.
        PodResponseError: pods failed the request policy.
        TransportError / AccessDeniedError / AuthenticationError: see :func:`connect_modeller`.
    """
    policy = RequestPolicy.from_dict(task.policy) if task.policy else None
    store: ExperimentStore | None = None
    with contextlib.ExitStack() as stack:
        if task.store_path is not None:
            sqlite_store = SqliteExperimentStore(task.store_path)
            stack.callback(sqlite_store.close)
            store = sqlite_store
        mailbox = await connect_modeller(task)
        modeller = Modeller(mailbox, store=store, events=events)
        try:
            return await modeller.run(
                task.protocol,
                list(task.pods),
                dataset=task.dataset,
                name=task.name,
                policy=policy,
                keep_checkpoints=task.keep_checkpoints,
                **options,
            )
        finally:
            await modeller.close()
    raise AssertionError("unreachable")  # pragma: no cover - ExitStack does not swallow
