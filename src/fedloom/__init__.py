"""fedloom: federated learning and federated analytics.

The public API is what this module exports (``__all__``); everything else is internal.
Names are imported on first use, so ``import fedloom`` (and starting a hub, which needs
no torch) stays fast.
"""

import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:
    from fedloom.algorithms.aggregation import (
        WeightedMean,
        fedavg,
    )
    from fedloom.algorithms.analytics import (
        AnalyticsRequest,
    )
    from fedloom.algorithms.ml import (
        MODELS,
        ModelSpec,
        TrainingConfig,
        build_model,
    )
    from fedloom.cluster import (
        LocalCluster,
        PodSpec,
    )
    from fedloom.crypto import (
        Identity,
        PublicIdentity,
        load_identity,
        load_public_identity,
        save_identity,
    )
    from fedloom.datasources import (
        ArraySource,
        Datasource,
        FileSource,
        TableSource,
        datasource_from_config,
        dirichlet_partition,
        iid_partition,
    )
    from fedloom.errors import (
        AbortReason,
        AccessDeniedError,
        AggregationError,
        AuthenticationError,
        BadSignatureError,
        ConfigError,
        DataError,
        DatasetNotFoundError,
        DecryptionError,
        EmptyDatasetError,
        ErrorReport,
        ExitCode,
        FedloomError,
        HubUnavailableError,
        InsecureKeyFileError,
        KeyFileError,
        LimitsExceededError,
        MailboxClosedError,
        MissingColumnError,
        NoNewDataError,
        PodResponseError,
        PrivacyThresholdError,
        ProtocolError,
        ReceiveTimeoutError,
        RegistryError,
        ReplayedMessageError,
        SchemaMismatchError,
        StaleMessageError,
        StoreError,
        TaskAbortedError,
        TaskCancelledError,
        TransportError,
        UnknownIdentityError,
        UnknownNameError,
        UnknownRecipientError,
        UpdateRejectedError,
        UpdateRejectionReason,
        WireError,
    )
    from fedloom.hooks import (
        Hook,
        HookPoint,
        register_hook,
    )
    from fedloom.local import (
        LocalFederation,
        run_local,
    )
    from fedloom.modeller import (
        Modeller,
        OnTimeout,
        RequestPolicy,
        TaskResult,
    )
    from fedloom.modeller.remote import (
        run_task_file,
    )
    from fedloom.modeller.task_file import (
        TaskFile,
        load_task_file,
    )
    from fedloom.pod import (
        Pod,
        PodPolicy,
    )
    from fedloom.pod.config import (
        PodConfig,
        load_pod_config,
    )
    from fedloom.pod.daemon import (
        serve_pod,
    )
    from fedloom.protocols import (
        PROTOCOLS,
        RESULT_ALGORITHMS,
        Analytics,
        AnalyticsResult,
        BatchedInference,
        FedAvg,
        FedAvgResult,
        Protocol,
        ResultsOnly,
        RoundMetrics,
        load_protocol,
        register_protocol,
    )
    from fedloom.store import (
        ExperimentStore,
        MemoryExperimentStore,
        MemoryPodStore,
        PodStore,
        SqliteExperimentStore,
        SqlitePodStore,
    )
    from fedloom.transport import (
        Mailbox,
        MemoryHub,
    )
    from fedloom.transport.hub.client import (
        GrpcMailbox,
    )
    from fedloom.transport.hub.config import (
        HubAddress,
        TlsClientConfig,
    )
    from fedloom.transport.hub.server import (
        HubServer,
        HubSettings,
    )
    from fedloom.transport.hub.tls import (
        init_hub_tls,
        load_hub_tls,
    )
    from fedloom.wire import (
        Message,
        MessageType,
        decode,
        encode,
    )
    from fedloom.worker import (
        IsolationSettings,
    )

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "AbortReason": "fedloom.errors",
    "AccessDeniedError": "fedloom.errors",
    "AggregationError": "fedloom.errors",
    "Analytics": "fedloom.protocols",
    "AnalyticsRequest": "fedloom.algorithms.analytics",
    "AnalyticsResult": "fedloom.protocols",
    "ArraySource": "fedloom.datasources",
    "AuthenticationError": "fedloom.errors",
    "BadSignatureError": "fedloom.errors",
    "BatchedInference": "fedloom.protocols",
    "ConfigError": "fedloom.errors",
    "DataError": "fedloom.errors",
    "DatasetNotFoundError": "fedloom.errors",
    "Datasource": "fedloom.datasources",
    "DecryptionError": "fedloom.errors",
    "EmptyDatasetError": "fedloom.errors",
    "ErrorReport": "fedloom.errors",
    "ExitCode": "fedloom.errors",
    "ExperimentStore": "fedloom.store",
    "FedAvg": "fedloom.protocols",
    "FedAvgResult": "fedloom.protocols",
    "FedloomError": "fedloom.errors",
    "FileSource": "fedloom.datasources",
    "GrpcMailbox": "fedloom.transport.hub.client",
    "Hook": "fedloom.hooks",
    "HookPoint": "fedloom.hooks",
    "HubAddress": "fedloom.transport.hub.config",
    "HubServer": "fedloom.transport.hub.server",
    "HubSettings": "fedloom.transport.hub.server",
    "HubUnavailableError": "fedloom.errors",
    "Identity": "fedloom.crypto",
    "InsecureKeyFileError": "fedloom.errors",
    "IsolationSettings": "fedloom.worker",
    "KeyFileError": "fedloom.errors",
    "LimitsExceededError": "fedloom.errors",
    "LocalCluster": "fedloom.cluster",
    "LocalFederation": "fedloom.local",
    "MODELS": "fedloom.algorithms.ml",
    "Mailbox": "fedloom.transport",
    "MailboxClosedError": "fedloom.errors",
    "MemoryExperimentStore": "fedloom.store",
    "MemoryHub": "fedloom.transport",
    "MemoryPodStore": "fedloom.store",
    "Message": "fedloom.wire",
    "MessageType": "fedloom.wire",
    "MissingColumnError": "fedloom.errors",
    "ModelSpec": "fedloom.algorithms.ml",
    "Modeller": "fedloom.modeller",
    "NoNewDataError": "fedloom.errors",
    "OnTimeout": "fedloom.modeller",
    "PROTOCOLS": "fedloom.protocols",
    "Pod": "fedloom.pod",
    "PodConfig": "fedloom.pod.config",
    "PodPolicy": "fedloom.pod",
    "PodResponseError": "fedloom.errors",
    "PodSpec": "fedloom.cluster",
    "PodStore": "fedloom.store",
    "PrivacyThresholdError": "fedloom.errors",
    "Protocol": "fedloom.protocols",
    "ProtocolError": "fedloom.errors",
    "PublicIdentity": "fedloom.crypto",
    "RESULT_ALGORITHMS": "fedloom.protocols",
    "ReceiveTimeoutError": "fedloom.errors",
    "RegistryError": "fedloom.errors",
    "ReplayedMessageError": "fedloom.errors",
    "RequestPolicy": "fedloom.modeller",
    "ResultsOnly": "fedloom.protocols",
    "RoundMetrics": "fedloom.protocols",
    "SchemaMismatchError": "fedloom.errors",
    "SqliteExperimentStore": "fedloom.store",
    "SqlitePodStore": "fedloom.store",
    "StaleMessageError": "fedloom.errors",
    "StoreError": "fedloom.errors",
    "TableSource": "fedloom.datasources",
    "TaskAbortedError": "fedloom.errors",
    "TaskCancelledError": "fedloom.errors",
    "TaskFile": "fedloom.modeller.task_file",
    "TaskResult": "fedloom.modeller",
    "TlsClientConfig": "fedloom.transport.hub.config",
    "TrainingConfig": "fedloom.algorithms.ml",
    "TransportError": "fedloom.errors",
    "UnknownIdentityError": "fedloom.errors",
    "UnknownNameError": "fedloom.errors",
    "UnknownRecipientError": "fedloom.errors",
    "UpdateRejectedError": "fedloom.errors",
    "UpdateRejectionReason": "fedloom.errors",
    "WeightedMean": "fedloom.algorithms.aggregation",
    "WireError": "fedloom.errors",
    "build_model": "fedloom.algorithms.ml",
    "datasource_from_config": "fedloom.datasources",
    "decode": "fedloom.wire",
    "dirichlet_partition": "fedloom.datasources",
    "encode": "fedloom.wire",
    "fedavg": "fedloom.algorithms.aggregation",
    "iid_partition": "fedloom.datasources",
    "init_hub_tls": "fedloom.transport.hub.tls",
    "load_hub_tls": "fedloom.transport.hub.tls",
    "load_identity": "fedloom.crypto",
    "load_pod_config": "fedloom.pod.config",
    "load_protocol": "fedloom.protocols",
    "load_public_identity": "fedloom.crypto",
    "load_task_file": "fedloom.modeller.task_file",
    "register_hook": "fedloom.hooks",
    "register_protocol": "fedloom.protocols",
    "run_local": "fedloom.local",
    "run_task_file": "fedloom.modeller.remote",
    "save_identity": "fedloom.crypto",
    "serve_pod": "fedloom.pod.daemon",
}

