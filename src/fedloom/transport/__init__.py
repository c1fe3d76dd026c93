"""Transports: the Mailbox contract, the in-memory hub, and task-scoped mailboxes."""

from fedloom.transport.base import Hub, Mailbox, MailboxStatistics
from fedloom.transport.memory import HubStatistics, MemoryHub, MemoryMailbox
from fedloom.transport.router import Channel, TaskRouter
from fedloom.transport.routing import ROLES, Endpoint, Role, check_route
from fedloom.transport.task import Gathered, ModellerMailbox, ProgressCallback, WorkerMailbox

__all__ = [
    "ROLES",
    "Channel",
    "Endpoint",
    "Gathered",
    "Hub",
    "HubStatistics",
    "Mailbox",
    "MailboxStatistics",
    "MemoryHub",
    "MemoryMailbox",
    "ModellerMailbox",
    "ProgressCallback",
    "Role",
    "TaskRouter",
    "WorkerMailbox",
    "check_route",
]
