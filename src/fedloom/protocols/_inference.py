"""Batched model inference over a folder of files, on the batched streaming flow.

:class:`BatchedInference` is a :class:`~fedloom.protocols._batched.BatchedProtocol` (which owns
the flow: file selection, batches, resilience, status messages); its steps are:

- initial setup: the modeller's MODEL_PARAMETERS carry the weights, or a model file's bytes
  (:data:`MODEL_FILE`), which pods that list approved model hashes check first;
- per batch: stack the loaded files, predict, cut to the pod's usage limit for the model,
  send EVALUATION_RESULTS with the report rows (optionally write one output image per file);
- final reduce: the failure report (file names and why), the CSV report at the pod if asked,
  and a registered reduction (:data:`REDUCERS`) over every batch's rows.

The usage limit: when the model's total reaches the limit, the allowed rows are still sent
and recorded, then the task ends with TASK_ABORT ``LIMITS_EXCEEDED``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np

from fedloom._registry import Registry
from fedloom.algorithms.inference import (
    IMAGE_OUTPUTS,
    Predictions,
    cut,
    load_approved_model_bytes,
    load_model_bytes,
    predict,
    report_rows,
    rows_from_body,
    rows_to_body,
    write_output_images,
    write_report_csv,
)
from fedloom.algorithms.ml import ModelSpec, build_model, load_arrays, state_to_arrays
from fedloom.datasources import FileRecord, FileSource
from fedloom.errors import AccessDeniedError, ConfigError, LimitsExceededError
from fedloom.protocols._base import ReleaseGuard, WorkerContext, check_keys, register_protocol
from fedloom.protocols._batched import BatchedProtocol, image_loader_options
from fedloom.protocols._batched_parts import (
    BATCHES_ONLY,
    FINISHED,
    NO_NEW_DATA,
    BatchCollector,
    BatchOutput,
    BatchWorker,
    SetupValues,
)
from fedloom.protocols._ledger import Ledger
from fedloom.store import FailedFile

__all__ = [
    "BATCHES_ONLY",
    "FINISHED",
    "MODEL_FILE",
    "REDUCERS",
    "BatchedInference",
    "InferenceResult",
    "Reducer",
    "class_counts",
]

MODEL_FILE = "model_file"
"""The tensor that carries a model file's bytes in MODEL_PARAMETERS."""

Rows = list[dict[str, str]]

Reducer = Callable[[list[dict[str, str]]], dict[str, Any]]
"""A final-reduce step: every batch's report rows of one pod → a JSON-able summary."""

REDUCERS: Registry[Reducer] = Registry("final reduce step")


@REDUCERS.register("class_counts")
def class_counts(rows: list[dict[str, str]]) -> dict[str, Any]:
    """How many files each class was predicted for (no file names leave the pod)."""
    counts: dict[str, int] = {}
    for row in rows:
        if row.get("status") == "ok":
            counts[row["prediction"]] = counts.get(row["prediction"], 0) + 1
    return {"counts": dict(sorted(counts.items())), "files": sum(counts.values())}


@dataclass(frozen=True)
class InferenceResult:
    """What the modeller collected: report rows, failures and reductions per pod.

    ``no_new_data``: the pods that had no file the task had not already processed
    (``run_on_new_data_only``); they completed with 0 rows and 0 failures.
    """

    rows: dict[str, list[dict[str, str]]]
    failures: dict[str, list[dict[str, str]]]
    batches: dict[str, int]
    reduced: dict[str, Any] = field(default_factory=dict)
    no_new_data: tuple[str, ...] = ()


@dataclass
class _State:
    """One worker's model and where its results go."""

    model: Any
    source: FileSource
    ledger: Ledger
    outputs: Path | None
    delivered: int = 0
    channels_first: bool = False
    """The pod's images load as ``(c, h, w)`` (image loader option ``channels_first``)."""


