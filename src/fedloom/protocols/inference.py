"""Batched model inference over a folder of files: the streaming flow of DESIGN.md.

Worker side, on each pod (its dataset must be a :class:`~fedloom.datasources.FileSource`):

1. choose the files: all of them, or (``run_on_new_data_only``) those not processed by this
   task definition since they were last modified, plus (``force_rerun_failed_files``) the
   ones it failed on; nothing to do → TASK_ABORT ``NO_NEW_DATA``;
2. NUM_BATCHES = -1 (streaming), CURRENT_BATCH_ID = 1, TASK_START (ready); wait for the
   modeller's TASK_START, then its MODEL_PARAMETERS (the initial setup step);
3. per batch: load the files (a file that cannot be read is a file-level failure), predict,
   cut to the pod's usage limit for the model, record the processed files, send
   EVALUATION_RESULTS with the report rows; a batch that fails as a whole is recorded and
   the task goes on, unless ``max_consecutive_batch_failures`` batches failed in a row;
   a later NUM_BATCHES gives the real count once the background count is done;
4. BATCHES_COMPLETE("BATCHES_ONLY"); the resilience phase retries each file of a failed
   batch alone (success: it was a batch-level problem; failure: a file-level one);
5. BATCHES_COMPLETE("TASK_COMPLETE") with the failure report; TASK_COMPLETE from the modeller.

The usage limit: when the model's total reaches the limit, the allowed rows are still sent
and recorded, then the task ends with TASK_ABORT ``LIMITS_EXCEEDED``.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np

from fedloom.algorithms.inference import (
    IMAGE_OUTPUTS,
    Predictions,
    cut,
    load_approved_model_bytes,
    predict,
    report_rows,
    rows_from_body,
    rows_to_body,
    write_output_images,
    write_report_csv,
)
from fedloom.algorithms.ml import ModelSpec, build_model, load_arrays, state_to_arrays
from fedloom.datasources import FileCount, FileRecord, FileSource
from fedloom.errors import (
    AbortReason,
    AccessDeniedError,
    ConfigError,
    DataError,
    LimitsExceededError,
    NoNewDataError,
    PodResponseError,
    SchemaMismatchError,
    TooManyFailuresError,
)
from fedloom.hooks import HookPoint
from fedloom.protocols.base import (
    ModellerContext,
    Protocol,
    WorkerContext,
    check_keys,
    optional_timeout,
    register_protocol,
)
from fedloom.protocols.ledger import Ledger, StoreLedger
from fedloom.registry import Registry
from fedloom.store import FailedFile, task_hash
from fedloom.transport import ModellerMailbox, WorkerMailbox
from fedloom.wire import MessageType

BATCHES_ONLY = "BATCHES_ONLY"
FINISHED = "TASK_COMPLETE"
MODEL_FILE = "model_file"
"""The tensor that carries a model file's bytes in MODEL_PARAMETERS."""
_RUN_FLAGS = ("test_run", "run_on_new_data_only", "force_rerun_failed_files")


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
    """What the modeller collected: report rows, failures and reductions per pod."""

    rows: dict[str, list[dict[str, str]]]
    failures: dict[str, list[dict[str, str]]]
    batches: dict[str, int]
    reduced: dict[str, Any] = field(default_factory=dict)


