"""Cancelling a Modeller.run in each phase: request, accept, running.

The pods are scripted on the in-memory hub (no processes) and answer TASK_CANCEL as a
pod does: TASK_ABORT(CANCELLED_BY_MODELLER). The real pods' side is in
tests/integration/test_cancel.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

import fedloom.modeller._modeller as modeller_module
from fedloom import Modeller
from fedloom.errors import AbortReason, ErrorReport
from fedloom.modeller import TaskCancellation
from fedloom.plugins import MemoryExperimentStore
from fedloom.testing import connect_federation
from fedloom.testing._faults import Fault
from fedloom.transport import Mailbox, MailboxStatistics, MemoryHub
from fedloom.wire import Message, MessageType

CANCELLED = AbortReason.CANCELLED_BY_MODELLER


@dataclass
class Scripted:
    """A pod that answers the JOB_REQUEST with ``answer`` (None: says nothing) and answers
    TASK_CANCEL as a pod does. ``seen`` lists what it received."""

    mailbox: Mailbox
    answer: MessageType | None = MessageType.JOB_ACCEPT
    ack: bool = True
    seen: list[MessageType] = field(default_factory=list)
    heard: dict[MessageType, asyncio.Event] = field(default_factory=dict)

    def saw(self, kind: MessageType) -> asyncio.Event:
        return self.heard.setdefault(kind, asyncio.Event())

    async def run(self) -> None:
        while True:
            message = await self.mailbox.receive()
            self.seen.append(message.type)
            self.saw(message.type).set()
            reply: MessageType | None = None
            body: Any = None
            if message.type is MessageType.JOB_REQUEST:
                reply = self.answer
                if reply is MessageType.JOB_REJECT:
                    body = ErrorReport(AbortReason.NO_ACCESS, "not here", "", "").to_body()
            elif message.type is MessageType.TASK_CANCEL and self.ack:
                reply = MessageType.TASK_ABORT
                body = ErrorReport(CANCELLED, "the modeller cancelled the task", "", "").to_body()
            if reply is not None:
                await self.mailbox.send(
                    Message(reply, "", message.sender, message.task_id, body=body)
                )


class GatedMailbox:
    """The modeller's mailbox, holding back its JOB_REQUEST to ``pod`` until ``gate`` opens."""

    def __init__(self, inner: Mailbox, pod: str) -> None:
        self.inner = inner
        self.pod = pod
        self.gate = asyncio.Event()
        self.held = asyncio.Event()

    @property
    def identity(self) -> str:
        return self.inner.identity

    async def send(self, message: Message) -> Message:
        if message.type is MessageType.JOB_REQUEST and message.recipient == self.pod:
            self.held.set()
            await self.gate.wait()
        return await self.inner.send(message)

    async def receive(self, timeout: float | None = None) -> Message:
        return await self.inner.receive(timeout)

    async def close(self) -> None:
        await self.inner.close()

    def statistics(self) -> MailboxStatistics:
        return self.inner.statistics()


Body = Callable[[Modeller, dict[str, Scripted]], Awaitable[Any]]


async def federation(
    pods: dict[str, dict[str, Any]], body: Body, *, gate: str | None = None
) -> Any:
    """Run ``body`` with a modeller and the scripted ``pods`` (their options) on one hub."""
    hub = MemoryHub()
    mailboxes = connect_federation(hub, "modeller", pods)
    scripted = {name: Scripted(mailboxes[name], **options) for name, options in pods.items()}
    tasks = [asyncio.create_task(pod.run()) for pod in scripted.values()]
    inner = mailboxes["modeller"]
    mailbox: Mailbox = inner if gate is None else GatedMailbox(inner, gate)
    modeller = Modeller(mailbox, store=MemoryExperimentStore())
    try:
        return await body(modeller, scripted)
    finally:
        await modeller.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await hub.close()


async def cancel_when(
    modeller: Modeller, run: asyncio.Task[Any], *events: asyncio.Event
) -> tuple[list[TaskCancellation], float]:
    for event in events:
        await event.wait()
    loop = asyncio.get_running_loop()  # virtual time: seconds are exact, and cost none
    started = loop.time()
    cancellations = await modeller.cancel()
    seconds = loop.time() - started
    with pytest.raises(asyncio.CancelledError):
        await run
    assert modeller.running_tasks() == []
    return cancellations, seconds


@pytest.mark.virtual_time
@pytest.mark.async_timeout(20)
async def test_cancel_mid_task_sends_task_cancel_and_waits_for_every_answer() -> None:
    async def body(modeller: Modeller, pods: dict[str, Scripted]) -> Any:
        # the pods never answer the instruction: the modeller waits for their results
        run = asyncio.create_task(modeller.run(Fault("sleep"), ["pod-a", "pod-b"]))
        ((cancellation,), seconds) = await cancel_when(
            modeller, run, *(pod.saw(MessageType.INSTRUCTION) for pod in pods.values())
        )
        assert modeller.store is not None
        (experiment,) = modeller.store.list_experiments()
        return cancellation, seconds, pods, experiment

    cancellation, seconds, pods, experiment = await federation({"pod-a": {}, "pod-b": {}}, body)
    assert set(cancellation.acknowledged) == {"pod-a", "pod-b"}
    assert {r.reason for r in cancellation.acknowledged.values()} == {CANCELLED}
    assert cancellation.unanswered == []
    assert seconds == 0, "it waited (on a timer) past the pods' answers"
    for pod in pods.values():  # a cancel, not an abort: the pod answers it
        assert pod.seen[-1] is MessageType.TASK_CANCEL
        assert MessageType.TASK_ABORT not in pod.seen
    assert (experiment.status, experiment.result) == (
        "failed",
        {"error": "the modeller cancelled the task"},
    )


