"""fedloom: federated learning and federated analytics.

The researcher's API is what this module exports (``__all__``, listed once in
``__init__.pyi``); the rest of the public API is in :mod:`fedloom.errors` (every error),
:mod:`fedloom.pod` (a data owner's pod), :mod:`fedloom.hub` (the hub daemon and its
clients), :mod:`fedloom.plugins` (every registry and the contracts to implement) and
:mod:`fedloom.testing` (conformance suites). Every other module is internal.

Names are imported on first use, so ``import fedloom`` (and starting a hub, which needs
no torch) stays fast.
"""

import lazy_loader as _lazy

__version__ = "0.1.0"

__getattr__, __dir__, __all__ = _lazy.attach_stub(__name__, __file__)
