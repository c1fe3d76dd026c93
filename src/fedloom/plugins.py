"""Extending fedloom: every registry with its ``register_*``, and the contracts to implement.

A plugin is a module a pod's admin lists in ``pod.toml`` (``plugins = [...]``) and a task
or simulation names in its config: importing it registers names, and pods rebuild
protocols, models, strategies, transforms, hooks and loaders only from those names plus
JSON config (nothing is unpickled). ``fedloom list --plugin MODULE`` prints what a plugin
adds.

=====================  =========================================  =============================
what                   registry (name → entry)                    how to add one
=====================  =========================================  =============================
task protocols         :data:`PROTOCOLS`                          :func:`register_protocol`
models                 :data:`MODELS`                             ``@MODELS.register("name")``
strategies             :data:`STRATEGIES`                         :func:`register_strategy`
privacy transforms     :data:`TRANSFORMS`                         :func:`register_transform`
worker hooks           :data:`HOOKS`                              :func:`register_hook`
results algorithms     :data:`RESULT_ALGORITHMS`                  ``.register("name")``
file loaders           :data:`LOADERS`                            ``.register("name")``
inference reductions   :data:`REDUCERS`                           ``.register("name")``
inference images       :data:`IMAGE_OUTPUTS`                      ``.register("name")``
simulation client data :data:`CLIENT_DATA`                        ``.register("name")``
=====================  =========================================  =============================

The contracts a plugin implements are here too (:class:`TaskProtocol` and
:class:`BatchedProtocol`, :class:`Strategy`, :class:`UpdateTransform`, :class:`Hook`,
:class:`Datasource`, the stores, :class:`Mailbox` and :class:`Hub`, the simulation's
:class:`Backend`); :mod:`fedloom.testing` has a conformance suite for each.
"""

from fedloom._events import EventStream as EventStream
from fedloom._exports import public_names as _public_names
from fedloom._hooks import HOOKS as HOOKS
from fedloom._hooks import Hook as Hook
from fedloom._hooks import HookEvent as HookEvent
from fedloom._hooks import HookPoint as HookPoint
from fedloom._hooks import register_hook as register_hook
from fedloom._registry import ArgsRegistry as ArgsRegistry
from fedloom._registry import Registry as Registry
from fedloom._registry import import_plugins as import_plugins
from fedloom.algorithms import WeightedMean as WeightedMean
from fedloom.algorithms import WeightedSum as WeightedSum
from fedloom.algorithms import fedavg as fedavg
from fedloom.algorithms.inference import IMAGE_OUTPUTS as IMAGE_OUTPUTS
from fedloom.algorithms.inference import ImageContext as ImageContext
from fedloom.algorithms.ml import MODELS as MODELS
from fedloom.algorithms.ml import build_model as build_model
from fedloom.datasources import LOADERS as LOADERS
from fedloom.datasources import Datasource as Datasource
from fedloom.privacy import TRANSFORMS as TRANSFORMS
from fedloom.privacy import FoldContext as FoldContext
from fedloom.privacy import ReleaseContext as ReleaseContext
from fedloom.privacy import UpdateTransform as UpdateTransform
from fedloom.privacy import register_transform as register_transform
from fedloom.protocols import PROTOCOLS as PROTOCOLS
from fedloom.protocols import REDUCERS as REDUCERS
from fedloom.protocols import RESULT_ALGORITHMS as RESULT_ALGORITHMS
from fedloom.protocols import BatchedProtocol as BatchedProtocol
from fedloom.protocols import ModellerContext as ModellerContext
from fedloom.protocols import ReleaseGuard as ReleaseGuard
from fedloom.protocols import ResumePoint as ResumePoint
from fedloom.protocols import TaskProtocol as TaskProtocol
from fedloom.protocols import WorkerContext as WorkerContext
from fedloom.protocols import load_protocol as load_protocol
from fedloom.protocols import register_protocol as register_protocol
from fedloom.session import ModellerMailbox as ModellerMailbox
from fedloom.session import WorkerMailbox as WorkerMailbox
from fedloom.simulation import CLIENT_DATA as CLIENT_DATA
from fedloom.simulation import Backend as Backend
from fedloom.simulation import ProcessPoolBackend as ProcessPoolBackend
from fedloom.simulation import ThreadPoolBackend as ThreadPoolBackend
from fedloom.store import ExperimentStore as ExperimentStore
from fedloom.store import MemoryExperimentStore as MemoryExperimentStore
from fedloom.store import PodStore as PodStore
from fedloom.strategies import STRATEGIES as STRATEGIES
from fedloom.strategies import ClientHook as ClientHook
from fedloom.strategies import Strategy as Strategy
from fedloom.strategies import register_strategy as register_strategy
from fedloom.transport import Hub as Hub
from fedloom.transport import Mailbox as Mailbox
from fedloom.wire import Message as Message
from fedloom.wire import MessageType as MessageType
from fedloom.wire import decode as decode
from fedloom.wire import encode as encode

__all__ = _public_names(globals())
