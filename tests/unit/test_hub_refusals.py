"""A hub's FAIL during the handshake: reconnecting is tried only for a ``retryable`` error."""

from __future__ import annotations

from typing import Any

import pytest

from fedloom.crypto import Identity
from fedloom.errors import FedloomError, HubUnavailableError, UnknownIdentityError
from fedloom.transport import _frames as frames
from fedloom.transport import _grpc_link as client_connection
from fedloom.transport import _grpc_mailbox as client
from fedloom.transport._frames import Kind


class _FailingCall:
    """A hub stream that answers anything with one FAIL frame."""

    def __init__(self, error: FedloomError) -> None:
        self._item = frames.control(Kind.FAIL, frames.error_fields(error))

    async def read(self) -> bytes:
        return self._item


async def _expect(error: FedloomError) -> Any:
    mailbox = client.GrpcMailbox(Identity.generate("pod-a"), "127.0.0.1:1", insecure=True)
    return await mailbox._expect(_FailingCall(error), Kind.WELCOME, {})


async def test_a_refusal_that_cannot_pass_ends_the_attempts() -> None:
    with pytest.raises(client_connection._FatalError) as caught:
        await _expect(UnknownIdentityError("the hub does not know 'pod-a'"))
    assert type(caught.value.error) is UnknownIdentityError


async def test_a_retryable_refusal_is_tried_again() -> None:
    with pytest.raises(HubUnavailableError, match="shutting down"):
        await _expect(HubUnavailableError("the hub is shutting down"))
