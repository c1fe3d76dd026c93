"""Task files: one federated task described in TOML, run by ``fedloom run TASK.toml``.

Example (every key shown; the comments say which are optional)::

    hub = "127.0.0.1:7800"          # host:port of the hub ([::1]:7800 for IPv6)
    identity = "keys/alice.key"     # the modeller's private key file; must exist
    pods = ["pod-a", "pod-b"]       # non-empty, distinct pod names
    dataset = "default"             # optional (default "default"): the pods' dataset name
    name = "my-experiment"          # optional experiment name (default: the protocol's)
    store = "alice.db"              # optional experiment store (SQLite)
    keep_checkpoints = "last"       # optional: "last" (default: the latest and the best
                                    # by validation loss), "all", or the latest N
    plugins = ["my_models"]         # optional: modules imported here first, so the task
                                    # may name what they register (the pods import their
                                    # own copy: their admin lists it in pod.toml)
    # insecure = true               # plaintext to the hub (tests only); excludes [tls]

    [tls]                           # how to reach the hub: [tls], or insecure = true above
    ca = "tls/ca.crt"               # trust this CA for the hub's certificate
    certificate = "tls/alice.crt"   # optional: mutual TLS; certificate and key go together
    key = "tls/alice.key"

    [pod_keys]                      # optional pinning: pod -> public identity file
    pod-a = "keys/pod-a.pub.json"   # (each must be one of pods)

    [policy]                        # optional request policy, kept as a raw map for
    timeout = 60                    # RequestPolicy: timeout, on_timeout, stop_on_error,
                                    # require_all, min_replies

    [task]                          # the protocol, as TaskProtocol.dump() writes it
    protocol = "analytics"
    [task.config]                   # optional when the protocol needs no settings
    request = { statistics = ["mean"], columns = ["age"] }

Relative paths are relative to the folder of the TOML file, not to the working directory;
so are the ``[task.config]`` settings a protocol takes as files on this machine (its
``local_files``: inference's ``model_file = "model.safetensors"``), which are read when the
file is. Nothing else is opened while the file is read, except that the identity file must
exist. Any unknown key, a value of the wrong type, an unknown protocol, a protocol config it
refuses or a file it cannot read raises :class:`~fedloom.errors.ConfigError` naming the
file and the key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from fedloom._config_file import TomlTable, read_toml
from fedloom._registry import NAME_PATTERN, import_plugins
from fedloom.errors import ConfigError, FedloomError
from fedloom.protocols import PROTOCOLS, TaskProtocol, load_protocol
from fedloom.store import CheckpointRetention
from fedloom.store._retention import KEEP_LAST
from fedloom.transport._hub_config import (
    HubAddress,
    TlsClientConfig,
    read_hub_connection,
)

REQUEST_POLICY_KEYS = frozenset(
    {"timeout", "on_timeout", "stop_on_error", "require_all", "min_replies"}
)
"""The keys a task file's ``[policy]`` table may hold (checked by RequestPolicy itself)."""

DEFAULT_DATASET = "default"
"""The dataset name a task file uses when it names none."""

_TOP_KEYS = frozenset(
    {
        "hub",
        "identity",
        "pods",
        "dataset",
        "name",
        "store",
        "keep_checkpoints",
        "plugins",
        "insecure",
        "tls",
        "pod_keys",
        "policy",
        "task",
    }
)
_TASK_HINTS = {
    "timeout": "request-policy keys belong in [policy]; protocol settings in [task.config]"
}


@dataclass(frozen=True)
class TaskFile:
    """One task as read from a task file by :func:`load_task_file`.

    Paths are absolute. ``policy`` is the raw ``[policy]`` table for the request policy.

    Raises:
        ConfigError: ``pods`` is empty, repeats a name or holds an invalid one, or both or
            neither of ``tls`` and ``insecure`` are given.
    """

    hub_address: HubAddress
    identity_path: Path
    pods: tuple[str, ...]
    protocol: TaskProtocol[Any]
    dataset: str = DEFAULT_DATASET
    name: str | None = None
    store_path: Path | None = None
    tls: TlsClientConfig | None = None
    insecure: bool = False
    pod_keys: dict[str, Path] = field(default_factory=dict)
    policy: dict[str, object] = field(default_factory=dict)
    path: Path | None = None
    keep_checkpoints: CheckpointRetention = field(default_factory=CheckpointRetention)
    plugins: tuple[str, ...] = ()
    """Modules imported before the task was read (they register models, protocols, ...)."""

    def __post_init__(self) -> None:
        if not self.pods or len(set(self.pods)) != len(self.pods):
            raise ConfigError(f"pods must be distinct names, at least one; got {self.pods}")
        for pod in self.pods:
            if not isinstance(pod, str) or not NAME_PATTERN.fullmatch(pod):
                raise ConfigError(f"pod name {pod!r} is not a valid name")
        if (self.tls is None) != self.insecure:
            raise ConfigError("a task needs TLS settings for the hub, or insecure=True; not both")