@register_protocol
@dataclass(frozen=True)
class BatchedInference(BatchedProtocol[_State, Rows, InferenceResult]):
    """Run ``model`` over every pod's files in batches; see the module docstring.

    The batching settings (``batch_size``, ``resilience``, ``max_consecutive_batch_failures``,
    ``test_run``, ``run_on_new_data_only``, ``force_rerun_failed_files``,
    ``fail_on_no_new_data``, ``timeout``) are
    :class:`~fedloom.protocols._batched.BatchedProtocol`'s keyword-only fields.

    Raises:
        ConfigError: (at construction) a setting has the wrong type or range, or
            ``send_rows=False`` without a ``reduce`` step.
        UnknownNameError: (at construction) ``output_images`` or ``reduce`` is not registered.
    """

    release_guard: ClassVar[ReleaseGuard] = ReleaseGuard.PER_RECORD

    name = "inference"

    model: ModelSpec
    report_at_pod: bool = False
    """Write the task's CSV report (every file, predictions or failure) in the pod's outputs."""
    reduce: str | None = None
    """A registered final-reduce step (REDUCERS) run once after the batches and resilience,
    over every batch's rows; its result is sent instead of, with ``send_rows=False``, the rows."""
    send_rows: bool = True
    output_images: str | None = None
    """A registered image output ("overlay", "mask"): one PNG per input in the pod's outputs."""
    weights: Mapping[str, np.ndarray] = field(default_factory=dict, compare=False)
    model_file: bytes | str | os.PathLike[str] | None = field(default=None, compare=False)
    """A safetensors file to run instead of ``weights``: its bytes, or its path (read at
    construction; the attribute then holds the bytes). Pods that list approved model
    hashes only run a file whose SHA-256 they approved."""

    local_files: ClassVar[frozenset[str]] = frozenset({"model_file"})
    """Settings that name a file on the modeller's machine: a task file gives them as
    paths relative to itself; they are never part of the config a pod rebuilds the
    protocol from (the file's bytes reach the pods as the setup tensors)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.model_file, str | os.PathLike):
            object.__setattr__(self, "model_file", _read_model_file(Path(self.model_file)))
        elif self.model_file is not None and not isinstance(self.model_file, bytes):
            raise ConfigError(
                "inference.model_file must be a safetensors file's path or its bytes, "
                f"not {type(self.model_file).__name__}"
            )
        if self.output_images is not None:
            IMAGE_OUTPUTS.get(self.output_images)
        if self.reduce is not None:
            REDUCERS.get(self.reduce)
        if not self.send_rows and self.reduce is None:
            raise ConfigError("inference.send_rows = false needs a final reduce step (reduce)")

    def algorithms(self) -> frozenset[str]:
        return frozenset({self.model.name})

    def check_task(self) -> None:
        """The model is registered and built; a model file or weights fit it."""
        if self.model_file is not None:
            assert isinstance(self.model_file, bytes)  # __post_init__ read a path
            load_model_bytes(self.model_file, self.model, name="inference.model_file")
        else:
            model = build_model(self.model)
            if self.weights:
                load_arrays(model, dict(self.weights))

    def to_config(self) -> dict[str, Any]:
        return {
            "model": self.model.to_config(),
            **self.batch_config(),
            "report_at_pod": self.report_at_pod,
            "output_images": self.output_images,
            "reduce": self.reduce,
            "send_rows": self.send_rows,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Self:
        settings = {setting.name for setting in fields(cls)}  # not the ClassVars
        optional = settings - {"model", "weights"} - cls.local_files
        check_keys("inference", config, {"model"}, optional)
        values = {key: config[key] for key in optional if key in config}
        return cls(model=ModelSpec.from_config(config["model"]), **values)

    def summarise(self, result: Any) -> dict[str, Any]:
        if not isinstance(result, InferenceResult):
            return {}
        summary: dict[str, Any] = {
            "files": {pod: len(rows) for pod, rows in result.rows.items()},
            "failed": {pod: len(rows) for pod, rows in result.failures.items()},
        }
        if result.no_new_data:
            summary[NO_NEW_DATA] = list(result.no_new_data)
        return summary

    # --- modeller -----------------------------------------------------------------------

    def setup_values(self) -> SetupValues:
        if isinstance(self.model_file, bytes):  # a path was read at construction
            weights = {MODEL_FILE: np.frombuffer(self.model_file, dtype=np.uint8)}
        else:
            weights = dict(self.weights) or state_to_arrays(build_model(self.model))
        return SetupValues({}, weights)

    def collector(self, pods: Sequence[str]) -> BatchCollector[InferenceResult]:
        return _Collector(pods)

    # --- worker ---------------------------------------------------------------------------

    def check_worker(self, context: WorkerContext) -> None:
        """Raises ConfigError: the task writes at the pod, which has no outputs folder."""
        if (self.report_at_pod or self.output_images is not None) and context.outputs is None:
            raise ConfigError(
                "the task writes reports or images on the pod, but the pod has no outputs "
                "folder (`outputs = ...` in pod.toml)"
            )

    async def initial_setup(
        self, body: dict[str, Any], tensors: Mapping[str, np.ndarray], worker: BatchWorker
    ) -> _State:
        outputs = None
        if worker.context.outputs is not None and (
            self.report_at_pod or self.output_images is not None
        ):
            outputs = worker.context.outputs / worker.task_id
            outputs.mkdir(parents=True, exist_ok=True)
        model = await self._model(tensors, worker.ledger)
        options = image_loader_options(worker.source) or {}
        channels_first = options.get("channels_first") is True
        return _State(model, worker.source, worker.ledger, outputs, channels_first=channels_first)

    async def process_batch(
        self, state: _State, loaded: list[tuple[FileRecord, Any]], batch_id: int
    ) -> BatchOutput[Rows]:
        good = [record for record, _ in loaded]
        inputs = state.source.stack([value for _, value in loaded])
        names = [record.name for record in good]
        predictions = await asyncio.to_thread(predict, state.model, inputs, names)
        usage = await state.ledger.consume(self.model.name, len(predictions))
        predictions = cut(predictions, usage.allowed)
        released = good[: usage.allowed]
        rows = report_rows(predictions) if released else []
        if released and self.output_images is not None and state.outputs is not None:
            images = inputs[: usage.allowed]
            if not state.channels_first:  # (n, h, w, c) → (n, c, h, w), as models take them
                images = np.transpose(images, (0, 3, 1, 2))
            await asyncio.to_thread(
                write_output_images,
                images,
                [record.name for record in released],
                state.model,
                predictions,
                output=self.output_images,
                folder=state.outputs / "images",
            )
        state.delivered += len(released)
        body: dict[str, Any] = {"files": len(rows)}
        if self.send_rows:
            body["rows"] = rows_to_body(rows)
        stop = None
        if usage.exceeded:
            stop = LimitsExceededError(
                f"model {self.model.name!r} reached this pod's usage limit; "
                f"{state.delivered} results were delivered"
            )
        return BatchOutput(released, rows, body, stop=stop)

    async def final_reduce(
        self, state: _State, values: list[Rows], failed: Mapping[str, FailedFile]
    ) -> dict[str, Any]:
        rows = [row for batch in values for row in batch]
        report = report_rows(
            Predictions([], np.zeros(0, np.int64), np.zeros((0, 1), np.float32)),
            {name: f"{f.level}: {f.reason}" for name, f in failed.items()},
        )
        if self.report_at_pod and state.outputs is not None:
            await asyncio.to_thread(
                write_report_csv, [*rows, *report], state.outputs / "report.csv"
            )
        final: dict[str, Any] = {"failures": rows_to_body(report)}
        if self.reduce is not None:
            final["reduced"] = REDUCERS.get(self.reduce)(rows)
        return final

    async def _model(self, tensors: Mapping[str, np.ndarray], ledger: Ledger) -> Any:
        """The model to run: an approved file's weights, or (if the pod allows) plain ones.

        Raises:
            AccessDeniedError: the pod only runs approved model files, and this is not one.
        """
        approved = await ledger.approved_models()
        if MODEL_FILE in tensors:
            data = np.ascontiguousarray(tensors[MODEL_FILE]).tobytes()
            if approved is None:
                return load_approved_model_bytes(
                    data, {hashlib.sha256(data).hexdigest()}, self.model
                )
            return load_approved_model_bytes(data, approved, self.model)
        if approved is not None:
            raise AccessDeniedError(
                "this pod only runs model files whose SHA-256 it approved; send the model "
                "as a file (BatchedInference(model_file=...))"
            )
        model = build_model(self.model)
        load_arrays(model, tensors)
        return model


def _read_model_file(path: Path) -> bytes:
    """The bytes of a model file given by its path.

    Raises:
        ConfigError: the file is missing, unreadable or not a file (naming the path).
    """
    try:
        return path.read_bytes()
    except OSError as exc:
        problem = exc.strerror or str(exc)
        raise ConfigError(f"inference.model_file: cannot read {str(path)!r}: {problem}") from exc


class _Collector(BatchCollector[InferenceResult]):
    """Report rows per pod as they stream in; failures and reductions at each pod's end."""

    def __init__(self, pods: Sequence[str]) -> None:
        self.rows: dict[str, list[dict[str, str]]] = {pod: [] for pod in pods}
        self.failures: dict[str, list[dict[str, str]]] = {}
        self.batches: dict[str, int] = dict.fromkeys(pods, 0)
        self.reduced: dict[str, Any] = {}
        self.no_new_data: list[str] = []

    def on_batch(self, pod: str, body: dict[str, Any], tensors: Mapping[str, np.ndarray]) -> None:
        rows = rows_from_body(body.get("rows", []))
        batch = int(body.get("batch", 0))
        self.rows[pod].extend(rows)
        self.batches[pod] = max(self.batches[pod], batch)

    def on_finish(self, pod: str, body: dict[str, Any], tensors: Mapping[str, np.ndarray]) -> None:
        self.failures[pod] = rows_from_body(body.get("failures", []))
        if isinstance(body.get("reduced"), dict):
            self.reduced[pod] = body["reduced"]

    def on_no_new_data(self, pod: str) -> None:
        self.failures[pod] = []
        self.no_new_data.append(pod)

    def result(self, active: Sequence[str], aborted: Mapping[str, str]) -> InferenceResult:
        # rows a pod delivered before it aborted (its usage limit, say) are kept
        return InferenceResult(
            rows={pod: found for pod, found in self.rows.items() if found or pod in active},
            failures=self.failures,
            batches=self.batches,
            reduced=self.reduced,
            no_new_data=tuple(sorted(pod for pod in self.no_new_data if pod in active)),
        )
