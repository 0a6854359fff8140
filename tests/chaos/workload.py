"""A chaos run's workload: sagas through the HTTP API (resent on purpose, or while a
server is down) and poison messages on the step queue."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from kombu import Connection, Producer

from saga.adapters.rabbitmq import Topology
from saga.client import SagaClient, SagaClientError
from saga.config import Settings
from tests.chaos.faults import Injector
from tests.chaos.plan import ChaosConfig, SagaPlan
from tests.chaos.progress import Progress
from tests.support.broker_messages import poison_cases


@dataclass
class Accepted:
    plan: SagaPlan
    saga_id: str


@dataclass
class WorkloadResult:
    accepted: dict[str, Accepted] = field(default_factory=dict)  # saga id -> plan
    refused: list[str] = field(default_factory=list)  # keys never accepted
    requests: int = 0  # enqueue calls made (resends included)
    http_attempts: int = 0  # HTTP requests sent (client retries included)
    resends: int = 0
    resend_mismatch: list[str] = field(default_factory=list)
    retried_after_error: int = 0
    poison: list[bytes] = field(default_factory=list)
    seconds: float = 0.0


def run_workload(
    plans: list[SagaPlan],
    poison_at: Mapping[int, str],
    client: SagaClient,
    progress: Progress,
    settings: Settings,
    config: ChaosConfig,
    injector: Injector | None = None,
) -> WorkloadResult:
    result = WorkloadResult()
    started = time.monotonic()
    hold = config.held_per_fault() if injector is not None else 0
    for plan in plans:
        # Keep `hold` sagas back for each outage not started yet (see ChaosConfig).
        while (
            injector is not None
            and hold
            and plan.index >= len(plans) - hold * (injector.outages - injector.outages_started)
            and not injector.finished.wait(0.1)
        ):
            pass
        if plan.index in poison_at:
            result.poison.append(publish_poison(settings, poison_at[plan.index]))
        # Keep at most `window` sagas in flight: the load lasts as long as the run.
        # While the counts cannot be read (PostgreSQL down) requests go on, as a
        # service's would: the API refuses them and they are retried.
        while (
            len(result.accepted) - progress.terminal >= config.window
            and time.monotonic() - progress.read_at < 2.0
        ):
            time.sleep(0.1)
        saga_id = _enqueue(client, plan, result, config)
        if saga_id is None:
            result.refused.append(plan.key)
            continue
        result.accepted[saga_id] = Accepted(plan, saga_id)
        if plan.resend:
            result.resends += 1
            again = _enqueue(client, plan, result, config)
            if again != saga_id:
                result.resend_mismatch.append(f"{plan.key}: {saga_id} then {again}")
        if (plan.index + 1) % 250 == 0:
            config.say(
                f"[load] {plan.index + 1} accepted, {progress.terminal} terminal "
                f"({dict(progress.statuses)})"
            )
    result.http_attempts = client.attempts
    result.seconds = time.monotonic() - started
    return result


def _enqueue(
    client: SagaClient, plan: SagaPlan, result: WorkloadResult, config: ChaosConfig
) -> str | None:
    """The saga's id; the request is retried with the same key while the service is
    down (SagaClient retries a few times itself; this outlasts a server restart)."""
    deadline = time.monotonic() + config.enqueue_timeout
    while True:
        result.requests += 1
        try:
            return client.enqueue(plan.saga, plan.payload(), idempotency_key=plan.key)
        except SagaClientError as exc:
            if (exc.status or 503) < 500 or time.monotonic() > deadline:
                config.say(f"[load] {plan.key} refused: {exc}")
                return None
            result.retried_after_error += 1
            time.sleep(1.0)


def publish_poison(settings: Settings, case: str) -> bytes:
    """Publish one poison message onto the step queue (retried while RabbitMQ is down)."""
    args, _ = poison_cases(str(uuid.uuid4()))[case]
    topology = Topology.from_settings(settings)
    deadline = time.monotonic() + 120
    while True:
        try:
            with Connection(settings.broker_url, connect_timeout=5) as connection:
                topology.declare_kombu(connection)
                producer = Producer(connection.default_channel)
                producer.publish(
                    args["body"],
                    exchange=topology.kombu_step_exchange(),
                    routing_key=topology.step_routing_key,
                    headers=args["headers"],
                    content_type="application/json",
                    content_encoding="utf-8",
                )
            body: bytes = args["body"]
            return body
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)
