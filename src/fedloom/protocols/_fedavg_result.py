"""What a FedAvg task produces: each round's :class:`RoundMetrics` and the :class:`FedAvgResult`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import torch

from fedloom.algorithms.ml import ModelSpec, build_model, load_arrays
from fedloom.store import RoundRecord


@dataclass(frozen=True)
class RoundMetrics:
    """What one round produced, aggregated and per pod.

    A round done before a resume is rebuilt from the experiment store
    (:meth:`from_record`), which keeps neither ``rejected`` nor ``seconds``: they are
    ``{}`` and ``0.0`` there.
    """

    round_index: int
    pods: list[str]
    aggregated: dict[str, float]
    per_pod: dict[str, dict[str, float]]
    rejected: dict[str, str]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """The round as JSON: what round events and run summaries carry."""
        return {
            "round": self.round_index,
            "pods": list(self.pods),
            "aggregated": dict(self.aggregated),
            "per_pod": {pod: dict(m) for pod, m in self.per_pod.items()},
            "rejected": dict(self.rejected),
            "seconds": self.seconds,
        }

    @classmethod
    def from_record(cls, record: RoundRecord) -> Self:
        """The metrics of a round as the experiment store recorded them (see above)."""
        return cls(
            round_index=record.round_index,
            pods=sorted(record.per_pod),
            aggregated=dict(record.aggregated),
            per_pod={pod: dict(metrics) for pod, metrics in record.per_pod.items()},
            rejected={},
            seconds=0.0,
        )


@dataclass(frozen=True)
class FedAvgResult:
    """The final global parameters and the per-round history."""

    model_spec: ModelSpec
    parameters: dict[str, np.ndarray]
    history: list[RoundMetrics]

    def model(self) -> torch.nn.Module:
        """A fresh torch module carrying the final global parameters."""
        module = build_model(self.model_spec)
        load_arrays(module, self.parameters)
        return module
