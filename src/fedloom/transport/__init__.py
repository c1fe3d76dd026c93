"""Transports: the Mailbox and Hub contracts, the routing rules and the in-memory hub.

Also the gRPC client of the hub daemon (:class:`GrpcMailbox`) with its frames.
"""

from fedloom.transport._base import Hub, Mailbox, MailboxStatistics
from fedloom.transport._hub_config import HubAddress, TlsClientConfig
from fedloom.transport._memory import HubStatistics, MemoryHub, MemoryMailbox
from fedloom.transport._router import Channel, TaskRouter
from fedloom.transport._routing import ROLES, Endpoint, Role, check_route

__all__ = [
    "ROLES",
    "Channel",
    "Endpoint",
    "Hub",
    "HubAddress",
    "HubStatistics",
    "Mailbox",
    "MailboxStatistics",
    "MemoryHub",
    "MemoryMailbox",
    "Role",
    "TaskRouter",
    "TlsClientConfig",
    "check_route",
]
