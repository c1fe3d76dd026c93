"""Tests for federated analytics: requests, the pod side, the wire form, and combine."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import pandas as pd
import pytest

from fedloom.algorithms._analytics import (
    STATISTIC_NAMES,
    AnalyticsRequest,
    column_ranges,
    combine,
    compute_partials,
    edges_from_ranges,
    partials_from_wire,
    partials_to_wire,
)
from fedloom.algorithms._statistics import ColumnPartial
from fedloom.errors import (
    AggregationError,
    ConfigError,
    EmptyDatasetError,
    MissingColumnError,
    PrivacyThresholdError,
    ProtocolError,
    SchemaMismatchError,
)


def make_pods(seed: int, sizes: tuple[int, ...] = (120, 35, 260)) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    pods = {}
    for index, size in enumerate(sizes):
        frame = pd.DataFrame(
            {
                "age": rng.integers(18, 90, size).astype(float),
                "income": rng.lognormal(10, 1, size),
                "delta": rng.normal(-3, 5, size),
                "city": rng.choice(["x", "y"], size),
            }
        )
        frame.loc[rng.random(size) < 0.1, "income"] = np.nan
        pods[f"pod-{index}"] = frame
    return pods


def run(
    pods: dict[str, pd.DataFrame], request: AnalyticsRequest, min_rows: int = 5
) -> dict[str, dict[str, Any]]:
    """The whole flow as the protocol will drive it, through the wire form."""
    edges: dict[str, np.ndarray] = {}
    if request.columns_needing_edges():
        ranges = [column_ranges(f, request, min_rows=min_rows) for f in pods.values()]
        edges = edges_from_ranges(ranges, request.histogram_bins)
    received = {}
    for name, frame in pods.items():
        body, tensors = partials_to_wire(
            compute_partials(frame, request, edges=edges, min_rows=min_rows)
        )
        body = msgpack.unpackb(msgpack.packb(body))  # the body really travels
        received[name] = partials_from_wire(body, tensors)
    result = combine(received, request, edges)
    json.dumps(result, allow_nan=False)
    return result


# --- combined results equal central results ---------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_combined_statistics_equal_central_statistics(seed: int) -> None:
    pods = make_pods(seed)
    request = AnalyticsRequest(
        statistics=STATISTIC_NAMES, columns=("age", "income", "delta"), histogram_bins=7
    )
    result = run(pods, request)
    central = pd.concat(pods.values(), ignore_index=True)
    for column in ("age", "income", "delta"):
        stats, values = result[column], central[column]
        assert stats["count"] == values.count()
        assert stats["sum"] == pytest.approx(values.sum(), rel=1e-12)
        assert stats["mean"] == pytest.approx(values.mean(), rel=1e-12)
        assert stats["var"] == pytest.approx(values.var(), rel=1e-10)
        assert stats["std"] == pytest.approx(values.std(), rel=1e-10)
        assert stats["min"] == values.min() and stats["max"] == values.max()
        edges = np.linspace(values.min(), values.max(), 8)
        np.testing.assert_allclose(stats["histogram"]["edges"], edges)
        expected, _ = np.histogram(values.dropna(), bins=edges)
        assert stats["histogram"]["counts"] == expected.tolist()
        ordered = np.sort(values.dropna().to_numpy())
        assert list(stats["quantiles"]) == ["0.25", "0.5", "0.75"]
        for q in (0.25, 0.5, 0.75):
            x = ordered[math.floor(q * (len(ordered) - 1))]
            assert abs(stats["quantiles"][repr(q)] - x) <= 0.01 * abs(x) * (1 + 1e-9)


def test_per_column_and_given_ranges_need_no_pre_round() -> None:
    pods = make_pods(11)
    request = AnalyticsRequest(
        per_column={"age": ("histogram", "count"), "delta": ("quantiles",)},
        histogram_range={"age": (0.0, 100.0)},
        histogram_bins=4,
        quantiles=(0.1, 0.9),
        sketch_accuracy=0.005,
    )
    assert request.columns_needing_edges() == []
    result = run(pods, request)
    central = pd.concat(pods.values())
    assert set(result) == {"age", "delta"}
    assert set(result["age"]) == {"histogram", "count"}
    expected, _ = np.histogram(central["age"], bins=[0, 25, 50, 75, 100])
    assert result["age"]["histogram"]["counts"] == expected.tolist()
    assert list(result["delta"]["quantiles"]) == ["0.1", "0.9"]


def test_all_numeric_columns_when_none_are_named() -> None:
    result = run(make_pods(2), AnalyticsRequest(statistics=("mean", "count")))
    assert list(result) == ["age", "income", "delta"]  # 'city' is text: left out
    assert all(set(stats) == {"mean", "count"} for stats in result.values())


def test_constant_column_histogram() -> None:
    pods = {name: frame.assign(age=7.0) for name, frame in make_pods(3).items()}
    result = run(pods, AnalyticsRequest(statistics=("histogram", "var"), columns=("age",)))
    assert result["age"]["histogram"]["edges"][0] == 6.5
    assert result["age"]["histogram"]["edges"][-1] == 7.5
    assert sum(result["age"]["histogram"]["counts"]) == 415
    assert result["age"]["var"] == 0.0


def test_pods_release_only_what_was_asked() -> None:
    frame = make_pods(4)["pod-0"]
    partials = compute_partials(
        frame, AnalyticsRequest(statistics=("count",), columns=("age",)), edges={}, min_rows=1
    )
    partial = partials["age"]
    assert partial.count == 120
    for field in ("sum", "mean", "mean_low", "m2", "min", "max"):
        assert math.isnan(getattr(partial, field))
    assert partial.histogram is None and partial.sketch is None
    only_max = compute_partials(
        frame, AnalyticsRequest(statistics=("max",), columns=("age",)), edges={}, min_rows=1
    )["age"]
    assert math.isnan(only_max.min) and only_max.max == frame["age"].max()


# --- requests ----------------------------------------------------------------------------


def test_request_round_trips_through_json() -> None:
    request = AnalyticsRequest(
        statistics=["mean", "histogram", "quantiles"],  # type: ignore[arg-type]
        columns=["a", "b"],  # type: ignore[arg-type]
        quantiles=(0, 0.5, 1),
        histogram_bins=3,
        histogram_range={"a": [0, 1]},  # type: ignore[dict-item]
        schema={"a": "float", "c": "string"},
        min_rows=10,
        sketch_accuracy=0.02,
    )
    assert request.statistics == ("mean", "histogram", "quantiles")
    assert request.quantiles == (0.0, 0.5, 1.0)
    assert request.histogram_range == {"a": (0.0, 1.0)}
    assert request.columns_needing_edges() == ["b"]
    again = AnalyticsRequest.from_config(json.loads(json.dumps(request.to_config())))
    assert again == request
    per = AnalyticsRequest(per_column={"x": ("min",), "y": ("histogram",)})
    assert AnalyticsRequest.from_config(json.loads(json.dumps(per.to_config()))) == per
    assert per.column_statistics() == {"x": ("min",), "y": ("histogram",)}


BAD_REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("empty", {}),
    ("unknown statistic", {"statistics": ["median"]}),
    ("statistics is a string", {"statistics": "mean"}),
    ("duplicate statistic", {"statistics": ["mean", "mean"]}),
    ("both", {"statistics": ["mean"], "per_column": {"a": ["max"]}}),
    ("per_column with columns", {"per_column": {"a": ["max"]}, "columns": ["a"]}),
    ("per_column unknown statistic", {"per_column": {"a": ["mode"]}}),
    ("per_column not a map", {"per_column": [["a", "max"]]}),
    ("empty column name", {"statistics": ["mean"], "columns": [""]}),
    ("column not a string", {"statistics": ["mean"], "columns": [3]}),
    ("histogram without columns", {"statistics": ["histogram"]}),
    ("bins zero", {"statistics": ["histogram"], "columns": ["a"], "histogram_bins": 0}),
    ("bins text", {"statistics": ["mean"], "histogram_bins": "10"}),
    ("bins bool", {"statistics": ["mean"], "histogram_bins": True}),
    ("bins float", {"statistics": ["mean"], "histogram_bins": 10.0}),
    ("quantile above one", {"statistics": ["quantiles"], "quantiles": [1.5]}),
    ("quantile nan", {"statistics": ["quantiles"], "quantiles": [float("nan")]}),
    ("quantile text", {"statistics": ["quantiles"], "quantiles": ["0.5"]}),
    ("quantiles repeated", {"statistics": ["quantiles"], "quantiles": [0.5, 0.5]}),
    ("quantiles empty", {"statistics": ["quantiles"], "quantiles": []}),
    ("range for a column without histogram", {"statistics": ["mean"], "columns": ["a"],
                                              "histogram_range": {"a": [0, 1]}}),
    ("range low >= high", {"statistics": ["histogram"], "columns": ["a"],
                           "histogram_range": {"a": [1, 1]}}),
    ("range of three", {"statistics": ["histogram"], "columns": ["a"],
                        "histogram_range": {"a": [0, 1, 2]}}),
    ("range infinite", {"statistics": ["histogram"], "columns": ["a"],
                        "histogram_range": {"a": [0, float("inf")]}}),
    ("schema type", {"statistics": ["mean"], "schema": {"a": "date"}}),
    ("schema not a map", {"statistics": ["mean"], "schema": ["a"]}),
    ("min_rows negative", {"statistics": ["mean"], "min_rows": -1}),
    ("min_rows float", {"statistics": ["mean"], "min_rows": 2.5}),
    ("sketch accuracy", {"statistics": ["mean"], "sketch_accuracy": 1.0}),
    ("unknown key", {"statistics": ["mean"], "colour": "red"}),
]  # fmt: skip


@pytest.mark.parametrize("config", [c for _, c in BAD_REQUESTS], ids=[n for n, _ in BAD_REQUESTS])
def test_bad_requests_are_config_errors(config: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        AnalyticsRequest.from_config(config)


def test_request_errors_say_what_is_wrong() -> None:
    with pytest.raises(ConfigError, match=r"'median'.*known: count"):
        AnalyticsRequest(statistics=("median",))
    with pytest.raises(ConfigError, match="colour"):
        AnalyticsRequest.from_config({"statistics": ["mean"], "colour": 1})
    with pytest.raises(ConfigError, match="mapping"):
        AnalyticsRequest.from_config(["mean"])  # type: ignore[arg-type]


# --- pod-side checks ---------------------------------------------------------------------

FRAME = pd.DataFrame({"a": [1.5, 2.0, np.nan, 4.0], "n": [1, 2, 3, 4], "s": ["p", "q", "r", "s"]})


@pytest.mark.parametrize("pod_side", ["partials", "ranges"])
@pytest.mark.parametrize(
    ("frame", "request_config", "error", "text"),
    [
        (FRAME.iloc[:0], {"statistics": ["mean"]}, EmptyDatasetError, "no rows"),
        (FRAME, {"statistics": ["mean"], "columns": ["zz"]}, MissingColumnError, "'zz'"),
        (FRAME, {"per_column": {"s": ["histogram"]}}, SchemaMismatchError, "'s'"),
        (FRAME, {"statistics": ["mean"], "schema": {"a": "integer"}}, SchemaMismatchError, "'a'"),
        (FRAME, {"statistics": ["mean"], "schema": {"s": "numeric"}}, SchemaMismatchError, "'s'"),
        (FRAME, {"statistics": ["mean"], "schema": {"n": "float"}}, SchemaMismatchError, "'n'"),
        (FRAME, {"statistics": ["mean"], "schema": {"b": "float"}}, MissingColumnError, "'b'"),
        (FRAME[["s"]], {"statistics": ["mean"]}, SchemaMismatchError, "numeric"),
    ],
)
def test_pod_refuses_frames_that_do_not_fit(
    pod_side: str, frame: pd.DataFrame, request_config: dict[str, Any], error: type, text: str
) -> None:
    request = AnalyticsRequest.from_config({**request_config, "histogram_bins": 2})
    with pytest.raises(error, match=text):
        if pod_side == "partials":
            compute_partials(frame, request, edges={"s": np.array([0.0, 1.0, 2.0])}, min_rows=0)
        else:
            column_ranges(frame, request, min_rows=0)


def test_schema_accepts_matching_columns() -> None:
    frame = FRAME.assign(
        whole=[1.0, np.nan, 3.0, 4.0], o=pd.Series(["a", None, "c", "d"], dtype=object)
    )
    schema = {"a": "float", "n": "integer", "whole": "integer", "s": "string", "o": "string",
              "a2": "numeric"}  # fmt: skip
    frame = frame.assign(a2=frame["a"])
    request = AnalyticsRequest(statistics=("count",), columns=("a",), schema=schema)
    assert compute_partials(frame, request, edges={}, min_rows=0)["a"].count == 3


def test_privacy_threshold_refuses_the_whole_request() -> None:
    request = AnalyticsRequest(statistics=("mean",), columns=("n", "a"))
    assert set(compute_partials(FRAME, request, edges={}, min_rows=3)) == {"n", "a"}
    with pytest.raises(PrivacyThresholdError, match="'a'") as info:
        compute_partials(FRAME, request, edges={}, min_rows=4)  # 'a' has 3 non-null values
    assert "3" not in str(info.value).replace("minimum of 4", "")  # the count is not leaked
    stricter = AnalyticsRequest(statistics=("mean",), columns=("n",), min_rows=5)
    with pytest.raises(PrivacyThresholdError):
        compute_partials(FRAME, stricter, edges={}, min_rows=1)
    with pytest.raises(PrivacyThresholdError):
        column_ranges(FRAME, stricter, min_rows=1)
    looser = AnalyticsRequest(statistics=("mean",), columns=("n",), min_rows=1)
    with pytest.raises(PrivacyThresholdError):  # the pod's own threshold still applies
        compute_partials(FRAME, looser, edges={}, min_rows=5)


def test_missing_or_unfit_edges_are_config_errors() -> None:
    request = AnalyticsRequest(statistics=("histogram",), columns=("a",), histogram_bins=3)
    with pytest.raises(ConfigError, match="edges"):
        compute_partials(FRAME, request, edges={}, min_rows=0)
    with pytest.raises(ConfigError, match="edges"):
        compute_partials(FRAME, request, edges={"a": np.array([0.0, 5.0])}, min_rows=0)
    with pytest.raises(ConfigError):
        compute_partials(FRAME, request, edges={"a": np.array([0.0, 2, 1, 5])}, min_rows=0)


def test_edges_from_ranges() -> None:
    edges = edges_from_ranges([{"a": (0.0, 2.0), "b": (5, 5)}, {"a": (-2.0, 1.0)}, {}], 4)
    np.testing.assert_allclose(edges["a"], [-2, -1, 0, 1, 2])
    np.testing.assert_allclose(edges["b"], [4.5, 4.75, 5, 5.25, 5.5])
    for bad in ({"a": (2.0, 1.0)}, {"a": (0.0,)}, {"a": (0.0, math.nan)}, {"a": "01"}, ["a"]):
        with pytest.raises(ProtocolError):
            edges_from_ranges([bad], 4)  # type: ignore[list-item]
    for bins in (0, 2.0, True):
        with pytest.raises(ConfigError):
            edges_from_ranges([{"a": (0.0, 1.0)}], bins)  # type: ignore[arg-type]


# --- wire form ---------------------------------------------------------------------------

WIRE_REQUEST = AnalyticsRequest(
    statistics=("count", "mean", "var", "histogram", "quantiles", "min", "max"),
    columns=("age", "delta"),
    histogram_range={"age": (0.0, 100.0), "delta": (-30.0, 30.0)},
)


def wire_sample() -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    partials = compute_partials(make_pods(5)["pod-0"], WIRE_REQUEST, edges={}, min_rows=1)
    return partials_to_wire(partials)


def test_wire_round_trip_is_exact() -> None:
    partials = compute_partials(make_pods(5)["pod-1"], WIRE_REQUEST, edges={}, min_rows=1)
    body, tensors = partials_to_wire(partials)
    assert all(isinstance(name, str) and len(name) < 40 for name in tensors)
    again = partials_from_wire(msgpack.unpackb(msgpack.packb(body)), tensors)
    assert list(again) == list(partials)
    for column, partial in partials.items():
        other = again[column]
        for field in ("count", "sum", "mean", "mean_low", "m2", "min", "max"):
            assert getattr(other, field) == getattr(partial, field)
        assert partial.histogram is not None and other.histogram is not None
        np.testing.assert_array_equal(other.histogram, partial.histogram)
        assert partial.sketch is not None and other.sketch is not None
        assert (
            other.sketch.quantiles((0.1, 0.5)).tolist()
            == partial.sketch.quantiles((0.1, 0.5)).tolist()
        )


Mutation = Callable[[dict[str, Any], dict[str, np.ndarray]], object]


def _set(field: str, value: object) -> Mutation:
    def mutate(body: dict[str, Any], tensors: dict[str, np.ndarray]) -> None:
        body["columns"][0][field] = value

    return mutate


def _tensor(name: str, value: object) -> Mutation:
    def mutate(body: dict[str, Any], tensors: dict[str, Any]) -> None:
        if value is None:
            del tensors[name]
        else:
            tensors[name] = value

    return mutate


MALFORMED: dict[str, Mutation] = {
    "negative count": _set("count", -1),
    "float count": _set("count", 3.0),
    "bool count": _set("count", True),
    "nan count": _set("count", math.nan),
    "text sum": _set("sum", "12"),
    "infinite mean": _set("mean", math.inf),
    "negative m2": _set("m2", -1.0),
    "min above max": _set("min", 1e9),
    "histogram flag": _set("histogram", 1),
    "sketch accuracy": _set("sketch_accuracy", 2.0),
    "missing name": _set("name", None),
    "duplicate name": lambda b, t: b["columns"][1].update(name=b["columns"][0]["name"]),
    "extra field": _set("colour", "red"),
    "missing field": lambda b, t: b["columns"][0].pop("m2"),
    "missing histogram": _tensor("c0.histogram", None),
    "float histogram": _tensor("c0.histogram", np.ones(10)),
    "negative histogram": _tensor("c0.histogram", -np.ones(10, dtype=np.int64)),
    "2-D histogram": _tensor("c0.histogram", np.ones((2, 5), dtype=np.int64)),
    "histogram over count": _tensor("c0.histogram", np.full(10, 10**6, dtype=np.int64)),
    "extra tensor": _tensor("c9.histogram", np.ones(3, dtype=np.int64)),
    "missing sketch array": _tensor("c0.sketch.zero_count", None),
    "sketch count mismatch": _tensor("c0.sketch.zero_count", np.array([5], dtype=np.int64)),
    "columns not a list": lambda b, t: b.update(columns="age"),
    "extra top-level key": lambda b, t: b.update(more=1),
    "entry not a map": lambda b, t: b["columns"].append(["age"]),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_wire_input_is_protocol_error(case: str) -> None:
    body, tensors = wire_sample()
    MALFORMED[case](body, tensors)
    with pytest.raises(ProtocolError):
        partials_from_wire(body, tensors)


@pytest.mark.parametrize("body", [None, [], "columns", {"columns": None}])
def test_non_map_bodies_are_protocol_errors(body: object) -> None:
    with pytest.raises(ProtocolError):
        partials_from_wire(body, {})


# --- combine -----------------------------------------------------------------------------


def _pod_partials(request: AnalyticsRequest) -> dict[str, dict[str, ColumnPartial]]:
    return {
        name: compute_partials(frame, request, edges={}, min_rows=1)
        for name, frame in make_pods(6).items()
    }


def test_combine_rejects_partials_that_do_not_match_the_request() -> None:
    request = WIRE_REQUEST
    with pytest.raises(AggregationError):
        combine({}, request, {})
    partials = _pod_partials(request)
    del partials["pod-1"]["delta"]
    with pytest.raises(ProtocolError, match="pod-1"):
        combine(partials, request, {})
    fewer_bins = AnalyticsRequest(**{**request.__dict__, "histogram_bins": 4})
    partials = _pod_partials(request)
    partials["pod-2"] = _pod_partials(fewer_bins)["pod-2"]
    with pytest.raises(ProtocolError, match="bins"):
        combine(partials, request, {})
    coarse = AnalyticsRequest(**{**request.__dict__, "sketch_accuracy": 0.05})
    partials = _pod_partials(request)
    partials["pod-0"] = _pod_partials(coarse)["pod-0"]
    with pytest.raises(ProtocolError, match="accuracy"):
        combine(partials, request, {})
    partials = _pod_partials(request)
    partials["pod-0"] = _pod_partials(
        AnalyticsRequest(statistics=("count",), columns=("age", "delta"))
    )["pod-0"]
    with pytest.raises(ProtocolError, match="pod-0"):
        combine(partials, request, {})


def test_combine_needs_edges_for_histograms() -> None:
    request = AnalyticsRequest(statistics=("histogram",), columns=("age",))
    with pytest.raises(ConfigError, match="edges"):
        combine({"p": {"age": ColumnPartial(1, 1.0, 1.0, 0.0, 1.0, 1.0)}}, request, {})


def test_pods_with_different_numeric_columns_are_schema_mismatch() -> None:
    request = AnalyticsRequest(statistics=("mean",))
    pods = make_pods(7)
    partials = {n: compute_partials(f, request, edges={}, min_rows=1) for n, f in pods.items()}
    partials["pod-2"] = compute_partials(
        pods["pod-2"].drop(columns="age"), request, edges={}, min_rows=1
    )
    with pytest.raises(SchemaMismatchError):
        combine(partials, request, {})


def test_combine_refuses_a_variance_without_the_mean() -> None:
    request = AnalyticsRequest(statistics=("var",), columns=("age",))
    partials = _pod_partials(request)
    age = partials["pod-1"]["age"]
    partials["pod-1"] = {
        "age": ColumnPartial(age.count, age.sum, math.nan, age.m2, math.nan, math.nan)
    }
    with pytest.raises(ProtocolError, match="'mean'"):
        combine(partials, request, {})


def test_a_pod_with_an_empty_column_still_combines() -> None:
    pods = make_pods(8)
    pods["pod-1"] = pods["pod-1"].assign(income=np.nan)
    request = AnalyticsRequest(statistics=("count", "mean", "min", "max"), columns=("income",))
    result = run(pods, request, min_rows=0)
    central = pd.concat(pods.values())["income"]
    assert result["income"]["count"] == central.count()
    assert result["income"]["mean"] == pytest.approx(central.mean(), rel=1e-12)
    assert result["income"]["min"] == central.min()
