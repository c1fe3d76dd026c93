"""Results-only protocol: every pod runs one registered algorithm and returns its results.

The modeller sends an INSTRUCTION (optionally with input tensors, e.g. model parameters to
evaluate), each pod runs the algorithm named in the task on its dataset and answers with
RESULTS. Algorithms come from the closed :data:`RESULT_ALGORITHMS` registry.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Self

import numpy as np

from fedloom._hooks import HookPoint
from fedloom._registry import Registry
from fedloom.algorithms.ml import ModelSpec, build_model, evaluate, load_arrays
from fedloom.datasources import Datasource
from fedloom.errors import (
    ConfigError,
    DataError,
    PodFailure,
    PodResponseError,
)
from fedloom.protocols._base import (
    ModellerContext,
    TaskProtocol,
    WorkerContext,
    check_keys,
    optional_timeout,
    register_protocol,
)
from fedloom.session import ModellerMailbox, WorkerMailbox
from fedloom.wire import Body, MessageType

ResultAlgorithm = Callable[
    [Datasource, Mapping[str, Any], Mapping[str, np.ndarray], int],
    tuple[dict[str, Any], dict[str, np.ndarray]],
]
"""(datasource, config, input tensors, min_rows) → (JSON-able results, result tensors)."""

RESULT_ALGORITHMS: Registry[ResultAlgorithm] = Registry("results algorithm")


@dataclass(frozen=True)
class PodResults:
    """One pod's answer."""

    body: Body
    tensors: dict[str, np.ndarray]
    seconds: float


@register_protocol
@dataclass(frozen=True)
class ResultsOnly(TaskProtocol[dict[str, PodResults]]):
    """Run ``algorithm`` with ``config`` on every pod and collect the results.

    ``inputs`` travel with the instruction as tensors; they are not part of the JSON config.
    The pods' answers are one request of the task (``results``), judged by the modeller's
    request policy; ``timeout``, when set, is its time-out instead of the policy's, and
    ``require_all`` applies on top of the policy.
    """

    name = "results_only"

    algorithm: str
    config: Mapping[str, Any] = field(default_factory=dict)
    inputs: Mapping[str, np.ndarray] = field(default_factory=dict, compare=False)
    timeout: float | None = None
    require_all: bool = False

    def algorithms(self) -> frozenset[str]:
        """The registered algorithm each pod runs."""
        return frozenset({self.algorithm})

    def __post_init__(self) -> None:
        RESULT_ALGORITHMS.get(self.algorithm)
        optional_timeout("results_only.timeout", self.timeout)
        try:
            json.dumps(self.config, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"results_only.config must be JSON: {exc}") from exc

    def to_config(self) -> dict[str, Any]:
        return {
            "algorithm": self.algorithm,
            "config": dict(self.config),
            "timeout": self.timeout,
            "require_all": self.require_all,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Self:
        check_keys("results_only", config, {"algorithm"}, {"config", "timeout", "require_all"})
        algo_config = config.get("config", {})
        if not isinstance(algo_config, Mapping):
            raise ConfigError("results_only.config must be a map")
        return cls(
            algorithm=config["algorithm"],
            config=algo_config,
            timeout=config.get("timeout"),
            require_all=bool(config.get("require_all")),
        )

    def summarise(self, result: Any) -> dict[str, Any]:
        """Each pod's result body, and the shapes of the tensors it sent (if any)."""
        if not isinstance(result, Mapping):
            return {}
        summary: dict[str, Any] = {
            "results": {
                pod: pod_result.body
                for pod, pod_result in result.items()
                if isinstance(pod_result, PodResults)
            }
        }
        tensors = {
            pod: {name: list(array.shape) for name, array in pod_result.tensors.items()}
            for pod, pod_result in result.items()
            if isinstance(pod_result, PodResults) and pod_result.tensors
        }
        if tensors:
            summary["tensors"] = tensors
        return summary

    async def run_modeller(
        self, mailbox: ModellerMailbox, context: ModellerContext
    ) -> dict[str, PodResults]:
        await mailbox.broadcast(MessageType.INSTRUCTION, {"step": "run"}, self.inputs)
        gathered = await mailbox.collect(MessageType.RESULTS, name="results", timeout=self.timeout)
        failed: dict[str, PodFailure | str] = {
            pod: PodFailure.from_report(report) for pod, report in mailbox.aborted.items()
        }
        failed |= {pod: "no answer in time" for pod in gathered.missing}
        if failed and (self.require_all or not gathered.replies):
            raise PodResponseError("results_only: pods did not return results", failed)
        return {
            pod: PodResults(reply.body, dict(reply.tensors), gathered.seconds[pod])
            for pod, reply in sorted(gathered.replies.items())
        }

    async def run_worker(self, mailbox: WorkerMailbox, context: WorkerContext) -> dict[str, Any]:
        hooks = context.hooks.bind(mailbox, context.pod)
        await hooks.fire(HookPoint.INIT_START, protocol=self.name)
        algorithm = RESULT_ALGORITHMS.get(self.algorithm)
        await hooks.fire(HookPoint.INIT_END, protocol=self.name)
        await hooks.fire(HookPoint.RUN_START, protocol=self.name)
        runs = 0
        while True:
            message = await mailbox.receive({MessageType.INSTRUCTION, MessageType.TASK_COMPLETE})
            if message.type is MessageType.TASK_COMPLETE:
                record: dict[str, Any] = {"algorithm": self.algorithm, "runs": runs}
                await hooks.fire(HookPoint.RUN_END, protocol=self.name, released=record)
                return record
            body, tensors = algorithm(
                context.datasource, self.config, message.tensors, context.min_rows
            )
            await mailbox.send(MessageType.RESULTS, body, tensors)
            runs += 1


@RESULT_ALGORITHMS.register("dataset_summary")
def dataset_summary(
    datasource: Datasource,
    config: Mapping[str, Any],
    inputs: Mapping[str, np.ndarray],
    min_rows: int,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Number of rows and the column names and types (no values)."""
    return dict(datasource.describe()), {}


@RESULT_ALGORITHMS.register("model_evaluation")
def model_evaluation(
    datasource: Datasource,
    config: Mapping[str, Any],
    inputs: Mapping[str, np.ndarray],
    min_rows: int,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Loss and accuracy of a model (``config["model"]`` + parameters in ``inputs``)."""
    if "model" not in config:
        raise ConfigError('model_evaluation needs config["model"] = {"name": ..., "config": ...}')
    model = build_model(ModelSpec.from_config(config["model"]))
    load_arrays(model, inputs)
    x, y = datasource.arrays()
    if y is None:
        raise DataError("model_evaluation needs a labelled dataset")
    return {k: float(v) for k, v in evaluate(model, x, y).items()}, {}
