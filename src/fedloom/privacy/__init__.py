"""Update transforms on the worker (clip, noise, mask) and their inverse in the fold.

One contract (:class:`UpdateTransform`: ``release`` on the worker, ``unfold`` in the
fold), a registry by name + JSON args (:func:`get_transform`, :class:`TransformSpec`),
and the chain a task runs (:class:`TransformChain`), used by the pods' FedAvg protocol
and the simulation alike. Registered: ``clip``.
"""

from fedloom.privacy._base import (
    TRANSFORMS,
    FoldContext,
    ReleaseContext,
    TransformChain,
    TransformSpec,
    UpdateTransform,
    check_specs,
    get_transform,
    register_transform,
    registered_transforms,
)
from fedloom.privacy._clip import ClipTransform, update_norm

__all__ = [
    "TRANSFORMS",
    "ClipTransform",
    "FoldContext",
    "ReleaseContext",
    "TransformChain",
    "TransformSpec",
    "UpdateTransform",
    "check_specs",
    "get_transform",
    "register_transform",
    "registered_transforms",
    "update_norm",
]
