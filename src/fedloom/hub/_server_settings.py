"""How a hub runs, and what a running hub reports about itself.

:class:`HubSettings` is checked when it is built; :class:`HubServerStatistics` is what
:meth:`~fedloom.hub._server.HubServer.statistics` returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fedloom.errors import (
    ConfigError,
)
from fedloom.hub._tls import HubTlsFiles
from fedloom.wire import DEFAULT_MAX_MESSAGE_BYTES

DEFAULT_CLOCK_WINDOW = 300.0
"""Seconds a message's timestamp may differ from the hub's clock."""


@dataclass(frozen=True)
class HubSettings:
    """How a hub runs. Exactly one of ``tls`` and ``insecure=True`` must be given."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    tls: HubTlsFiles | None = None
    require_client_auth: bool = False
    insecure: bool = False
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    clock_window: float = DEFAULT_CLOCK_WINDOW
    synchronous: str = "NORMAL"

    def __post_init__(self) -> None:
        if (self.tls is None) == (not self.insecure):
            raise ConfigError(
                "a hub needs TLS material (run `fedloom hub init`) or an explicit --insecure "
                "for plaintext, and not both"
            )
        if self.require_client_auth and self.tls is None:
            raise ConfigError("mutual TLS (require_client_auth) needs TLS material")
        if not 0 <= self.port <= 65_535:
            raise ConfigError(f"port must be in 0..65535, got {self.port}")
        if not 1024 <= self.max_message_bytes <= DEFAULT_MAX_MESSAGE_BYTES:
            raise ConfigError(
                f"max_message_bytes must be in 1024..{DEFAULT_MAX_MESSAGE_BYTES}, "
                f"got {self.max_message_bytes}"
            )
        if not self.clock_window > 0:
            raise ConfigError("clock_window must be > 0 seconds")


@dataclass(frozen=True)
class HubServerStatistics:
    """A running hub's statistics.

    Who is connected (sorted), messages stored and delivered since it started, and the
    requests it refused by error type.
    """

    connected: tuple[str, ...]
    stored: int
    delivered: int
    refused: Mapping[str, int]
