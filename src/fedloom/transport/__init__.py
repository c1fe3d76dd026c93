"""Transports: the Mailbox contract, the in-memory hub, and task-scoped mailboxes."""

from fedloom.transport.base import Mailbox, MailboxStatistics
from fedloom.transport.memory import HubStatistics, MemoryHub, MemoryMailbox
from fedloom.transport.router import Channel, TaskRouter
from fedloom.transport.task import Gathered, ModellerMailbox, ProgressCallback, WorkerMailbox

__all__ = [
    "Channel",
    "Gathered",
    "HubStatistics",
    "Mailbox",
    "MailboxStatistics",
    "MemoryHub",
    "MemoryMailbox",
    "ModellerMailbox",
    "ProgressCallback",
    "TaskRouter",
    "WorkerMailbox",
]
