"""The update-transform contract, its registry by name, and the chain a task runs.

An :class:`UpdateTransform` has two halves, written once and run by pods and the
simulation alike:

1. :meth:`UpdateTransform.release` runs on the worker, on its trained update, just before
   the update leaves it (the pods' FedAvg worker before it sends, the simulation's client
   runner before the update is handed over in its slot): clipping, local noise, masks;
2. :meth:`UpdateTransform.unfold` runs where the updates were folded, on the weighted
   mean, before the strategy's server step: pairwise masks cancel there, central noise
   is added there. It is the identity unless the transform says otherwise
   (:attr:`UpdateTransform.unfolds`), and the runtimes skip it then.

A task names its transforms as a list of ``{"name": ..., "args": {...}}`` (a
:class:`TransformSpec` each), applied in that order on release and in the reverse order
on unfold (:class:`TransformChain`). Transforms are frozen dataclasses whose fields are
their JSON args, rebuilt on each side through the closed registry
(:func:`register_transform`, :func:`get_transform`): nothing is unpickled.
"""

from __future__ import annotations

import dataclasses
from abc import ABC
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Self

import numpy as np
import numpy.typing as npt

from fedloom._registry import ArgsRegistry
from fedloom.algorithms.ml._local_round import round_seed
from fedloom.errors import ConfigError

__all__ = [
    "FoldContext",
    "ReleaseContext",
    "TransformChain",
    "TransformSpec",
    "UpdateTransform",
    "check_specs",
    "get_transform",
    "register_transform",
    "registered_transforms",
]

Array = npt.NDArray[Any]


@dataclass(frozen=True)
class ReleaseContext:
    """Who releases which round's update, under the task's seed.

    ``participant`` is the pod's name (``client-<i>`` for a virtual client), so a pod and
    the simulated client holding its data draw the same numbers.
    """

    seed: int
    participant: str
    round_index: int
    position: int = 0
    """The transform's place in the chain (set by :class:`TransformChain`)."""

    def generator(self) -> np.random.Generator:
        """This participant's random numbers for the transform at :attr:`position`.

        One stream per participant, round and place in the chain: the same on a pod and
        in the simulation.
        """
        return np.random.default_rng(
            round_seed(self.seed, self.participant, self.round_index, "privacy", self.position)
        )


@dataclass(frozen=True)
class FoldContext:
    """The round whose weighted mean is unfolded, and whose updates it holds.

    ``participants`` are the names of the folded updates, sorted.
    """

    seed: int
    round_index: int
    participants: tuple[str, ...]
    total_weight: float
    position: int = 0
    """The transform's place in the chain (set by :class:`TransformChain`)."""

    def generator(self) -> np.random.Generator:
        """The fold's random numbers for the transform at :attr:`position`, this round."""
        return np.random.default_rng(
            round_seed(self.seed, "fold", self.round_index, "privacy", self.position)
        )


