"""The pod daemon's configuration file, read by ``fedloom pod start --config pod.toml``.

Example (every key shown; the comments say which are optional)::

    name = "pod-a"                  # the pod's identity on the hub: a lower-case name
    hub = "127.0.0.1:7800"          # host:port of the hub ([::1]:7800 for IPv6)
    identity = "keys/pod-a.key"     # the pod's private key file; must exist
    store = "pod-a.db"              # the pod's SQLite store (created when missing)
    max_concurrent_tasks = 2        # optional, >= 1 (default 4); more tasks wait in a queue
    # insecure = true               # plaintext to the hub (tests only); excludes [tls]

    [tls]                           # how to reach the hub: [tls], or insecure = true above
    ca = "tls/ca.crt"               # trust this CA for the hub's certificate
    certificate = "tls/pod-a.crt"   # optional: mutual TLS; certificate and key go together
    key = "tls/pod-a.key"

    [policy]
    modellers = ["alice"]           # required, non-empty: a pod accepts nobody by default
    protocols = ["fedavg", "analytics"]  # optional; absent = any registered protocol
    min_rows = 10                   # optional; results over fewer rows are never released
    start_timeout = 300             # optional; seconds to wait for the modeller's TASK_START
    modeller_timeout = 300          # optional; a task whose modeller is silent this long ends

    [worker]                        # optional: how each task's child process runs
    threads = 2                     # its thread budget (torch, OpenMP, BLAS); default:
    cores = 4                       # cores (default: the machine's) / max_concurrent_tasks
    memory_limit_mb = 4096          # its resident-memory cap (default: none)
    heartbeat_interval = 5          # seconds; no beat for interval * patience = hung
    heartbeat_patience = 2

    [modeller_keys]                 # optional pinning: modeller -> public identity file
    alice = "keys/alice.pub.json"   # (each must be one of policy.modellers)

    [datasets.default]              # at least one: dataset name -> datasource description
    kind = "table"                  # as fedloom.datasources.datasource_from_config takes it
    path = "data/a.csv"
    label_column = "label"

Relative paths (``identity``, ``store``, the ``[tls]`` files, ``[modeller_keys]`` and each
dataset's ``path``) are relative to the folder of the TOML file, not to the working
directory. Nothing is opened while the file is read, except that the identity file must
exist (``fedloom pod start`` then checks every dataset before it connects:
:meth:`PodConfig.check_datasets`). Any unknown key, a value of the wrong type or out of
range, an unknown protocol name, or a missing required key raises
:class:`~fedloom.errors.ConfigError` naming the file and the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fedloom._config_file import TomlTable, read_toml
from fedloom._hooks import DEFAULT_WORKER_HOOKS
from fedloom._registry import NAME_PATTERN
from fedloom.datasources import Datasource, check_usable, datasource_from_config
from fedloom.errors import ConfigError, DataError
from fedloom.pod._policy import (
    DEFAULT_MAX_CONCURRENT_TASKS,
    DEFAULT_MODELLER_TIMEOUT,
    DEFAULT_START_TIMEOUT,
    PodPolicy,
)
from fedloom.protocols import DEFAULT_MIN_ROWS, PROTOCOLS
from fedloom.transport._hub_config import (
    HubAddress,
    TlsClientConfig,
    read_hub_connection,
)
from fedloom.worker import IsolationSettings
from fedloom.worker._config import DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_HEARTBEAT_PATIENCE

_TOP_KEYS = frozenset(
    {
        "name",
        "hub",
        "identity",
        "store",
        "max_concurrent_tasks",
        "insecure",
        "tls",
        "policy",
        "modeller_keys",
        "datasets",
        "worker",
        "plugins",
        "hooks",
        "outputs",
    }
)
_WORKER_KEYS = frozenset(
    {"heartbeat_interval", "heartbeat_patience", "memory_limit_mb", "threads", "cores"}
)
_POLICY_KEYS = frozenset(
    {
        "modellers",
        "protocols",
        "algorithms",
        "min_rows",
        "start_timeout",
        "modeller_timeout",
        "usage_limits",
        "approved_models",
    }
)
_HINTS = {
    "modellers": "modellers belongs in the [policy] table",
    "protocols": "protocols belongs in the [policy] table",
    "min_rows": "min_rows belongs in the [policy] table",
    "start_timeout": "start_timeout belongs in the [policy] table",
    "modeller_timeout": "modeller_timeout belongs in the [policy] table",
}
_POLICY_HINTS = {
    "max_concurrent_tasks": "max_concurrent_tasks belongs at the top of the file",
    "allowed_modellers": "write modellers = [...]",
    "allowed_protocols": "write protocols = [...]",
}


@dataclass(frozen=True)
class PodConfig:
    """A pod daemon's settings, as read from ``pod.toml`` by :func:`load_pod_config`.

    Paths are absolute. ``datasets`` holds each dataset's datasource description with its
    ``path`` made absolute; :meth:`build_datasets` turns them into datasources.
    ``max_concurrent_tasks`` is ``policy.max_concurrent_tasks``.

    Raises:
        ConfigError: the name is not a valid name, both or neither of ``tls`` and
            ``insecure`` are given, or there are no datasets.
    """

    name: str
    hub_address: HubAddress
    identity_path: Path
    store_path: Path
    policy: PodPolicy
    datasets: dict[str, dict[str, object]]
    tls: TlsClientConfig | None = None
    insecure: bool = False
    modeller_keys: dict[str, Path] = field(default_factory=dict)
    config_path: Path | None = None
    isolation: IsolationSettings = field(default_factory=IsolationSettings)
    """How each task's child process is watched ([worker] table)."""
    plugins: tuple[str, ...] = ()
    """Modules the admin approved: imported by the pod and each task child."""
    hooks: tuple[str, ...] = DEFAULT_WORKER_HOOKS
    """Registered hook names built in each task child ([] for none)."""
    outputs: Path | None = None
    """Folder for task outputs (reports, images), one subfolder per task."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME_PATTERN.fullmatch(self.name):
            raise ConfigError(f"pod name {self.name!r} is not a valid name")
        if (self.tls is None) != self.insecure:
            raise ConfigError("a pod needs TLS settings for the hub, or insecure=True; not both")
        if not self.datasets:
            raise ConfigError("a pod needs at least one dataset")

    @property
    def max_concurrent_tasks(self) -> int:
        """How many tasks the pod runs at once."""
        return self.policy.max_concurrent_tasks

    def build_datasets(self) -> dict[str, Datasource]:
        """The pod's datasources, by dataset name (no file is read yet).

        Raises:
            ConfigError: a description is malformed (the message names the dataset).
        """
        where = f"{self.config_path}: " if self.config_path else ""
        built: dict[str, Datasource] = {}
        for name, description in self.datasets.items():
            try:
                built[name] = datasource_from_config(description)
            except ConfigError as exc:
                raise ConfigError(f"{where}datasets.{name}: {exc}") from exc
        return built

    def check_datasets(self) -> dict[str, Datasource]:
        """The pod's datasources, each checked without loading it.

        ``pod start`` does this before it connects: the file or folder exists and can be
        read, a table has a row
        and its label and feature columns (only a CSV file's header and first row, or a
        Parquet file's footer, is read).

        Raises:
            ConfigError: a description is malformed (see :meth:`build_datasets`).
            DataError: datasets cannot be used: one line per bad dataset, every one.
        """
        built = self.build_datasets()
        problems: list[str] = []
        for name, source in built.items():
            try:
                check_usable(source)
            except DataError as exc:
                problems.append(f"datasets.{name}: {exc}")
        where = f"{self.config_path}: " if self.config_path else ""
        if len(problems) == 1:
            raise DataError(f"{where}{problems[0]}")
        if problems:
            raise DataError(
                f"{where}{len(problems)} of the {len(built)} datasets cannot be used:\n"
                + "\n".join(f"  {problem}" for problem in problems)
            )
        return built


def load_pod_config(path: str | Path) -> PodConfig:
    """Read and check a pod's TOML config file; see the module docstring for the format.

    Raises:
        ConfigError: the file is missing, unreadable or not TOML (with the line), or a key
            is unknown, missing, of the wrong type or out of range (naming file and key).
    """
    top = read_toml(path, kind="pod config file")
    top.check_keys(_TOP_KEYS, _HINTS)
    name = top.name("name", 'name = "pod-a"')
    address, tls, insecure = read_hub_connection(top)
    identity = top.path("identity", f'identity = "keys/{name}.key"')
    if not identity.is_file():
        raise top.error("identity", f"{identity} does not exist; create it with `fedloom keys`")
    store = top.path("store", f'store = "{name}.db"')
    limit = top.integer("max_concurrent_tasks", DEFAULT_MAX_CONCURRENT_TASKS)
    policy = _read_policy(top, limit)
    modeller_keys = top.path_table("modeller_keys")
    allowed = policy.allowed_modellers or frozenset()
    for modeller in modeller_keys:
        if modeller not in allowed:
            raise ConfigError(
                f"{top.file}: modeller_keys.{modeller}: {modeller!r} is not in "
                "policy.modellers; add it there or drop this key"
            )
    config = PodConfig(
        name=name,
        hub_address=address,
        identity_path=identity,
        store_path=store,
        policy=policy,
        datasets=_read_datasets(top),
        tls=tls,
        insecure=insecure,
        modeller_keys=modeller_keys,
        config_path=top.file,
        isolation=_read_worker(top),
        plugins=top.module_list("plugins"),
        hooks=top.module_list("hooks") if "hooks" in top.data else DEFAULT_WORKER_HOOKS,
        outputs=top.path("outputs", 'outputs = "reports"') if "outputs" in top.data else None,
    )
    config.build_datasets()  # a malformed description fails now, naming its key
    return config


def _read_worker(top: TomlTable) -> IsolationSettings:
    section = top.table("worker")
    if section is None:
        return IsolationSettings()
    section.check_keys(_WORKER_KEYS, {})
    limit_mb = section.integer("memory_limit_mb", 0, minimum=0)
    try:
        return IsolationSettings(
            heartbeat_interval=section.seconds("heartbeat_interval", DEFAULT_HEARTBEAT_INTERVAL),
            heartbeat_patience=section.integer("heartbeat_patience", DEFAULT_HEARTBEAT_PATIENCE),
            memory_limit_bytes=limit_mb << 20 if limit_mb else None,
            threads=section.integer("threads", 1) if "threads" in section.data else None,
            cores=section.integer("cores", 1) if "cores" in section.data else None,
        )
    except ConfigError as exc:
        raise ConfigError(f"{top.file}: worker: {exc}") from exc


def _read_policy(top: TomlTable, max_concurrent_tasks: int) -> PodPolicy:
    section = top.table("policy")
    if section is None:
        raise ConfigError(
            f'{top.file}: policy is missing; add a [policy] table with modellers = ["<name>"]:'
            " a pod accepts no modeller unless it is listed"
        )
    section.check_keys(_POLICY_KEYS, _POLICY_HINTS)
    modellers = section.name_list("modellers", 'modellers = ["alice"]')
    protocols = section.name_list("protocols", 'protocols = ["fedavg"]', required=False)
    for protocol in protocols:
        if protocol not in PROTOCOLS:
            raise section.error(
                "protocols",
                f"unknown protocol {protocol!r}; registered: {', '.join(PROTOCOLS.names())}",
            )
    algorithms = section.name_list("algorithms", 'algorithms = ["mlp"]', required=False)
    return PodPolicy(
        allowed_protocols=frozenset(protocols) if protocols else None,
        allowed_algorithms=frozenset(algorithms) if algorithms else None,
        allowed_modellers=frozenset(modellers),
        min_rows=section.integer("min_rows", DEFAULT_MIN_ROWS),
        start_timeout=section.seconds("start_timeout", DEFAULT_START_TIMEOUT),
        modeller_timeout=section.seconds("modeller_timeout", DEFAULT_MODELLER_TIMEOUT),
        max_concurrent_tasks=max_concurrent_tasks,
        usage_limits=_read_usage_limits(section),
        approved_models=_read_hashes(section),
    )


def _read_hashes(policy: TomlTable) -> frozenset[str] | None:
    """``approved_models``: SHA-256 hex digests of the model files tasks may run."""
    if "approved_models" not in policy.data:
        return None
    value = policy.raw("approved_models", 'approved_models = ["<sha256 hex>"]')
    if not isinstance(value, list) or not all(
        isinstance(item, str)
        and len(item) == 64
        and all(c in "0123456789abcdef" for c in item.lower())
        for item in value
    ):
        raise policy.error("approved_models", "must be a list of SHA-256 hex digests")
    return frozenset(item.lower() for item in value)


def _is_sha256(item: object) -> bool:
    return (
        isinstance(item, str)
        and len(item) == 64
        and all(c in "0123456789abcdef" for c in item.lower())
    )


def _read_usage_limits(policy: TomlTable) -> dict[str, int]:
    """``[policy.usage_limits]``: model name → the most predictions it may ever make here."""
    table = policy.table("usage_limits")
    if table is None:
        return {}
    limits: dict[str, int] = {}
    for model, value in table.data.items():
        table.check_name(model, model)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise table.error(model, f"must be a whole number >= 0, got {value!r}")
        limits[model] = value
    return limits


def _read_datasets(top: TomlTable) -> dict[str, dict[str, object]]:
    section = top.table("datasets")
    if section is None or not section.data:
        raise ConfigError(
            f"{top.file}: datasets is missing; add at least one table such as "
            '[datasets.default] with kind = "table" and path = "data.csv"'
        )
    datasets: dict[str, dict[str, object]] = {}
    for dataset, table in section.tables().items():
        description = table.plain()
        description["path"] = str(table.path("path", 'path = "data/a.csv"'))
        datasets[dataset] = description
    return datasets
