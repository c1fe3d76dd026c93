"""A hub and pods as separate OS processes on this machine, wired up like a real deployment.

:class:`LocalCluster` does in one call what an administrator does by hand: makes an identity
per party (``fedloom keys new``), the hub's TLS material (``fedloom hub init``), registers
the identities (``fedloom hub register``), writes one ``pod.toml`` per pod, then starts
``fedloom hub start`` and ``fedloom pod start`` as child processes on 127.0.0.1 (the hub
on a port the OS picks). The pods share this machine's cores: each gets an equal share
(``[worker] cores``) for its task children's thread budgets. The modeller side stays in
the calling process: :meth:`LocalCluster.connect_modeller` returns its hub connection.
:meth:`stop` sends SIGTERM to every child and SIGKILL to any that has not exited after a
grace period, so nothing is left behind. ``make demo`` and the integration tests use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from fedloom.crypto import Identity, load_identity, save_identity
from fedloom.errors import ConfigError, HubUnavailableError
from fedloom.hub._store import HubStore
from fedloom.hub._tls import init_hub_tls
from fedloom.transport._grpc_mailbox import GrpcMailbox
from fedloom.transport._hub_config import HubAddress, TlsClientConfig
from fedloom.worker._lifetime import PARENT_PID_ENV
from fedloom.worker._threads import available_cores, share_of_cores

logger = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 15.0
START_SECONDS = 60.0
_TomlValue = str | int | float | bool | list[str]


@dataclass(frozen=True)
class PodSpec:
    """One pod of a :class:`LocalCluster`: its datasets and what it accepts."""

    datasets: Mapping[str, Mapping[str, _TomlValue]]
    protocols: tuple[str, ...] | None = None
    min_rows: int | None = None
    max_concurrent_tasks: int = 2
    extra_modellers: tuple[str, ...] = ()
    plugins: tuple[str, ...] = ()
    worker: Mapping[str, int | float] = field(default_factory=dict)
    """The pod's [worker] table: heartbeat_interval, heartbeat_patience, memory_limit_mb,
    threads, cores. Without ``threads`` or ``cores`` the cluster gives each pod an equal
    share of this machine's cores (``cores``), which the pod shares among its task slots."""


@dataclass
class _Child:
    name: str
    process: asyncio.subprocess.Process
    log: Path


