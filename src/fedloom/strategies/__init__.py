"""Strategies: what participants get, the client hook, the streaming fold, the server step.

One contract (:class:`Strategy`), used by the pods' FedAvg protocol and by the simulation
engine alike; a registry by name + JSON args (:func:`get_strategy`, :class:`StrategySpec`).
Registered: ``fedavg``, ``fedprox``, ``fedadam``.
"""

from fedloom.strategies._base import (
    STATE_PREFIX,
    STRATEGIES,
    ClientHook,
    Strategy,
    StrategySpec,
    get_strategy,
    register_strategy,
    registered_strategies,
    split_state,
    with_state,
)
from fedloom.strategies._fedadam import FedAdamStrategy
from fedloom.strategies._fedavg import FedAvgStrategy
from fedloom.strategies._fedprox import FedProxStrategy

__all__ = [
    "STRATEGIES",
    "STATE_PREFIX",
    "ClientHook",
    "FedAdamStrategy",
    "FedAvgStrategy",
    "FedProxStrategy",
    "Strategy",
    "StrategySpec",
    "get_strategy",
    "register_strategy",
    "registered_strategies",
    "split_state",
    "with_state",
]
