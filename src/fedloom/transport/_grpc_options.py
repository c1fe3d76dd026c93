"""The gRPC channel options of a hub connection, shared by the hub and its clients.

A client imports them from here without importing the hub daemon.
"""

from __future__ import annotations

from fedloom.transport import _frames as frames

SERVER_ONLY_OPTIONS = [("grpc.so_reuseport", 0)]
"""gRPC turns SO_REUSEPORT on by default, so a second hub on a busy port would "listen"
too and the kernel would share the connections out between the two; off, it cannot bind."""


def grpc_options(max_message_bytes: int = frames.GRPC_MESSAGE_LIMIT) -> list[tuple[str, int]]:
    """Channel options shared by the hub and its clients.

    The hub adds :data:`SERVER_ONLY_OPTIONS`.
    """
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ]
