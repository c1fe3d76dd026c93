"""What a pod accepts: protocol names, policies, datasets, malformed requests."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest

from fedloom import (
    Analytics,
    AnalyticsRequest,
    FedAvg,
    LocalFederation,
    ResultsOnly,
    TrainingConfig,
    run_local,
)
from fedloom.algorithms.ml import evaluate, load_arrays, state_to_arrays
from fedloom.errors import AbortReason, PodResponseError
from fedloom.plugins import Message, MessageType, build_model
from fedloom.pod import ArraySource, MemoryPodStore, PodPolicy

from .conftest import RAW, TINY_MLP, RawClient, labelled_arrays, until_idle

SIZES = {"pod-a": 30, "pod-b": 45}


def arrays_of(pod: str) -> tuple[np.ndarray, np.ndarray]:
    return labelled_arrays(SIZES[pod], seed=sorted(SIZES).index(pod))


def sources() -> dict[str, ArraySource]:
    return {pod: ArraySource(*arrays_of(pod)) for pod in SIZES}


def summary_task() -> ResultsOnly:
    return ResultsOnly("dataset_summary")


def fedavg() -> FedAvg:
    return FedAvg(model=TINY_MLP, rounds=1, training=TrainingConfig(batch_size=16))


VALID_TASK = {"protocol": "results_only", "config": {"algorithm": "dataset_summary"}}


def reasons(error: PodResponseError) -> dict[str, str]:
    """Each failed pod's reason code (its entry is "CODE: what the pod said")."""
    return {pod: why.split(":")[0] for pod, why in error.failed_pods.items()}


def reason_of(reply: Message) -> str:
    assert reply.type is MessageType.JOB_REJECT, reply
    assert isinstance(reply.body, dict)
    assert isinstance(reply.body.get("message"), str) and reply.body["message"]
    return str(reply.body["reason"])


# --- protocol names are looked up, never imported ---------------------------------------

DANGEROUS_NAMES: list[Any] = [
    "os.system",
    "subprocess.Popen",
    "builtins.eval",
    "this",  # a real module that prints when imported
    "__import__",
    "fedloom.protocols._fedavg.FedAvg",
    "FedAvg",
    "../fedavg",
    "fedavg\x00",
    "fedavg ",
    "x" * 300,
    42,
    None,
    ["fedavg"],
]


async def test_unknown_and_dangerous_protocol_names_are_rejected_without_imports() -> None:
    store = MemoryPodStore()
    pods = sources()

    async with LocalFederation(pods, pod_stores={"pod-a": store}, guests=[RAW]) as federation:
        client = RawClient(federation.hub)
        before = set(sys.modules)
        replies = [
            await client.request(
                "pod-a", {"task": {"protocol": name, "config": {}}, "dataset": "default"}
            )
            for name in DANGEROUS_NAMES
        ]
        imported = set(sys.modules) - before
        # the pod is still there and serves a valid task, from the real modeller
        after = await federation.run(summary_task())
        await until_idle(federation.pods["pod-a"])

    assert imported == set()
    assert "this" not in sys.modules
    for name, reply in zip(DANGEROUS_NAMES, replies, strict=True):
        assert reason_of(reply) == AbortReason.INVALID_TASK.value, name
    runs = {run.task_id: run for run in store.task_runs()}
    for reply in replies:
        assert runs[reply.task_id].status == "rejected"
        assert runs[reply.task_id].reason == AbortReason.INVALID_TASK.value
        assert runs[reply.task_id].modeller == "raw-modeller"
    assert runs[replies[0].task_id].protocol == "os.system"
    assert after.accepted == sorted(SIZES) and set(after.result) == set(SIZES)
    assert runs[after.task_id].status == "completed"


async def test_an_empty_protocol_name_is_rejected_and_recorded() -> None:
    store = MemoryPodStore()

    async with LocalFederation(sources(), pod_stores={"pod-a": store}, guests=[RAW]) as federation:
        client = RawClient(federation.hub)
        body = {"task": {"protocol": "", "config": {}}, "dataset": "default"}
        reply = await client.request("pod-a", body)

    assert reason_of(reply) == AbortReason.INVALID_TASK.value
    # the pod's own record of the rejection must not depend on what the modeller sent
    run = store.get_task_run(reply.task_id)
    assert (run.status, run.reason) == ("rejected", AbortReason.INVALID_TASK.value)


