"""Hub throughput and latency, next to raw loopback TCP bandwidth measured in the same run.

1. A modeller sends a ``--model-mb`` model to ``--pods`` pods through a hub (a separate
   process, TLS on, every message signed and end-to-end encrypted) and gets each pod's
   update of the same size back: ``round_trip_s`` and ``throughput_mb_s`` (all bytes moved
   through the hub, both ways, per second).
2. The same payload over a plain loopback TCP socket: ``loopback_mb_s``.
3. ``--connected-pods`` pods connected at once exchange small messages with the modeller
   (ping → pong): ``small_msgs_per_s`` (both directions) and p50/p99 round-trip latency.

Prints one JSON line. Usage: ``python benchmarks/hub_throughput.py [--model-mb 100]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from fedloom._cluster import LocalCluster, PodSpec
from fedloom.transport._grpc_mailbox import GrpcMailbox
from fedloom.wire import Message, MessageType

MB = 1 << 20


def loopback_mb_s(payload: bytes, repeats: int = 3) -> float:
    """Bandwidth of one plain TCP connection on 127.0.0.1 carrying ``payload``."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    received: list[int] = []

    def sink() -> None:
        connection, _ = server.accept()
        with connection:
            total = 0
            buffer = bytearray(4 * MB)
            while count := connection.recv_into(buffer):
                total += count
            received.append(total)

    thread = threading.Thread(target=sink)
    thread.start()
    with socket.create_connection(("127.0.0.1", port)) as client:
        started = time.perf_counter()
        for _ in range(repeats):
            client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        thread.join()
        seconds = time.perf_counter() - started
    server.close()
    assert received == [len(payload) * repeats]
    return len(payload) * repeats / MB / seconds


async def connect_pods(cluster: LocalCluster, names: list[str]) -> list[GrpcMailbox]:
    mailboxes = []
    for name in names:
        mailbox = GrpcMailbox(
            cluster.identity(name),
            cluster.address,
            tls=cluster.client_tls(),
            insecure=not cluster.tls,
            accepts=[cluster.modeller],
        )
        mailboxes.append(await mailbox.connect(timeout=60))
    return mailboxes


async def echo(pod: GrpcMailbox, count: int, reply: MessageType) -> None:
    for _ in range(count):
        message = await pod.receive(timeout=600)
        await pod.send(
            Message(
                reply,
                "",
                message.sender,
                message.task_id,
                body=message.body,
                tensors=dict(message.tensors),
            )
        )


async def model_round_trip(cluster: LocalCluster, pods: list[GrpcMailbox], model_mb: int) -> float:
    modeller = await cluster.connect_modeller()
    model = {"weights": np.random.default_rng(0).random(model_mb * MB // 4, dtype=np.float32)}
    echoes = [asyncio.ensure_future(echo(pod, 1, MessageType.TRAINING_UPDATE)) for pod in pods]
    started = time.perf_counter()
    await asyncio.gather(  # as ModellerMailbox.broadcast does
        *(
            modeller.send(
                Message(MessageType.MODEL_PARAMETERS, "", pod.identity, "bench", tensors=model)
            )
            for pod in pods
        )
    )
    for _ in pods:
        update = await modeller.receive(timeout=600)
        assert update.tensors["weights"].nbytes == model["weights"].nbytes
    seconds = time.perf_counter() - started
    await asyncio.gather(*echoes)
    await modeller.close()
    return seconds


async def small_messages(
    cluster: LocalCluster, pods: list[GrpcMailbox], rounds: int
) -> tuple[float, list[float]]:
    """Each round the modeller pings every pod and collects the pongs as they come back
    (receiving runs alongside sending, so a latency is one message's round trip)."""
    modeller = await cluster.connect_modeller()
    echoes = [asyncio.ensure_future(echo(pod, rounds, MessageType.PROGRESS)) for pod in pods]
    latencies: list[float] = []
    sent_at: dict[tuple[str, str], float] = {}

    async def collect(count: int) -> None:
        for _ in range(count):
            reply = await modeller.receive(timeout=120)
            latencies.append(time.perf_counter() - sent_at[(reply.sender, reply.task_id)])

    started = time.perf_counter()
    for index in range(rounds):
        receiving = asyncio.ensure_future(collect(len(pods)))
        for pod in pods:
            sent_at[(pod.identity, f"t{index}")] = time.perf_counter()
            await modeller.send(
                Message(MessageType.INSTRUCTION, "", pod.identity, f"t{index}", body={"i": index})
            )
        await receiving
    seconds = time.perf_counter() - started
    await asyncio.gather(*echoes)
    await modeller.close()
    return 2 * rounds * len(pods) / seconds, latencies


async def main(args: argparse.Namespace) -> dict[str, object]:
    names = [f"pod-{i:03d}" for i in range(max(args.pods, args.connected_pods))]
    specs = {name: PodSpec(datasets={}) for name in names}
    with tempfile.TemporaryDirectory() as root:
        cluster = LocalCluster(Path(root), specs)
        await asyncio.to_thread(cluster.prepare)
        await cluster.start_hub()
        try:
            big_pods = await connect_pods(cluster, names[: args.pods])
            round_trip = await model_round_trip(cluster, big_pods, args.model_mb)
            for pod in big_pods:
                await pod.close()
            many = await connect_pods(cluster, names[: args.connected_pods])
            rate, latencies = await small_messages(cluster, many, args.small_rounds)
            for pod in many:
                await pod.close()
        finally:
            await cluster.stop()
    moved_mb = 2 * args.pods * args.model_mb
    quantiles = statistics.quantiles(latencies, n=100)
    return {
        "model_mb": args.model_mb,
        "pods": args.pods,
        "round_trip_s": round(round_trip, 3),
        "throughput_mb_s": round(moved_mb / round_trip, 1),
        "loopback_mb_s": round(loopback_mb_s(b"\0" * (args.model_mb * MB)), 1),
        "connected_pods": args.connected_pods,
        "small_msgs_per_s": round(rate, 1),
        "p50_ms": round(1000 * quantiles[49], 2),
        "p99_ms": round(1000 * quantiles[98], 2),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-mb", type=int, default=100)
    parser.add_argument("--pods", type=int, default=8)
    parser.add_argument("--connected-pods", type=int, default=200)
    parser.add_argument("--small-rounds", type=int, default=10)
    result = asyncio.run(main(parser.parse_args()))
    json.dump(result, sys.stdout)
    print()