@dataclass
class LocalCluster:
    """Hub + pods as child processes; use ``async with LocalCluster(...) as cluster``."""

    root: Path
    pods: Mapping[str, PodSpec]
    modeller: str = "modeller"
    tls: bool = True
    hub_options: tuple[str, ...] = ()
    hub_port: int = 0
    other_modellers: tuple[str, ...] = ()
    """Modellers registered with the hub that no pod accepts (unless a PodSpec says so)."""
    _identities: dict[str, Identity] = field(default_factory=dict, init=False)
    _hub: _Child | None = field(default=None, init=False)
    _pods: dict[str, _Child] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        if not self.pods:
            raise ConfigError("a cluster needs at least one pod")
        if self.modeller in self.pods:
            raise ConfigError(f"the modeller's name {self.modeller!r} is also a pod's name")
        self.root = Path(self.root).resolve()

    # --- set-up ---------------------------------------------------------------------

    @property
    def hub_dir(self) -> Path:
        """The hub's data folder (its store and TLS files)."""
        return self.root / "hub"

    @property
    def keys_dir(self) -> Path:
        """The folder of every party's key files."""
        return self.root / "keys"

    @property
    def address(self) -> HubAddress:
        """The running hub's address.

        Raises:
            ConfigError: the hub has not started yet.
        """
        if self.hub_port == 0:
            raise ConfigError("the hub has not started yet")
        return HubAddress("127.0.0.1", self.hub_port)

    def client_tls(self) -> TlsClientConfig | None:
        """What a client needs to reach the hub over TLS (None: plaintext)."""
        return TlsClientConfig(ca=self.hub_dir / "tls" / "ca.crt") if self.tls else None

    def prepare(self) -> None:
        """Keys, TLS material, registrations (idempotent: reuses what exists)."""
        self.root.mkdir(parents=True, exist_ok=True)
        extra = {name for spec in self.pods.values() for name in spec.extra_modellers}
        extra |= set(self.other_modellers)
        roles = {self.modeller: "modeller"} | dict.fromkeys(extra, "modeller")
        roles |= dict.fromkeys(self.pods, "pod")
        for name in roles:
            key_path = self.keys_dir / f"{name}.key"
            if key_path.exists():
                self._identities[name] = load_identity(key_path)
            else:
                self._identities[name] = Identity.generate(name)
                save_identity(self._identities[name], self.keys_dir)
        if self.tls and not (self.hub_dir / "tls" / "ca.crt").exists():
            init_hub_tls(self.hub_dir / "tls")
        with HubStore(self.hub_dir) as store:
            for name, role in roles.items():
                store.register(self._identities[name].public(), role, replace=True)

    def identity(self, name: str) -> Identity:
        """The identity of party ``name`` (the modeller or a pod)."""
        return self._identities[name]

    def pod_config_path(self, pod: str) -> Path:
        """The pod.toml this cluster wrote for ``pod``."""
        return self.root / "pods" / pod / "pod.toml"

    def _write_pod_config(self, pod: str, spec: PodSpec) -> Path:
        path = self.pod_config_path(pod)
        path.parent.mkdir(parents=True, exist_ok=True)
        modellers = [self.modeller, *spec.extra_modellers]
        lines = [
            f"name = {_toml(pod)}",
            f"hub = {_toml(str(self.address))}",
            f"identity = {_toml(str(self.keys_dir / f'{pod}.key'))}",
            f"store = {_toml(str(path.parent / 'pod.sqlite'))}",
            f"max_concurrent_tasks = {spec.max_concurrent_tasks}",
        ]
        if spec.plugins:
            lines.append(f"plugins = {_toml(list(spec.plugins))}")
        if not self.tls:
            lines.append("insecure = true")
        else:
            lines += ["[tls]", f"ca = {_toml(str(self.hub_dir / 'tls' / 'ca.crt'))}"]
        lines += [
            "[policy]",
            f"modellers = {_toml(modellers)}",
        ]
        if spec.protocols is not None:
            lines.append(f"protocols = {_toml(list(spec.protocols))}")
        if spec.min_rows is not None:
            lines.append(f"min_rows = {spec.min_rows}")
        worker = dict(spec.worker)
        if "threads" not in worker and "cores" not in worker:
            # pods on one machine must not each think they have all of it
            worker["cores"] = share_of_cores(available_cores(), len(self.pods))
        lines.append("[worker]")
        lines += [f"{key} = {_toml(value)}" for key, value in worker.items()]
        lines += ["[modeller_keys]"]
        lines += [
            f"{_toml(name)} = {_toml(str(self.keys_dir / f'{name}.pub.json'))}"
            for name in modellers
        ]
        for dataset, description in spec.datasets.items():
            lines.append(f"[datasets.{_toml(dataset)}]")
            lines += [f"{key} = {_toml(value)}" for key, value in description.items()]
        path.write_text("\n".join(lines) + "\n")
        return path

    # --- processes ------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Prepare, start the hub, then every pod."""
        await asyncio.to_thread(self.prepare)
        await self.start_hub()
        for pod in self.pods:
            await self.start_pod(pod)

    async def start_hub(self) -> None:
        """Start (or restart, on the same port) the hub process and wait until it listens.

        Raises:
            HubUnavailableError: it exited or did not listen within a minute.
        """
        if self._hub is not None and self._hub.process.returncode is None:
            raise ConfigError("the hub is already running")
        args = ["hub", "start", "--data-dir", str(self.hub_dir), "--port", str(self.hub_port)]
        args += [] if self.tls else ["--insecure"]
        child = await self._spawn("hub", [*args, *self.hub_options], stdout=True)
        self._hub = child
        text = await self._ready_line(child, "fedloom hub listening on ")
        self.hub_port = int(text.rsplit(":", 1)[1])

    async def start_pod(self, pod: str, *, wait: bool = True) -> None:
        """Start the pod's process (writing its pod.toml); by default wait until it is online.

        Raises:
            HubUnavailableError: the pod exited or did not connect within a minute.
        """
        config = self._write_pod_config(pod, self.pods[pod])
        child = await self._spawn(pod, ["pod", "start", "--config", str(config)], stdout=True)
        self._pods[pod] = child
        if wait:
            await self._ready_line(child, f"fedloom pod {pod} online")

    async def _ready_line(self, child: _Child, prefix: str) -> str:
        """Wait for the line a daemon prints on stdout once it is ready."""
        assert child.process.stdout is not None
        try:
            line = await asyncio.wait_for(child.process.stdout.readline(), START_SECONDS)
        except TimeoutError:
            line = b""
        text = line.decode(errors="replace").strip()
        if not text.startswith(prefix):
            await self._terminate(child)
            raise HubUnavailableError(
                f"{child.name} did not start: {text or 'no output'}; see {child.log}:\n"
                + self.log_text(child.name)[-2000:]
            )
        return text

    async def _spawn(self, name: str, args: list[str], *, stdout: bool = False) -> _Child:
        log = self.root / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as handle:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "fedloom",
                "--verbose",
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE if stdout else handle,
                stderr=handle,
                # PARENT_PID_ENV: a crashed demo or test leaves no hub or pod behind. (Not a
                # preexec_fn: forking a process with gRPC threads and running Python before
                # exec can deadlock or crash the child.)
                env={**os.environ, "PYTHONUNBUFFERED": "1", PARENT_PID_ENV: str(os.getpid())},
            )
        logger.info("started %s (pid %d), log %s", name, process.pid, log)
        return _Child(name, process, log)

    def pid(self, name: str) -> int:
        """The process id of the hub (``"hub"``) or a pod."""
        child = self._hub if name == "hub" else self._pods.get(name)
        if child is None:
            raise ConfigError(f"no process {name!r} in this cluster")
        return child.process.pid

    async def kill(self, name: str) -> None:
        """SIGKILL the hub (``"hub"``) or a pod, as a crash would, and reap it."""
        child = self._hub if name == "hub" else self._pods.get(name)
        if child is None:
            raise ConfigError(f"no process {name!r} in this cluster")
        with contextlib.suppress(ProcessLookupError):
            child.process.send_signal(signal.SIGKILL)
        await child.process.wait()

    async def stop_process(self, name: str) -> int:
        """SIGTERM one process; returns its exit code (SIGKILL after the grace period)."""
        child = self._hub if name == "hub" else self._pods.get(name)
        if child is None:
            raise ConfigError(f"no process {name!r} in this cluster")
        return await self._terminate(child)

    async def _terminate(self, child: _Child) -> int:
        process = child.process
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), STOP_GRACE_SECONDS)
            except TimeoutError:
                logger.warning(
                    "%s did not stop within %.0f s; killing it", child.name, STOP_GRACE_SECONDS
                )
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGKILL)
                await process.wait()
        if process.stdout is not None:
            with contextlib.suppress(Exception):
                await process.stdout.read()
        assert process.returncode is not None
        return process.returncode

    async def stop(self) -> dict[str, int]:
        """Stop every pod, then the hub; returns each process's exit code."""
        codes: dict[str, int] = {}
        results = await asyncio.gather(*(self._terminate(c) for c in self._pods.values()))
        codes.update(zip(self._pods, results, strict=True))
        if self._hub is not None:
            codes["hub"] = await self._terminate(self._hub)
        return codes

    def log_text(self, name: str) -> str:
        """What a process wrote to its log so far."""
        path = self.root / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def connect_modeller(self, name: str | None = None, **options: Any) -> GrpcMailbox:
        """The modeller's (or another registered modeller's) connection to the hub."""
        name = name or self.modeller
        pinned = {pod: self._identities[pod].public() for pod in self.pods}
        mailbox = GrpcMailbox(
            self._identities[name],
            self.address,
            tls=self.client_tls(),
            insecure=not self.tls,
            pinned=pinned,
            **options,
        )
        return await mailbox.connect()


def _toml(value: _TomlValue | Iterable[str]) -> str:
    """A TOML literal for a string, number, bool or list of strings (JSON spells them alike)."""
    if isinstance(value, bool | int | float | str):
        return json.dumps(value)
    items = list(value)
    if not all(isinstance(item, str) for item in items):
        raise ConfigError(f"cannot write {value!r} into a pod's TOML file")
    return json.dumps(items)