def load_task_file(path: str | Path) -> TaskFile:
    """Read and check a task file; see the module docstring for the format.

    Raises:
        ConfigError: the file is missing, unreadable or not TOML (with the line), a key is
            unknown, missing, of the wrong type or out of range, or the ``[task]`` does not
            rebuild into a protocol (naming file and key in every case).
    """
    top = read_toml(path, kind="task file")
    top.check_keys(_TOP_KEYS)
    address, tls, insecure = read_hub_connection(top)
    identity = top.path("identity", 'identity = "keys/alice.key"')
    if not identity.is_file():
        raise top.error("identity", f"{identity} does not exist; create it with `fedloom keys`")
    pods = top.name_list("pods", 'pods = ["pod-a", "pod-b"]')
    pod_keys = top.path_table("pod_keys")
    for pod in pod_keys:
        if pod not in pods:
            raise ConfigError(
                f"{top.file}: pod_keys.{pod}: {pod!r} is not in pods; add it there or drop this key"
            )
    policy_table = top.table("policy")
    policy: dict[str, object] = {}
    if policy_table is not None:
        policy_table.check_keys(REQUEST_POLICY_KEYS)
        policy = policy_table.plain()
    plugins = top.module_list("plugins")
    # before the task: its names (a model, a protocol) may be the plugins' own
    import_plugins(plugins, where=f"{top.file}: plugins")
    return TaskFile(
        hub_address=address,
        identity_path=identity,
        pods=pods,
        protocol=_read_task(top),
        dataset=top.name("dataset", 'dataset = "default"', default=DEFAULT_DATASET),
        name=top.optional_string("name"),
        store_path=top.optional_path("store"),
        tls=tls,
        insecure=insecure,
        pod_keys=pod_keys,
        policy=policy,
        path=top.file,
        keep_checkpoints=_read_retention(top),
        plugins=plugins,
    )


def _read_retention(top: TomlTable) -> CheckpointRetention:
    try:
        return CheckpointRetention.of(top.data.get("keep_checkpoints", KEEP_LAST))
    except ConfigError as exc:
        raise top.error("keep_checkpoints", str(exc)) from exc


def _local_files(protocol: type[TaskProtocol[Any]], config: TomlTable | None) -> dict[str, Path]:
    """The settings of ``[task.config]`` the protocol takes as files on this machine.

    Those are its ``local_files`` (e.g. inference's ``model_file``), as absolute paths: a
    relative path is relative to the task file, like every other path in it.
    """
    names: frozenset[str] = getattr(protocol, "local_files", frozenset())
    if config is None:
        return {}
    return {name: config.resolve(name, config.data[name]) for name in names if config.has(name)}


def _read_task(top: TomlTable) -> TaskProtocol[Any]:
    task = top.table("task")
    if task is None:
        raise ConfigError(
            f'{top.file}: task is missing; add a [task] table with protocol = "<name>" '
            f"(one of {', '.join(PROTOCOLS.names())}) and its settings in [task.config]"
        )
    task.check_keys({"protocol", "config"}, _TASK_HINTS)
    name = task.raw("protocol", 'protocol = "analytics"')
    if name not in PROTOCOLS:
        raise task.error(
            "protocol", f"unknown protocol {name!r}; registered: {', '.join(PROTOCOLS.names())}"
        )
    config_table = task.table("config")
    config = {} if config_table is None else config_table.plain()
    files = _local_files(PROTOCOLS.get(name), config_table)
    try:
        protocol = load_protocol(
            {"protocol": name, "config": {k: v for k, v in config.items() if k not in files}}
        )
        if files:  # read by the protocol here; a pod never gets a path
            protocol = dataclasses.replace(cast(Any, protocol), **files)
        protocol.dump()
        protocol.check_task()  # e.g. the model is registered and takes its config
    except FedloomError as exc:
        raise task.error("config", str(exc)) from exc
    return protocol