# --- malformed requests -----------------------------------------------------------------

MALFORMED_BODIES: dict[str, Any] = {
    "string body": "run fedavg please",
    "list body": [VALID_TASK, "default"],
    "no body": None,
    "number body": 7,
    "missing dataset": {"task": VALID_TASK},
    "dataset not a string": {"task": VALID_TASK, "dataset": 3},
    "missing task": {"dataset": "default"},
    "task not a map": {"task": "results_only", "dataset": "default"},
    "task without config": {"task": {"protocol": "results_only"}, "dataset": "default"},
    "task with extra key": {"task": {**VALID_TASK, "code": "import os"}, "dataset": "default"},
    "config not a map": {
        "task": {"protocol": "results_only", "config": ["dataset_summary"]},
        "dataset": "default",
    },
    "unknown config key": {
        "task": {"protocol": "results_only", "config": {"algorithm": "dataset_summary", "x": 1}},
        "dataset": "default",
    },
    "unknown algorithm": {
        "task": {"protocol": "results_only", "config": {"algorithm": "os.system"}},
        "dataset": "default",
    },
}


async def test_malformed_job_requests_are_rejected_as_invalid_tasks() -> None:
    store = MemoryPodStore()

    async with LocalFederation(sources(), pod_stores={"pod-a": store}, guests=[RAW]) as federation:
        client = RawClient(federation.hub)
        replies = {
            case: await client.request("pod-a", body) for case, body in MALFORMED_BODIES.items()
        }
        valid = await client.request("pod-a", {"task": VALID_TASK, "dataset": "default"})

    for case, reply in replies.items():
        assert reason_of(reply) == AbortReason.INVALID_TASK.value, case
        assert store.get_task_run(reply.task_id).status == "rejected", case
    # the control: the well-formed version of these requests is accepted
    assert valid.type is MessageType.JOB_ACCEPT


async def test_an_unknown_dataset_is_rejected_with_no_data() -> None:
    store = MemoryPodStore()

    async with LocalFederation(sources(), pod_stores={"pod-a": store}, guests=[RAW]) as federation:
        client = RawClient(federation.hub)
        reply = await client.request("pod-a", {"task": VALID_TASK, "dataset": "nope"})

    assert reason_of(reply) == AbortReason.NO_DATA.value
    assert "nope" in reply.body["message"]
    assert store.get_task_run(reply.task_id).reason == AbortReason.NO_DATA.value


def test_run_local_on_an_unknown_dataset_fails_with_no_data() -> None:
    with pytest.raises(PodResponseError) as caught:
        run_local(summary_task(), sources(), dataset="nope")
    assert reasons(caught.value) == {pod: AbortReason.NO_DATA.value for pod in SIZES}
    assert "has no dataset 'nope'" in caught.value.failed_pods["pod-a"]  # and what it said


def test_a_dataset_one_pod_lacks_is_a_typed_rejection_in_the_result() -> None:
    pods: dict[str, Any] = sources()
    pods["pod-b"] = {"default": pods["pod-b"], "extra": ArraySource(*arrays_of("pod-b"))}
    pods["pod-a"] = {"default": pods["pod-a"]}
    run = run_local(summary_task(), pods, dataset="extra", require_all=False)
    assert run.accepted == ["pod-b"]
    assert run.rejected["pod-a"].reason is AbortReason.NO_DATA
    assert run.rejected["pod-a"].exception_type == "DatasetNotFoundError"
    assert set(run.result) == {"pod-b"}


# --- policies ---------------------------------------------------------------------------


