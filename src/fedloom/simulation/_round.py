"""One simulated round: admit client jobs, run them on the backend, fold in order.

Kept apart from the engine so the state of a round (who is admitted, running, waiting
to be folded, interrupted) lives in one small object that dies with the round.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from fedloom.errors import SimulationError
from fedloom.scheduler import Reservation, ResourceEstimate, ResourceLedger, TaskStatus
from fedloom.simulation._backend import Backend, ClientFailure, ClientResult, FailureKind
from fedloom.simulation._client import ClientJob
from fedloom.simulation._fold import FoldBuffers, OrderedFold
from fedloom.simulation._report import ClientRecord, RoundReport
from fedloom.strategies import Strategy

__all__ = ["RoundRules", "run_round"]


@dataclass(frozen=True)
class RoundRules:
    """How a round treats its jobs: admission estimate, OOM retries, time limit."""

    estimate: ResourceEstimate
    max_oom_retries: int = 3
    growth: float = 1.5
    timeout: float | None = None


ClientDone = Callable[[int, int, ClientResult], None]  # (done, total, result)


def run_round(
    round_index: int,
    clients: list[int],
    jobs: Mapping[int, ClientJob],
    flats: dict[str, torch.Tensor],
    *,
    backend: Backend,
    rules: RoundRules,
    ledger: ResourceLedger | None,
    stop: threading.Event,
    on_client: ClientDone | None = None,
    buffers: FoldBuffers | None = None,
    strategy: Strategy | None = None,
) -> RoundReport:
    """Run one round; on success ``flats`` holds the weighted mean of the updates.

    ``clients`` is the fold order (and the admission order: an update never waits in its
    slot for a client not yet admitted). ``buffers`` (the fold's float64 sums) are reused
    from round to round; ``strategy`` weighs the updates (default: sample counts).

    Raises:
        SimulationError: no client produced an update, a job can never be admitted, or
            the round ran past ``rules.timeout``.
    """
    state = _Round(round_index, clients, jobs, backend, rules, ledger, stop, on_client, buffers)
    state.strategy = strategy
    return state.run(flats)


class _Round:
    def __init__(  # noqa: PLR0917 - private, called once from run_round
        self,
        round_index: int,
        clients: list[int],
        jobs: Mapping[int, ClientJob],
        backend: Backend,
        rules: RoundRules,
        ledger: ResourceLedger | None,
        stop: threading.Event,
        on_client: ClientDone | None,
        buffers: FoldBuffers | None,
    ) -> None:
        self.buffers = buffers
        self.strategy: Strategy | None = None
        self.index = round_index
        self.clients = clients
        self.backend = backend
        self.rules = rules
        self.ledger = ledger
        self.stop = stop
        self.on_client = on_client
        self.fold: OrderedFold | None = None
        self.records = {c: ClientRecord(client=c) for c in clients}
        self.admission: deque[ClientJob] = deque(jobs[c] for c in clients)
        self.estimates = {c: rules.estimate for c in clients}
        self.reservations: dict[int, Reservation] = {}
        self.holding: dict[int, ClientResult] = {}
        self.outstanding = 0
        self.done = 0
        self.stopped = False
        self.began = time.perf_counter()

    def run(self, flats: dict[str, torch.Tensor]) -> RoundReport:
        self.backend.broadcast(flats)
        self._admit()  # workers start before the fold's buffers are even touched
        self.fold = fold = OrderedFold(flats, self.clients, buffers=self.buffers)
        while not fold.done:
            if self.outstanding == 0:
                if self.stop.is_set() or not self.admission:
                    break
                raise SimulationError(
                    f"round {self.index}: client {self.admission[0].client} can not be "
                    "admitted even with nothing else running (its estimate exceeds the budget)"
                )
            try:
                result = self.backend.next_result(timeout=self._time_left())
            except TimeoutError as exc:
                raise SimulationError(
                    f"round {self.index} took longer than {self.rules.timeout} s"
                ) from exc
            self.outstanding -= 1
            self._settle(result.job.client)
            if result.failure is None:
                self._finished(result)
            else:
                self._failed(result)
            self._admit()
        if not fold.done:  # stopped before every client was admitted
            self.stopped = True
        report = RoundReport(
            self.index,
            list(self.records.values()),
            time.perf_counter() - self.began,
            stopped=self.stopped,
        )
        if self.stopped:
            for result in self.holding.values():
                self.backend.release(result)
            return report
        if not fold.folded:
            raise SimulationError(
                f"round {self.index}: no client produced an update; {report.failure_summary()}"
            )
        fold.result_into(flats)
        report.seconds = time.perf_counter() - self.began
        return report

    def _finished(self, result: ClientResult) -> None:
        assert self.fold is not None and result.outcome is not None and result.flats is not None
        client = result.job.client
        self.records[client].finish(result.outcome, result.worker)
        self.holding[client] = result
        outcome = result.outcome
        weight = (
            float(outcome.num_samples)
            if self.strategy is None
            else self.strategy.fold_weight(outcome.num_samples, outcome.aux)
        )
        self._release(self.fold.offer(client, result.flats, weight))
        self.done += 1
        if self.on_client is not None:
            self.on_client(self.done, len(self.clients), result)

    def _failed(self, result: ClientResult) -> None:
        assert self.fold is not None and result.failure is not None
        client, failure = result.job.client, result.failure
        record = self.records[client]
        if failure.kind is FailureKind.STOPPED or self.stop.is_set():
            self.stopped = True
            record.status = TaskStatus.EXITED
            self.fold.skip(client)
            return
        if failure.kind is FailureKind.OUT_OF_MEMORY and (
            len(record.interrupts) < self.rules.max_oom_retries
        ):
            record.interrupt(self.estimates[client], failure)
            self.estimates[client] = self.estimates[client].raised(self.rules.growth)
            self.admission.appendleft(result.job)
            return
        record.fail(failure)
        self._release(self.fold.skip(client))
        self.done += 1
        if self.on_client is not None:
            self.on_client(self.done, len(self.clients), result)

    def _release(self, done: list[int]) -> None:
        """Give back the slots of folded updates; record the ones the fold refused."""
        assert self.fold is not None
        for client in done:
            self.backend.release(self.holding.pop(client))
            rejection = self.fold.rejected.get(client)
            if rejection is not None:
                self.records[client].fail(ClientFailure.rejected(rejection))
                self.records[client].outcome = None  # left out of the metrics too

    def _admit(self) -> None:
        ready: list[ClientJob] = []
        while self.admission and not self.stop.is_set():
            job = self.admission[0]
            device = None
            if self.ledger is not None:
                reservation = self.ledger.try_reserve(self.estimates[job.client])
                if reservation is None:
                    break
                self.reservations[job.client] = reservation
                device = None if reservation.device == "cpu" else reservation.device
            self.admission.popleft()
            ready.append(ClientJob(job.client, job.round, job.overrides, device))
            record = self.records[job.client]
            record.status = TaskStatus.TRAINING
            record.attempts += 1
        if ready:
            self.outstanding += len(ready)
            self.backend.submit(ready)

    def _settle(self, client: int) -> None:
        reservation = self.reservations.pop(client, None)
        if reservation is not None and self.ledger is not None:
            self.ledger.release(reservation)

    def _time_left(self) -> float | None:
        if self.rules.timeout is None:
            return None
        left = self.rules.timeout - (time.perf_counter() - self.began)
        if left <= 0:
            raise SimulationError(f"round {self.index} took longer than {self.rules.timeout} s")
        return left
