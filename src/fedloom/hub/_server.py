"""The hub: a gRPC server holding one durable mailbox per registered identity.

Pods and modellers connect outbound (one bidirectional stream each, see
:mod:`fedloom.transport._frames`) and prove who they are by signing a random challenge
with their Ed25519 key. The hub checks every message before it stores it:

- the frame is signed by the connection's identity and names it as sender;
- the recipient is registered, and the pair is allowed: a modeller may write to a pod that
  accepts it, a pod to a modeller it accepts (pods say whom they accept when they connect;
  the check is repeated at delivery, so nothing queued before a pod changed its mind
  reaches it);
- the sequence number is above the last one stored from that sender (durably, so a
  replayed or reordered message is refused even after a hub restart) and the timestamp is
  within ``clock_window`` seconds of the hub's clock.

A message is acknowledged to its sender only once it is committed to the
:class:`~fedloom.hub._store.HubStore`; it is deleted only when its recipient
acknowledges it, so it survives hub crashes and is delivered again after a reconnect
(the client drops what it has already seen by sequence number). The hub only ever sees
sealed (end-to-end encrypted) content.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import grpc
import grpc.aio

from fedloom.crypto._pem import read_pem
from fedloom.errors import HubUnavailableError
from fedloom.hub._server_connections import _HubConnections
from fedloom.hub._server_settings import (
    DEFAULT_CLOCK_WINDOW,
    HubServerStatistics,
    HubSettings,
)
from fedloom.transport import _frames as frames
from fedloom.transport._grpc_options import SERVER_ONLY_OPTIONS, grpc_options

logger = logging.getLogger(__name__)

_HANDLER_EXIT_SECONDS = 5.0  # a stopping hub waits this long for its connections to end


class HubServer(_HubConnections):
    """A running hub; ``await start()`` then ``await stop()`` (or ``async with``)."""

    def __init__(self, settings: HubSettings, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(settings, clock=clock)
        self._server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self) -> int:
        """Listen; returns the bound port.

        Raises:
            HubUnavailableError: the address cannot be bound (the port is in use, by
                another hub say, or the host is not an address of this machine).
            KeyFileError: TLS material is missing or unreadable.
        """
        address = f"{self.settings.host}:{self.settings.port}"
        _check_bindable(self.settings.host, self.settings.port, address)
        server = grpc.aio.server(options=[*grpc_options(), *SERVER_ONLY_OPTIONS])
        handler: Any = grpc.stream_stream_rpc_method_handler(self._connect)
        service, method = frames.SERVICE_METHOD.rsplit("/", 1)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service.strip("/"), {method: handler}),)
        )
        try:
            if self.settings.tls is not None:
                tls = self.settings.tls
                credentials = grpc.ssl_server_credentials(
                    [(read_pem(tls.server_key, private=True), read_pem(tls.server_certificate))],
                    root_certificates=read_pem(tls.ca_certificate)
                    if self.settings.require_client_auth
                    else None,
                    require_client_auth=self.settings.require_client_auth,
                )
                port = server.add_secure_port(address, credentials)
            else:
                port = server.add_insecure_port(address)
        except RuntimeError as exc:  # taken between the check above and now
            raise HubUnavailableError(
                f"cannot listen on {address}: the address is in use or not available"
            ) from exc
        if port == 0:
            raise HubUnavailableError(f"cannot listen on {address} (in use?)")
        await server.start()
        self._server = server
        self.port = port
        logger.info("hub listening on %s:%d", self.settings.host, port)
        return port

    async def stop(self, grace: float | None = 1.0) -> None:
        """Stop serving (idempotent); the store keeps every undelivered message.

        Every open connection is ended first (its handler returns), so the server has no
        call left to abort when ``grace`` runs out.
        """
        if self._server is not None:
            server, self._server = self._server, None
            handlers = list(self._handlers)
            for session in list(self._sessions.values()):
                session.kick()
            for task in handlers:
                task.cancel()
            if handlers:
                await asyncio.wait(handlers, timeout=_HANDLER_EXIT_SECONDS)
            await server.stop(grace)
        self.store.close()

    async def wait_for_termination(self) -> None:
        """Wait until the server has stopped."""
        if self._server is not None:
            await self._server.wait_for_termination()

    def statistics(self) -> HubServerStatistics:
        """Connected identities, frames stored and delivered, refusals by kind."""
        counts = self._stats
        return HubServerStatistics(
            connected=tuple(sorted(self._sessions)),
            stored=counts.stored,
            delivered=counts.delivered,
            refused=MappingProxyType(dict(counts.refused)),
        )


def _check_bindable(host: str, port: int, address: str) -> None:
    """Refuse an address this machine cannot listen on, with the reason in one line.

    gRPC's own failure is a RuntimeError after its C core has logged to stderr; a plain
    bind (SO_REUSEADDR, like gRPC's) says first whether the port is taken or the host is
    not ours. Port 0 (any free port) is always bindable.

    Raises:
        HubUnavailableError: the port is in use on one of the host's addresses, or none
            of them can be bound.
    """
    if port == 0:
        return
    name = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        found = socket.getaddrinfo(
            name or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (socket.gaierror, UnicodeError) as exc:
        raise HubUnavailableError(f"cannot listen on {address}: unknown host {host!r}") from exc
    failures: list[OSError] = []
    for family, kind, proto, _, sockaddr in found:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise HubUnavailableError(
                        f"cannot listen on {address}: port {port} is already in use "
                        "(is another hub running there?)"
                    ) from exc
                failures.append(exc)
    if failures and len(failures) == len(found):
        reason = failures[0].strerror or str(failures[0])
        raise HubUnavailableError(f"cannot listen on {address}: {reason}") from failures[0]


async def serve_hub(
    settings: HubSettings,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[int], None] | None = None,
) -> None:
    """Run a hub until ``stop`` is set (or SIGTERM/SIGINT when ``stop`` is None).

    ``on_ready`` is called with the bound port once the hub listens.
    """
    if stop is None:
        import signal

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
    hub = HubServer(settings)
    try:
        port = await hub.start()
        if on_ready is not None:
            on_ready(port)
        await stop.wait()
    finally:
        await hub.stop(grace=1.0)


__all__ = [
    "DEFAULT_CLOCK_WINDOW",
    "HubServer",
    "HubServerStatistics",
    "HubSettings",
    "grpc_options",
    "serve_hub",
]
