"""The in-memory runtime: a hub, N pods and a modeller in one process (asyncio).

The pods and the modeller are the same classes that later run as separate processes over
gRPC; only the transport differs (:class:`~fedloom.transport.MemoryHub`), and messages
still go through the real wire codec.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

from fedloom.datasources import Datasource
from fedloom.errors import ConfigError
from fedloom.modeller import Modeller, RequestPolicy, TaskResult
from fedloom.pod import Pod, PodPolicy
from fedloom.protocols import TaskProtocol
from fedloom.store import ExperimentStore, PodStore
from fedloom.transport import MemoryHub
from fedloom.worker import IsolationSettings

PodData = Datasource | Mapping[str, Datasource]
"""A pod's datasets: one datasource (registered as "default") or a name → datasource map."""


R = TypeVar("R")
"""The result type of the protocol a task runs."""


class LocalFederation:
    """Run tasks against pods that live in this process; use as ``async with``."""

    def __init__(
        self,
        pods: Mapping[str, PodData],
        *,
        policy: PodPolicy | None = None,
        policies: Mapping[str, PodPolicy] | None = None,
        modeller_store: ExperimentStore | None = None,
        pod_stores: Mapping[str, PodStore] | None = None,
        modeller_name: str = "modeller",
        isolation: IsolationSettings | None = None,
        plugins: tuple[str, ...] = (),
        guests: Iterable[str] = (),
    ) -> None:
        """Build the pods and the hub; the pods go online and the modeller connects on entry.

        ``isolation``: run each task's worker side in a spawned child process, as the
        pod daemon does (``None``: in this process). ``plugins``: modules each pod imports
        in its children (and that must already be imported here). ``guests``: modellers
        besides ``modeller_name`` that the pods accept at the hub (clients a test writes
        message by message); the hub refuses every other modeller, as a real one does.

        Raises:
            ConfigError: no pods, or ``modeller_name`` is also a pod's name.
        """
        if not pods:
            raise ConfigError("a federation needs at least one pod")
        if modeller_name in pods:
            raise ConfigError(f"the modeller's name {modeller_name!r} is also a pod's name")
        policies = policies or {}
        pod_stores = pod_stores or {}
        self.hub = MemoryHub()
        self.pods = {
            name: Pod(
                name,
                {"default": data} if isinstance(data, Datasource) else data,
                policy=policies.get(name, policy),
                store=pod_stores.get(name),
                isolation=isolation,
                plugins=plugins,
            )
            for name, data in pods.items()
        }
        self._modeller_name = modeller_name
        self._accepted = sorted({modeller_name, *guests})
        self._modeller_store = modeller_store
        self._modeller: Modeller | None = None
        self._serving: list[asyncio.Task[None]] = []

    @property
    def modeller(self) -> Modeller:
        """The federation's modeller.

        Raises:
            ConfigError: used outside ``async with``.
        """
        if self._modeller is None:
            raise ConfigError(
                "the federation is not started: use `async with LocalFederation(...)`"
            )
        return self._modeller

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()
        for name, pod in self.pods.items():
            mailbox = self.hub.connect(name, "pod", accepts=self._accepted)
            self._serving.append(loop.create_task(pod.serve(mailbox), name=f"pod:{name}"))
        self._modeller = Modeller(
            self.hub.connect(self._modeller_name, "modeller"), store=self._modeller_store
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._modeller is not None:
            await self._modeller.close()
        await self.hub.close()
        for task in self._serving:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run(self, protocol: TaskProtocol[R], **options: Any) -> TaskResult[R]:
        """Run ``protocol`` on every pod; options as for :meth:`Modeller.run`."""
        return await self.modeller.run(protocol, sorted(self.pods), **options)


def run_local(
    protocol: TaskProtocol[R], pods: Mapping[str, PodData], **options: Any
) -> TaskResult[R]:
    """Run one task on in-process pods and return its result (blocking).

    ``options`` go to :class:`LocalFederation` (``policy``, ``policies``,
    ``modeller_store``, ``pod_stores``) or to :meth:`Modeller.run` (the rest).
    ``policy`` is the pods' :class:`PodPolicy` here; the modeller's
    :class:`~fedloom.modeller.RequestPolicy` is ``request_policy``.
    """
    if isinstance(options.get("policy"), RequestPolicy):
        raise ConfigError(
            "run_local's policy= is the pods' PodPolicy; pass the modeller's RequestPolicy "
            "as request_policy="
        )
    federation_keys = {
        "policy",
        "policies",
        "modeller_store",
        "pod_stores",
        "modeller_name",
        "isolation",
        "plugins",
    }
    federation_options = {k: v for k, v in options.items() if k in federation_keys}
    run_options = {k: v for k, v in options.items() if k not in federation_keys}
    if "request_policy" in run_options:
        run_options["policy"] = run_options.pop("request_policy")

    async def main() -> TaskResult[R]:
        async with LocalFederation(pods, **federation_options) as federation:
            return await federation.run(protocol, **run_options)

    return asyncio.run(main())