@register_protocol
@dataclass(frozen=True)
class BatchedInference(Protocol):
    """Run ``model`` over every pod's files in batches; see the module docstring."""

    name = "inference"
    handles_start: ClassVar[bool] = True

    model: ModelSpec
    batch_size: int = 32
    resilience: bool = True
    max_consecutive_batch_failures: int = 5
    test_run: bool = False
    run_on_new_data_only: bool = False
    force_rerun_failed_files: bool = False
    timeout: float | None = None
    report_at_pod: bool = False
    """Write the task's CSV report (every file, predictions or failure) in the pod's outputs."""
    reduce: str | None = None
    """A registered final-reduce step (REDUCERS) run once after the batches and resilience,
    over every batch's rows; its result is sent instead of, with ``send_rows=False``, the rows."""
    send_rows: bool = True
    output_images: str | None = None
    """A registered image output ("overlay", "mask"): one PNG per input in the pod's outputs."""
    weights: Mapping[str, np.ndarray] = field(default_factory=dict, compare=False)
    model_file: bytes | None = field(default=None, compare=False)
    """A safetensors file's bytes to run instead of ``weights``; pods that list approved
    model hashes only run a file whose SHA-256 they approved."""

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int):
            raise ConfigError("inference.batch_size must be an integer >= 1")
        if self.batch_size < 1:
            raise ConfigError("inference.batch_size must be an integer >= 1")
        limit = self.max_consecutive_batch_failures
        if isinstance(limit, bool) or not isinstance(limit, int) or limit == 0 or limit < -1:
            raise ConfigError(
                "inference.max_consecutive_batch_failures must be -1 (unlimited) or >= 1"
            )
        if self.force_rerun_failed_files and not self.resilience:
            raise ConfigError("force_rerun_failed_files needs resilience (single-file retries)")
        optional_timeout("inference.timeout", self.timeout)
        if self.output_images is not None:
            IMAGE_OUTPUTS.get(self.output_images)
        if self.reduce is not None:
            REDUCERS.get(self.reduce)
        if not self.send_rows and self.reduce is None:
            raise ConfigError("inference.send_rows = false needs a final reduce step (reduce)")

    def algorithms(self) -> frozenset[str]:
        return frozenset({self.model.name})

    def to_config(self) -> dict[str, Any]:
        return {
            "model": self.model.to_config(),
            "batch_size": self.batch_size,
            "resilience": self.resilience,
            "max_consecutive_batch_failures": self.max_consecutive_batch_failures,
            "test_run": self.test_run,
            "run_on_new_data_only": self.run_on_new_data_only,
            "force_rerun_failed_files": self.force_rerun_failed_files,
            "timeout": self.timeout,
            "report_at_pod": self.report_at_pod,
            "output_images": self.output_images,
            "reduce": self.reduce,
            "send_rows": self.send_rows,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Self:
        optional = set(cls.__dataclass_fields__) - {"model", "weights"}
        check_keys("inference", config, {"model"}, optional)
        values = {key: config[key] for key in optional if key in config}
        return cls(model=ModelSpec.from_config(config["model"]), **values)

    def summarise(self, result: Any) -> dict[str, Any]:
        if not isinstance(result, InferenceResult):
            return {}
        return {
            "files": {pod: len(rows) for pod, rows in result.rows.items()},
            "failed": {pod: len(rows) for pod, rows in result.failures.items()},
        }

    # --- modeller -----------------------------------------------------------------------

    async def run_modeller(
        self, mailbox: ModellerMailbox, context: ModellerContext
    ) -> InferenceResult:
        await mailbox.collect(MessageType.TASK_START, name="ready", timeout=self.timeout)
        if not mailbox.pods:
            failed = {pod: f"{r.reason.value}: {r.message}" for pod, r in mailbox.aborted.items()}
            raise PodResponseError("inference: no pod is ready", failed)
        await mailbox.broadcast(MessageType.TASK_START)
        if self.model_file is not None:
            weights = {MODEL_FILE: np.frombuffer(self.model_file, dtype=np.uint8)}
        else:
            weights = dict(self.weights) or state_to_arrays(build_model(self.model))
        await mailbox.broadcast(MessageType.MODEL_PARAMETERS, {}, weights)
        rows: dict[str, list[dict[str, str]]] = {pod: [] for pod in mailbox.pods}
        failures: dict[str, list[dict[str, str]]] = {}
        batches: dict[str, int] = dict.fromkeys(mailbox.pods, 0)
        reduced: dict[str, Any] = {}
        waiting = set(mailbox.pods)
        stream = mailbox.stream(timeout=self.timeout)
        async for message in stream:
            pod = message.sender
            body = message.body if isinstance(message.body, dict) else {}
            if message.type is MessageType.EVALUATION_RESULTS and pod in rows:
                rows[pod].extend(rows_from_body(body.get("rows", [])))
                batches[pod] = max(batches[pod], int(body.get("batch", 0)))
            elif message.type is MessageType.BATCHES_COMPLETE and body.get("stage") == FINISHED:
                failures[pod] = rows_from_body(body.get("failures", []))
                if isinstance(body.get("reduced"), dict):
                    reduced[pod] = body["reduced"]
                waiting.discard(pod)
            waiting &= set(mailbox.pods)  # pods that aborted are out
            if not waiting:
                break
        for pod in waiting:
            await mailbox.drop(pod, AbortReason.WORKER_UNRESPONSIVE, "no end of batches in time")
        # rows a pod delivered before it aborted (its usage limit, say) are kept
        return InferenceResult(
            rows={pod: found for pod, found in rows.items() if found or pod in mailbox.pods},
            failures=failures,
            batches=batches,
            reduced=reduced,
        )

    # --- worker ---------------------------------------------------------------------------

    async def run_worker(self, mailbox: WorkerMailbox, context: WorkerContext) -> dict[str, Any]:
        source = context.datasource
        if not isinstance(source, FileSource):
            raise SchemaMismatchError(
                "the inference protocol needs a folder-of-files dataset on the pod"
            )
        ledger: Ledger = context.ledger or StoreLedger(None)
        hooks = context.hooks.bind(mailbox, context.pod)
        await hooks.fire(HookPoint.INIT_START)
        key = self._task_hash(source)
        outputs = self._outputs(context, mailbox.task_id)
        records = await self._selected(source, ledger, key)
        first = next(records, None)
        if first is None:
            raise NoNewDataError("no file that this task has not already processed")
        count = source.count_in_background()
        await mailbox.send(MessageType.NUM_BATCHES, {"count": -1})
        await mailbox.send(MessageType.CURRENT_BATCH_ID, {"batch": 1})
        await mailbox.send(MessageType.TASK_START, {})
        await mailbox.receive(MessageType.TASK_START)
        setup = await mailbox.receive(MessageType.MODEL_PARAMETERS)
        model = await self._model(setup.tensors, ledger)
        await hooks.fire(HookPoint.INIT_END)
        await hooks.fire(HookPoint.RUN_START)
        run = _Run(self, source=source, ledger=ledger, key=key, model=model, mailbox=mailbox)
        run.outputs = outputs
        batches = source.batches(_chain(first, records), self.batch_size)
        await self._run_batches(run, batches, count, hooks)
        await mailbox.send(MessageType.BATCHES_COMPLETE, {"stage": BATCHES_ONLY})
        if self.resilience and not run.limit_reached:
            await run.retry_failed_batches()
        await hooks.fire(HookPoint.RESILIENCE_END, failed=len(run.failed))
        await ledger.record_failed(key, list(run.failed.values()))
        report = self._failure_report(run)
        if self.report_at_pod and outputs is not None:
            await asyncio.to_thread(write_report_csv, [*run.rows, *report], outputs / "report.csv")
        final: dict[str, Any] = {"stage": FINISHED, "failures": rows_to_body(report)}
        if self.reduce is not None:
            final["reduced"] = REDUCERS.get(self.reduce)(list(run.rows))
        await mailbox.send(MessageType.BATCHES_COMPLETE, final)
        await mailbox.receive(MessageType.TASK_COMPLETE)
        released = {"files": run.succeeded, "failed": len(run.failed), "batches": run.batch_id}
        await hooks.fire(HookPoint.RUN_END, released=released)
        return released

    async def _run_batches(
        self, run: _Run, batches: Iterator[list[FileRecord]], count: FileCount, hooks: Any
    ) -> None:
        """Every batch in turn, with CURRENT_BATCH_ID before each and NUM_BATCHES once the
        count is known (from the background count, or at the end)."""
        announced = False
        for batch in batches:
            await run.batch(batch)
            await hooks.fire(HookPoint.BATCH_END, batch=run.batch_id, step=run.succeeded)
            if not announced and count.done() and not self.run_on_new_data_only:
                total = math.ceil(count.result() / self.batch_size)
                await run.mailbox.send(MessageType.NUM_BATCHES, {"count": total})
                announced = True
            if self.test_run or run.limit_reached:
                break
            await run.mailbox.send(MessageType.CURRENT_BATCH_ID, {"batch": run.batch_id + 1})
        if not announced:  # the count is known now that the files were all listed
            await run.mailbox.send(MessageType.NUM_BATCHES, {"count": run.batch_id})

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

    def _failure_report(self, run: _Run) -> list[dict[str, str]]:
        """The report rows of the failed files; ends the task when the run cannot go on.

        Raises:
            LimitsExceededError: the model reached the pod's usage limit.
            TooManyFailuresError: no batch and no file succeeded.
        """
        if run.limit_reached:
            raise LimitsExceededError(
                f"model {self.model.name!r} reached this pod's usage limit; "
                f"{run.succeeded} results were delivered"
            )
        if run.succeeded == 0:
            raise TooManyFailuresError("no batch and no file could be processed")
        return report_rows(
            Predictions([], np.zeros(0, np.int64), np.zeros((0, 1), np.float32)),
            {name: f"{f.level}: {f.reason}" for name, f in run.failed.items()},
        )

    def _outputs(self, context: WorkerContext, task_id: str) -> Path | None:
        """This task's folder in the pod's outputs, when the task writes anything there."""
        if not self.report_at_pod and self.output_images is None:
            return None
        if context.outputs is None:
            raise ConfigError(
                "the task writes reports or images on the pod, but the pod has no outputs "
                "folder (`outputs = ...` in pod.toml)"
            )
        folder = context.outputs / task_id
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _task_hash(self, source: FileSource) -> str:
        definition = {k: v for k, v in self.dump().items() if k != "config"}
        definition["config"] = {
            k: v for k, v in self.to_config().items() if k not in (*_RUN_FLAGS, "timeout")
        }
        return task_hash(definition, source.identity())

    async def _selected(self, source: FileSource, ledger: Ledger, key: str) -> Iterator[FileRecord]:
        if not self.run_on_new_data_only and not self.force_rerun_failed_files:
            return source.files()
        processed = await ledger.processed_files(key)
        failed = {f.name for f in await ledger.failed_files(key)}

        def wanted(record: FileRecord) -> bool:
            if record.name in failed:
                return self.force_rerun_failed_files or not self.run_on_new_data_only
            if self.run_on_new_data_only:
                return processed.get(record.name) != record.mtime_ns
            return True

        return (record for record in source.files() if wanted(record))


class _Run:
    """The state of one worker's pass over its batches."""

    def __init__(
        self,
        protocol: BatchedInference,
        *,
        source: FileSource,
        ledger: Ledger,
        key: str,
        model: Any,
        mailbox: WorkerMailbox,
    ) -> None:
        self.protocol = protocol
        self.source = source
        self.ledger = ledger
        self.key = key
        self.model = model
        self.mailbox = mailbox
        self.batch_id = 0
        self.succeeded = 0
        self.consecutive_failures = 0
        self.failed: dict[str, FailedFile] = {}
        self.failed_batches: list[list[FileRecord]] = []
        self.limit_reached = False
        self.outputs: Path | None = None
        self.rows: list[dict[str, str]] = []

    async def batch(self, records: list[FileRecord]) -> None:
        self.batch_id += 1
        try:
            await self._predict_and_send(records, self.batch_id)
            self.consecutive_failures = 0
        except (DataError, ValueError, RuntimeError) as exc:
            if isinstance(exc, LimitsExceededError):
                raise
            self.consecutive_failures += 1
            self.failed_batches.append(records)
            for record in records:
                self._fail(record.name, exc, "batch")
            limit = self.protocol.max_consecutive_batch_failures
            if not self.protocol.resilience or (0 < limit <= self.consecutive_failures):
                raise TooManyFailuresError(
                    f"{self.consecutive_failures} batches failed in a row; last: {exc}"
                ) from exc

    async def retry_failed_batches(self) -> None:
        retry = [record for batch in self.failed_batches for record in batch]
        if any(failure.level == "file" for failure in self.failed.values()):
            retry += [
                r for r in self.source.files() if self.failed.get(r.name, _NONE).level == "file"
            ]
        seen: set[str] = set()
        for record in retry:
            if record.name in seen or self.limit_reached:
                continue
            seen.add(record.name)
            try:
                await self._predict_and_send([record], self.batch_id)
            except (DataError, ValueError, RuntimeError) as exc:
                self._fail(record.name, exc, "file")

    async def _predict_and_send(self, records: list[FileRecord], batch_id: int) -> None:
        loaded, errors = await asyncio.to_thread(self.source.load_batch, records)
        for name, error in errors.items():
            self._fail(name, error, "file")
        if not loaded:
            if errors:
                return  # every file of the batch failed on its own: file-level failures
            raise DataError("the batch is empty")
        good = [record for record, _ in loaded]
        inputs = self.source.stack([value for _, value in loaded])
        names = [record.name for record in good]
        predictions = await asyncio.to_thread(predict, self.model, inputs, names)
        usage = await self.ledger.consume(self.protocol.model.name, len(predictions))
        predictions = cut(predictions, usage.allowed)
        released = good[: usage.allowed]
        if released:
            await self.ledger.record_processed(
                self.key, [(record.name, record.mtime_ns) for record in released]
            )
            for record in released:
                self.failed.pop(record.name, None)
            self.succeeded += len(released)
            rows = report_rows(predictions)
            self.rows.extend(rows)
            if self.protocol.output_images is not None and self.outputs is not None:
                images = np.transpose(inputs[: usage.allowed], (0, 3, 1, 2))
                await asyncio.to_thread(
                    write_output_images,
                    images,
                    [record.name for record in released],
                    self.model,
                    predictions,
                    output=self.protocol.output_images,
                    folder=self.outputs / "images",
                )
            body: dict[str, Any] = {"batch": batch_id, "files": len(rows)}
            if self.protocol.send_rows:
                body["rows"] = rows_to_body(rows)
            await self.mailbox.send(MessageType.EVALUATION_RESULTS, body)
        if usage.exceeded:
            self.limit_reached = True

    def _fail(self, name: str, error: BaseException, level: str) -> None:
        reason = str(error)[:500]
        self.failed[name] = FailedFile(name, reason, type(error).__name__, level, time.time())


_NONE = FailedFile("", "", "", "", 0.0)


def _chain(first: FileRecord, rest: Iterator[FileRecord]) -> Iterator[FileRecord]:
    yield first
    yield from rest