__all__ = [
    "AbortReason",
    "AccessDeniedError",
    "AggregationError",
    "Analytics",
    "AnalyticsRequest",
    "AnalyticsResult",
    "ArraySource",
    "AuthenticationError",
    "BadSignatureError",
    "BatchedInference",
    "ConfigError",
    "DataError",
    "DatasetNotFoundError",
    "Datasource",
    "DecryptionError",
    "EmptyDatasetError",
    "ErrorReport",
    "ExitCode",
    "ExperimentStore",
    "FedAvg",
    "FedAvgResult",
    "FedloomError",
    "FileSource",
    "GrpcMailbox",
    "Hook",
    "HookPoint",
    "HubAddress",
    "HubServer",
    "HubSettings",
    "HubUnavailableError",
    "Identity",
    "InsecureKeyFileError",
    "IsolationSettings",
    "KeyFileError",
    "LimitsExceededError",
    "LocalCluster",
    "LocalFederation",
    "MODELS",
    "Mailbox",
    "MailboxClosedError",
    "MemoryExperimentStore",
    "MemoryHub",
    "MemoryPodStore",
    "Message",
    "MessageType",
    "MissingColumnError",
    "ModelSpec",
    "Modeller",
    "NoNewDataError",
    "OnTimeout",
    "PROTOCOLS",
    "Pod",
    "PodConfig",
    "PodPolicy",
    "PodResponseError",
    "PodSpec",
    "PodStore",
    "PrivacyThresholdError",
    "Protocol",
    "ProtocolError",
    "PublicIdentity",
    "RESULT_ALGORITHMS",
    "ReceiveTimeoutError",
    "RegistryError",
    "ReplayedMessageError",
    "RequestPolicy",
    "ResultsOnly",
    "RoundMetrics",
    "SchemaMismatchError",
    "SqliteExperimentStore",
    "SqlitePodStore",
    "StaleMessageError",
    "StoreError",
    "TableSource",
    "TaskAbortedError",
    "TaskCancelledError",
    "TaskFile",
    "TaskResult",
    "TlsClientConfig",
    "TrainingConfig",
    "TransportError",
    "UnknownIdentityError",
    "UnknownNameError",
    "UnknownRecipientError",
    "UpdateRejectedError",
    "UpdateRejectionReason",
    "WeightedMean",
    "WireError",
    "build_model",
    "datasource_from_config",
    "decode",
    "dirichlet_partition",
    "encode",
    "fedavg",
    "iid_partition",
    "init_hub_tls",
    "load_hub_tls",
    "load_identity",
    "load_pod_config",
    "load_protocol",
    "load_public_identity",
    "load_task_file",
    "register_hook",
    "register_protocol",
    "run_local",
    "run_task_file",
    "save_identity",
    "serve_pod",
]


def __getattr__(name: str) -> _typing.Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fedloom' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