class UpdateTransform(ABC):
    """Base of every update transform (see the module docstring).

    Subclasses are frozen dataclasses of JSON args, registered with
    :func:`register_transform`.

    Constraints: both halves are deterministic given their arguments and context (draw
    random numbers only from the context's ``generator()``), so pods and
    the simulation release and unfold the same bits; neither keeps state between calls.
    """

    name: ClassVar[str]
    needs_global: ClassVar[bool] = False
    """Whether :meth:`release` reads ``global_arrays`` (else it gets an empty map and the
    runtimes keep no copy of the global model for it)."""
    unfolds: ClassVar[bool] = False
    """Whether :meth:`unfold` does anything (else the runtimes do not call it)."""

    def to_args(self) -> dict[str, Any]:
        """The JSON args this transform was built from."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def release(
        self,
        update: MutableMapping[str, Array],
        global_arrays: Mapping[str, Array],
        context: ReleaseContext,
    ) -> MutableMapping[str, Array]:
        """The update as it may leave the worker (default: as it is).

        ``update`` is the worker's own: its arrays are writable and may be changed in place
        (the simulation's are its shared-memory slot). What is returned replaces it, with
        the same keys, shapes and dtypes; returning ``update`` itself copies nothing.
        ``global_arrays`` (read only) is what the round started from, by the same keys.

        Raises:
            DataError: ``update`` and ``global_arrays`` do not match (keys, shapes).
        """
        return update

    def unfold(self, aggregate: MutableMapping[str, Array], context: FoldContext) -> None:  # noqa: B027 - the identity is the default
        """Turn the folded weighted mean into the round's mean, in place (default: as it is).

        Raises:
            AggregationError: the aggregate cannot be unfolded (the message says why).
        """


TRANSFORMS: ArgsRegistry[UpdateTransform] = ArgsRegistry("privacy transform")
"""The registered transforms.

``register_transform`` is its class decorator, ``get_transform(name, args)`` builds one from
JSON args (ConfigError otherwise), ``registered_transforms()`` lists the names.
"""

register_transform = TRANSFORMS.register
get_transform = TRANSFORMS.build
registered_transforms = TRANSFORMS.names


@dataclass(frozen=True)
class TransformSpec:
    """A transform by registered name and JSON args: what task files and configs hold."""

    name: str
    args: Mapping[str, Any] = field(default_factory=dict)

    def build(self) -> UpdateTransform:
        """The transform (see :func:`get_transform` for what it raises)."""
        return get_transform(self.name, self.args)

    def to_config(self) -> dict[str, Any]:
        """``{"name": ..., "args": {...}}``, as :meth:`from_config` reads it."""
        return {"name": self.name, "args": dict(self.args)}

    @classmethod
    def from_config(cls, config: object) -> Self:
        """``"name"`` or ``{"name": ..., "args": {...}}``, checked by building it.

        Raises:
            ConfigError: another shape, or a transform :func:`get_transform` refuses.
        """
        return cls(*TRANSFORMS.read_spec(config))

    @classmethod
    def list_from_config(cls, config: object) -> tuple[Self, ...]:
        """A list of transform configs (see :meth:`from_config`), in order.

        Raises:
            ConfigError: not a list, or an entry :meth:`from_config` refuses (the message
                gives its position).
        """
        if not isinstance(config, list | tuple):
            raise ConfigError(
                f'privacy must be a list of {{"name": ..., "args": {{...}}}}, got {config!r}'
            )
        specs = []
        for position, entry in enumerate(config):
            try:
                specs.append(cls.from_config(entry))
            except ConfigError as exc:
                raise ConfigError(f"privacy[{position}]: {exc}") from exc
        return tuple(specs)


def check_specs(owner: str, specs: object) -> tuple[TransformSpec, ...]:
    """A config field's transforms as a tuple, each checked by building it.

    Raises:
        ConfigError: not a list or tuple of :class:`TransformSpec`, or one does not build.
    """
    if not isinstance(specs, list | tuple) or not all(
        isinstance(spec, TransformSpec) for spec in specs
    ):
        raise ConfigError(f"{owner} privacy must be a list of TransformSpec, got {specs!r}")
    for spec in specs:
        spec.build()
    return tuple(specs)


class TransformChain:
    """The transforms of a task, in order (see the module docstring).

    An empty chain is falsy, and the runtimes then do no work for it at all.
    """

    def __init__(self, transforms: Sequence[UpdateTransform] = ()) -> None:
        self.transforms = tuple(transforms)

    @classmethod
    def of(cls, specs: Iterable[TransformSpec]) -> Self:
        """The chain of ``specs``, built (see :func:`get_transform` for what it raises)."""
        return cls([spec.build() for spec in specs])

    def __bool__(self) -> bool:
        return bool(self.transforms)

    @property
    def needs_global(self) -> bool:
        """Whether some transform reads the global arrays on release."""
        return any(t.needs_global for t in self.transforms)

    @property
    def unfolds(self) -> bool:
        """Whether some transform has an inverse step in the fold."""
        return any(t.unfolds for t in self.transforms)

    def release(
        self,
        update: MutableMapping[str, Array],
        global_arrays: Mapping[str, Array],
        context: ReleaseContext,
    ) -> MutableMapping[str, Array]:
        """Each transform's :meth:`~UpdateTransform.release`, in order.

        Raises:
            DataError: as the transforms raise it.
        """
        for position, transform in enumerate(self.transforms):
            update = transform.release(update, global_arrays, replace(context, position=position))
        return update

    def unfold(self, aggregate: MutableMapping[str, Array], context: FoldContext) -> None:
        """Each transform's :meth:`~UpdateTransform.unfold`, in reverse order, in place.

        Raises:
            AggregationError: as the transforms raise it.
        """
        for position in reversed(range(len(self.transforms))):
            transform = self.transforms[position]
            if transform.unfolds:
                transform.unfold(aggregate, replace(context, position=position))
