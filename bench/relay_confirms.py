"""Batched (pipelined) publisher confirms vs one confirm at a time, same run, same code.

    python bench/relay_confirms.py [--url amqp://guest:guest@127.0.0.1:5672//]
                                   [--messages 5000] [--batch 500] [--single 1000]

Both modes go through saga.adapters.rabbitmq.AmqpPublisher onto a quorum queue with
persistent, mandatory messages: "batched" hands it `--batch` rows at a time (all
published, then all confirms awaited), "one at a time" hands it one row per call
(publish, await its confirm, next). The queues are created for the run and
deleted after.
"""

from __future__ import annotations

import argparse
import time
import uuid

from kombu import Connection

from saga.adapters.rabbitmq import AmqpPublisher, Topology
from saga.ports.broker import PendingMessage


def rows(count: int) -> list[PendingMessage]:
    out = []
    for i in range(count):
        saga_id = str(uuid.uuid4())
        message_id = str(uuid.uuid4())
        body = {
            "message_id": message_id,
            "saga_id": saga_id,
            "saga": "order-payment",
            "version": 1,
            "step": "reserve_funds",
            "attempt": 1,
            "phase": "do",
        }
        out.append(PendingMessage(i + 1, message_id, saga_id, body))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672//")
    parser.add_argument("--messages", type=int, default=5000, help="messages sent batched")
    parser.add_argument("--batch", type=int, default=500, help="rows per batch")
    parser.add_argument("--single", type=int, default=1000, help="messages sent one at a time")
    args = parser.parse_args()

    name = f"bench.{uuid.uuid4().hex[:8]}"
    topology = Topology(name + ".steps", name + ".steps", name + ".dlq", name + ".dlq")
    publisher = AmqpPublisher(args.url, topology)
    try:
        publisher.connect()
        publisher.publish_batch(rows(50))  # warm-up: connection, queue leader, JIT-free paths

        batched = rows(args.messages)
        start = time.perf_counter()
        for i in range(0, len(batched), args.batch):
            publisher.publish_batch(batched[i : i + args.batch])
        batched_rate = len(batched) / (time.perf_counter() - start)

        single = rows(args.single)
        start = time.perf_counter()
        for row in single:
            publisher.publish_batch([row])
        single_rate = len(single) / (time.perf_counter() - start)
    finally:
        publisher.close()
        with Connection(args.url) as connection:
            channel = connection.channel()
            for queue in (topology.step_queue, topology.dead_letter_queue):
                channel.queue_delete(queue)
                channel.exchange_delete(queue)
            channel.close()

    print(f"batched confirms ({args.batch}/batch): {batched_rate:10.0f} messages/s")
    print(f"one confirm at a time:       {single_rate:10.0f} messages/s")
    print(f"ratio:                       {batched_rate / single_rate:10.1f}x")


if __name__ == "__main__":
    main()