def test_allowed_protocols_rejects_others_with_no_access() -> None:
    locked = PodPolicy(allowed_protocols=frozenset({"analytics"}))
    policies = {"pod-a": locked}
    store = MemoryPodStore()
    with pytest.raises(PodResponseError) as caught:
        run_local(fedavg(), sources(), policies=policies, pod_stores={"pod-a": store})
    assert caught.value.failed_pods == {
        "pod-a": "NO_ACCESS: protocol 'fedavg' is not allowed on this pod"
    }
    assert "pod-a" in str(caught.value)
    (rejected,) = store.task_runs()
    assert (rejected.status, rejected.reason) == ("rejected", AbortReason.NO_ACCESS.value)

    # best effort: the task runs on the pods that allow it, the rejection is reported
    run = run_local(fedavg(), sources(), policies=policies, require_all=False)
    assert run.accepted == ["pod-b"]
    assert run.rejected["pod-a"].reason is AbortReason.NO_ACCESS
    assert [r.pods for r in run.result.history] == [["pod-b"]]

    # the allowed protocol goes through on the same policy
    request = AnalyticsRequest(statistics=("count",), columns=("f0",))
    allowed = run_local(Analytics(request=request), sources(), policies=policies)
    assert allowed.result.statistics["f0"]["count"] == sum(SIZES.values())


def test_allowed_algorithms_rejects_other_models_and_algorithms() -> None:
    policy = PodPolicy(allowed_algorithms=frozenset({"dataset_summary"}))
    store = MemoryPodStore()
    with pytest.raises(PodResponseError) as caught:
        run_local(fedavg(), sources(), policies={"pod-a": policy}, pod_stores={"pod-a": store})
    assert caught.value.failed_pods == {
        "pod-a": "NO_ACCESS: algorithms ['mlp'] are not allowed on this pod"
    }
    (rejected,) = store.task_runs()
    assert (rejected.status, rejected.reason) == ("rejected", AbortReason.NO_ACCESS.value)
    assert fedavg().algorithms() == frozenset({"mlp"})

    run = run_local(summary_task(), sources(), policy=policy)
    assert run.accepted == sorted(SIZES)
    with_mlp = PodPolicy(allowed_algorithms=frozenset({"mlp"}))
    assert run_local(fedavg(), sources(), policy=with_mlp).accepted == sorted(SIZES)


def test_allowed_modellers_rejects_other_modellers_with_no_access() -> None:
    policy = PodPolicy(allowed_modellers=frozenset({"alice"}))
    with pytest.raises(PodResponseError) as caught:
        run_local(summary_task(), sources(), policies={"pod-b": policy}, modeller_name="mallory")
    assert reasons(caught.value) == {"pod-b": AbortReason.NO_ACCESS.value}
    assert "'mallory' is not allowed" in caught.value.failed_pods["pod-b"]

    run = run_local(summary_task(), sources(), policy=policy, modeller_name="alice")
    assert run.accepted == sorted(SIZES)


# --- results-only algorithms ------------------------------------------------------------


def test_dataset_summary_reports_each_pods_shape_and_no_values() -> None:
    run = run_local(summary_task(), sources())
    assert set(run.result) == set(SIZES)
    for pod, rows in SIZES.items():
        answer = run.result[pod]
        assert answer.body["rows"] == rows
        assert answer.body["kind"] == "arrays"
        assert list(answer.body["columns"]) == ["f0", "f1", "f2", "f3", "label"]
        assert answer.tensors == {}


def test_model_evaluation_equals_a_local_evaluation() -> None:
    parameters = state_to_arrays(build_model(TINY_MLP, seed=11))
    task = ResultsOnly(
        "model_evaluation", config={"model": TINY_MLP.to_config()}, inputs=parameters
    )
    run = run_local(task, sources())
    assert set(run.result) == set(SIZES)
    for pod, rows in SIZES.items():
        model = build_model(TINY_MLP)
        load_arrays(model, parameters)
        expected = evaluate(model, *arrays_of(pod))
        got = run.result[pod].body
        assert got["num_samples"] == rows
        assert got["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-12)
        assert got["loss"] == pytest.approx(expected["loss"], rel=1e-6)
    # different parameters give a different evaluation: the inputs did travel
    other = state_to_arrays(build_model(TINY_MLP, seed=12))
    again = run_local(
        ResultsOnly("model_evaluation", config={"model": TINY_MLP.to_config()}, inputs=other),
        sources(),
    )
    assert again.result["pod-a"].body["loss"] != run.result["pod-a"].body["loss"]


def test_model_evaluation_without_a_model_aborts_with_invalid_task() -> None:
    with pytest.raises(PodResponseError) as caught:
        run_local(ResultsOnly("model_evaluation"), sources())
    assert reasons(caught.value) == {pod: AbortReason.INVALID_TASK.value for pod in SIZES}