@pytest.mark.virtual_time
@pytest.mark.async_timeout(20)
async def test_cancel_in_the_accept_phase_tells_the_pods_that_accepted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(modeller_module, "TELL_PODS_SECONDS", 0.5)

    async def body(modeller: Modeller, pods: dict[str, Scripted]) -> Any:
        run = asyncio.create_task(modeller.run(Fault("ok"), ["pod-a", "pod-silent"]))
        accepted_and_asked = (pods["pod-a"].saw(MessageType.JOB_REQUEST),)
        accepted_and_asked += (pods["pod-silent"].saw(MessageType.JOB_REQUEST),)
        return (*await cancel_when(modeller, run, *accepted_and_asked), pods)

    (cancellation,), seconds, pods = await federation(
        {"pod-a": {}, "pod-silent": {"answer": None, "ack": False}}, body
    )
    assert list(cancellation.acknowledged) == ["pod-a"]
    assert cancellation.acknowledged["pod-a"].reason is CANCELLED
    # a pod that may hold the task but says nothing is waited for, boundedly
    assert cancellation.unanswered == ["pod-silent"]
    assert seconds == pytest.approx(0.5), "the silent pod is waited for TELL_PODS_SECONDS"
    assert pods["pod-silent"].seen == [MessageType.JOB_REQUEST, MessageType.TASK_CANCEL]
    assert pods["pod-a"].seen == [MessageType.JOB_REQUEST, MessageType.TASK_CANCEL]


@pytest.mark.virtual_time
@pytest.mark.async_timeout(20)
async def test_a_rejection_read_before_the_cancel_is_not_waited_for() -> None:
    """A pod whose JOB_REJECT the accept phase had read holds nothing: no 5 s wait for it."""

    async def body(modeller: Modeller, pods: dict[str, Scripted]) -> Any:
        run = asyncio.create_task(
            modeller.run(Fault("ok"), ["pod-a", "pod-no", "pod-late"], require_all=False)
        )
        asked = [pods[name].saw(MessageType.JOB_REQUEST) for name in pods]
        await asyncio.gather(*(event.wait() for event in asked))
        await asyncio.sleep(0.2)  # the accept and the rejection reach the modeller
        return (*await cancel_when(modeller, run), pods)

    (cancellation,), seconds, pods = await federation(
        {
            "pod-a": {},
            "pod-no": {"answer": MessageType.JOB_REJECT, "ack": False},
            "pod-late": {"answer": None},  # answers only the cancel
        },
        body,
    )
    assert sorted(cancellation.acknowledged) == ["pod-a", "pod-late"]
    assert cancellation.unanswered == []
    assert seconds == 0
    assert pods["pod-no"].seen == [MessageType.JOB_REQUEST, MessageType.TASK_CANCEL]


@pytest.mark.virtual_time
@pytest.mark.async_timeout(20)
async def test_cancel_while_the_request_goes_out_tells_the_pods_already_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(modeller_module, "TELL_PODS_SECONDS", 0.5)

    async def body(modeller: Modeller, pods: dict[str, Scripted]) -> Any:
        mailbox = modeller._router.mailbox
        assert isinstance(mailbox, GatedMailbox)
        run = asyncio.create_task(modeller.run(Fault("ok"), ["pod-a", "pod-b", "pod-c"]))
        return (*await cancel_when(modeller, run, mailbox.held), pods)

    (cancellation,), _, pods = await federation(
        {"pod-a": {}, "pod-b": {"ack": False}, "pod-c": {}}, body, gate="pod-b"
    )
    assert list(cancellation.acknowledged) == ["pod-a"]
    # pod-b's request was on its way: it may hold the task, so it is told (it never got
    # the request, so it has nothing to answer); pod-c was never asked
    assert cancellation.unanswered == ["pod-b"]
    assert pods["pod-a"].seen == [MessageType.JOB_REQUEST, MessageType.TASK_CANCEL]
    assert pods["pod-b"].seen == [MessageType.TASK_CANCEL]
    assert pods["pod-c"].seen == []


@pytest.mark.virtual_time
@pytest.mark.async_timeout(20)
async def test_plain_task_cancellation_tells_the_pods_too() -> None:
    async def body(modeller: Modeller, pods: dict[str, Scripted]) -> Any:
        run = asyncio.create_task(modeller.run(Fault("sleep"), ["pod-a"]))
        await pods["pod-a"].saw(MessageType.INSTRUCTION).wait()
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        return pods["pod-a"].seen, modeller.running_tasks()

    seen, running = await federation({"pod-a": {}}, body)
    assert seen[-1] is MessageType.TASK_CANCEL
    assert running == []


@pytest.mark.virtual_time
@pytest.mark.async_timeout(20)
async def test_cancel_of_an_unknown_or_finished_task_returns_nothing() -> None:
    async def body(modeller: Modeller, pods: dict[str, Scripted]) -> Any:
        return await modeller.cancel("no-such-task"), await modeller.cancel()

    assert await federation({"pod-a": {}}, body) == ([], [])
