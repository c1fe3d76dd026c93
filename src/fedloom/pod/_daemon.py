"""The pod daemon behind ``fedloom pod start --config pod.toml``.

It loads the pod's identity and datasets, opens its SQLite store, connects outbound to the
hub (saying which modellers it accepts) and serves until SIGTERM or SIGINT. When the hub goes
away the connection is re-opened with exponential back-off; tasks in flight wait for it.
A pod started before its hub keeps trying to connect, logging one line per attempt; a hub
that refuses the pod's identity ends the daemon with a clear error (retrying would not
help). Plugins and every dataset are checked before the pod connects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable

from fedloom._registry import import_plugins
from fedloom.crypto import load_identity, load_pinned_identities
from fedloom.errors import ConfigError
from fedloom.pod._config import PodConfig
from fedloom.pod._pod import Pod
from fedloom.store import SqlitePodStore
from fedloom.transport._grpc_mailbox import ConnectionEvent, GrpcMailbox

logger = logging.getLogger(__name__)

DRAIN_SECONDS = 3.0
"""Seconds a stopping pod lets its running tasks finish before it cancels them."""

RECONNECT_BACKOFF = (0.5, 10.0)
"""Seconds between attempts to reach the hub: the first wait, doubled up to the second
(each with jitter); the daemon logs one line per attempt."""


async def connect_until(mailbox: GrpcMailbox, stop: asyncio.Event) -> bool:
    """Connect ``mailbox``, retrying (with back-off) while the hub is unreachable.

    Returns False if ``stop`` was set first (the mailbox is then closed).

    Raises:
        UnknownIdentityError / BadSignatureError / AccessDeniedError: the hub refused us.
    """
    loop = asyncio.get_running_loop()
    connecting = loop.create_task(mailbox.connect(timeout=None))
    stopping = loop.create_task(stop.wait())
    await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not connecting.done():
        connecting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await connecting
        await mailbox.close()
        return False
    connecting.result()
    return True


async def serve_pod(
    config: PodConfig,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[], None] | None = None,
    drain_seconds: float = DRAIN_SECONDS,
) -> None:
    """Run the pod until ``stop`` is set (or SIGTERM/SIGINT when ``stop`` is None).

    ``on_ready`` is called once the pod is connected to its hub. When asked to stop, the
    pod gives running tasks up to ``drain_seconds`` to end, then cancels (and records) the
    rest, so it always exits well within 20 s.

    Raises:
        ConfigError / KeyFileError: the identity, pinned keys or plugins cannot be loaded,
            or a dataset description is malformed.
        DataError: datasets cannot be used (every bad one is named, one per line).
        AccessDeniedError (incl. UnknownIdentityError), AuthenticationError: the hub
            refused the pod.
    """
    identity = load_identity(config.identity_path)
    if identity.name != config.name:
        raise ConfigError(
            f"the key file {config.identity_path} is for {identity.name!r}, "
            f"but the pod is named {config.name!r}"
        )
    where = f"{config.config_path}: plugins" if config.config_path else "plugins"
    # before anything is rebuilt from the names they register
    import_plugins(config.plugins, where=where)
    datasets = config.check_datasets()  # every bad dataset is refused now, not per task
    pinned = load_pinned_identities(config.modeller_keys, config.config_path)
    stop = stop or _stop_on_signals()
    store = SqlitePodStore(config.store_path)
    try:
        mailbox = GrpcMailbox(
            identity,
            config.hub_address,
            tls=config.tls,
            insecure=config.insecure,
            accepts=sorted(config.policy.allowed_modellers or ()),
            pinned=pinned,
            backoff=RECONNECT_BACKOFF,
            on_connection=lambda event: _log_connection(config.name, event),
        )
        logger.info("pod %s: connecting to the hub at %s", config.name, config.hub_address)
        if not await connect_until(mailbox, stop):
            return
        logger.info("pod %s connected to the hub at %s", config.name, config.hub_address)
        if on_ready is not None:
            on_ready()
        pod = Pod(
            config.name,
            datasets,
            policy=config.policy,
            store=store,
            isolation=config.isolation,
            plugins=config.plugins,
            hooks=config.hooks,
            outputs=config.outputs,
        )
        serving = asyncio.get_running_loop().create_task(pod.serve(mailbox))
        stopping = asyncio.get_running_loop().create_task(stop.wait())
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not serving.done() and not await pod.drain(drain_seconds):
            logger.warning(
                "pod %s: stopping with tasks still running: %s",
                config.name,
                ", ".join(pod.running_tasks() + pod.queued_tasks()),
            )
        await mailbox.close()  # ends pod.serve, which cancels and records what still runs
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        logger.info("pod %s stopped", config.name)
    finally:
        store.close()


def _log_connection(pod: str, event: ConnectionEvent) -> None:
    """Log one line per connection attempt that failed, and one when a lost connection is back.

    The line of a failed attempt gives the wait before the next one.
    """
    if event.state == "retrying":
        what = "lost the connection to" if event.lost else "cannot reach"
        logger.warning(
            "pod %s: %s the hub at %s (%s); retrying in %.1f s",
            pod,
            what,
            event.address,
            event.reason,
            event.retry_in,
        )
    elif event.state == "reconnected":
        logger.info("pod %s: reconnected to the hub at %s", pod, event.address)


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop


def run_pod(config: PodConfig, on_ready: Callable[[], None] | None = None) -> None:
    """Blocking entry point for the CLI."""
    asyncio.run(serve_pod(config, on_ready=on_ready))
