"""Client data for simulation fault tests, imported by the workers as a plugin.

``flaky``: synthetic clients whose ``load`` fails the first time per client listed in
``fail`` (a marker file in ``marker_dir`` remembers the first try across processes): with
``error = "memory"`` a MemoryError, with ``"cuda"`` torch's CUDA out-of-memory error, with
``"value"`` a ValueError every time. ``slow``: synthetic clients that sleep before loading
(so a test can act while a round runs).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedloom._events import EventKind
from fedloom.simulation import CLIENT_DATA
from fedloom.simulation._data import ClientData, SyntheticClients


class _Flaky:
    def __init__(self, config: Mapping[str, Any]) -> None:
        self._inner = SyntheticClients(
            config["clients"], config["samples"], tuple(config["shape"]), classes=4
        )
        self._fail = set(config.get("fail", []))
        self._marker_dir = Path(config["marker_dir"])
        self._error = config.get("error", "memory")
        self._sleep = float(config.get("sleep", 0.0))

    @property
    def num_clients(self) -> int:
        return self._inner.num_clients

    def load(self, client: int) -> tuple[np.ndarray, np.ndarray]:
        time.sleep(self._sleep)
        if client in self._fail:
            if self._error == "value":
                raise ValueError(f"client {client} has broken data")
            marker = self._marker_dir / f"tried-{client}"
            if not marker.exists():
                marker.touch()
                if self._error == "cuda":
                    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
                raise MemoryError(f"client {client} did not fit")
        return self._inner.load(client)


@CLIENT_DATA.register("flaky")
def flaky(config: Mapping[str, Any]) -> ClientData:
    return _Flaky(config)


class KillFirstWorkerOnce:
    """An event subscriber: SIGKILL the pool's worker 0 when round 0's first client is in."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.killed: list[int] = []

    def __call__(self, event: Any) -> None:
        if (
            event.kind is EventKind.PARTICIPANT_DONE
            and event.fields["round"] == 0
            and not self.killed
        ):
            pid = self.backend.worker_pids()[0]
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            self.killed.append(pid)
