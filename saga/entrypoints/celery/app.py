"""The Celery app that runs saga steps.

Nothing is created at import: `create_celery_app` builds the app, and each
worker process builds its orchestrator (and so its database engine) once, after
the fork, from the factory it was given.

What makes a kill safe:
- late acks and reject-on-worker-lost: a message is acked only after the step's
  transaction committed; a worker killed before that leaves it to be redelivered
  (the inbox turns a redelivery of a committed step into a no-op);
- prefetch from settings (1): a dying process holds at most that many messages;
- persistent messages on quorum queues, publisher confirms on every publish
  (retries, dead letters), per-consumer QoS (quorum queues refuse global QoS).

What happens to a message:
- it ran (or was a duplicate or stale): acked; the task ends SUCCESS, FAILURE,
  RETRY or SKIPPED as the steps it ran went (saga.entrypoints.celery.step_states), so Flower
  shows a failed step as failed;
- it can never run (malformed, unknown saga/step/version, or an unexpected
  error): published to the dead-letter queue with the reason, then acked;
- the database is unreachable: the task sleeps a capped backoff, then Celery
  publishes a copy (same task id, `retries` + 1) and acks the original. Not a
  requeue: a quorum queue counts requeues against its delivery limit and would
  dead-letter a valid message during a long outage; a fresh copy starts at zero.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from celery import Celery, Task, signals
from celery.exceptions import Retry

from saga.adapters.prometheus import multiprocess
from saga.adapters.rabbitmq import embedded
from saga.adapters.rabbitmq.celery_message import STEP_TASK
from saga.adapters.rabbitmq.publishers import is_amqp_url
from saga.adapters.rabbitmq.topology import Topology, TopologyMismatch
from saga.config import Settings
from saga.core.errors import OrchestrationError
from saga.core.step_message import MalformedMessage, StepMessage
from saga.core.step_report import Setback
from saga.entrypoints.celery.beat import register_sweep_task
from saga.entrypoints.celery.dead_letter import publish_dead_letter, task_body
from saga.entrypoints.celery.step_states import StepFailedError, end_task
from saga.failpoints import failpoint
from saga.ports.store import StoreUnavailable

log = logging.getLogger("saga.worker")

# Database retry backoff inside the task: short enough that a recovered
# database is noticed quickly, long enough not to spin on a dead one.
RETRY_BASE = 0.5
RETRY_MAX = 10.0


class StepHandler(Protocol):
    """What a task needs from the orchestrator (saga.app.orchestrator.Orchestrator)."""

    def handle_reporting(
        self, message: StepMessage, *, inline: int = 0
    ) -> tuple[Any, Sequence[Setback]]: ...


OrchestratorFactory = Callable[[], StepHandler]


def default_transient_errors() -> tuple[type[BaseException], ...]:
    from sqlalchemy import exc as sa_exc

    return (
        StoreUnavailable,
        sa_exc.OperationalError,
        sa_exc.InterfaceError,
        sa_exc.DisconnectionError,
        sa_exc.TimeoutError,
    )


def _is_transient(error: BaseException, transient: tuple[type[BaseException], ...]) -> bool:
    if isinstance(error, transient):
        return True
    from sqlalchemy import exc as sa_exc

    return isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated


class OrchestratorHolder:
    """One orchestrator per worker process, built on first use after the fork."""

    def __init__(self, factory: OrchestratorFactory) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._orchestrator: StepHandler | None = None

    def get(self) -> StepHandler:
        if self._orchestrator is None:
            with self._lock:
                if self._orchestrator is None:
                    self._orchestrator = self._factory()
        return self._orchestrator

    def reset(self) -> None:
        # A child must not use engine connections inherited from its parent.
        self._orchestrator = None


class SagaCelery(Celery):
    saga_settings: Settings
    saga_topology: Topology
    saga_orchestrator: OrchestratorHolder
    saga_transient_errors: tuple[type[BaseException], ...]


def celery_config(settings: Settings, topology: Topology) -> dict[str, Any]:
    step_queue = topology.kombu_step_queue()
    chain_queue = topology.kombu_chain_queue()
    config: dict[str, Any] = {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        # Which of these a worker consumes is its --queues (worker_argv): the step
        # queue for `saga worker`, the chain queue for `saga chain-executor`.
        "task_queues": [step_queue] if chain_queue is None else [step_queue, chain_queue],
        "task_default_queue": topology.step_queue,
        "task_default_exchange": topology.step_exchange,
        "task_default_exchange_type": "direct",
        "task_default_routing_key": topology.step_routing_key,
        "task_routes": {STEP_TASK: {"queue": topology.step_queue}},
        "task_create_missing_queues": False,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_backend": None,
        # No results are kept, so nothing expires; and with an expiry set, beat adds
        # Celery's daily `celery.backend_cleanup`, which a saga worker dead-letters.
        "result_expires": None,
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_default_delivery_mode": "persistent",
        "task_track_started": True,
        "worker_prefetch_multiplier": settings.worker_prefetch,
        "worker_concurrency": settings.worker_concurrency,
        "worker_detect_quorum_queues": True,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_consumer": "saga.entrypoints.celery.consumer:SagaConsumer",
        # Cancelling would kill a step mid-transaction for nothing: its message is
        # redelivered anyway and the inbox sorts out the duplicate.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_hijack_root_logger": False,
    }
    if is_amqp_url(settings.broker_url):
        config["broker_transport_options"] = {"confirm_publish": True}
    return config


def create_celery_app(
    settings: Settings,
    orchestrator_factory: OrchestratorFactory,
    *,
    transient_errors: Sequence[type[BaseException]] = (),
    main: str = "saga",
) -> SagaCelery:
    """Build the app; `orchestrator_factory` is called once per worker process.

    `transient_errors` are the store's "database unreachable" errors (on top of
    StoreUnavailable and SQLAlchemy's connection errors); a step that raises one
    is retried, never dead-lettered.
    """
    embedded.register()
    topology = Topology.from_settings(settings)
    app = SagaCelery(main, set_as_current=False)
    app.config_from_object(celery_config(settings, topology))
    app.saga_settings = settings
    app.saga_topology = topology
    app.saga_orchestrator = OrchestratorHolder(orchestrator_factory)
    app.saga_transient_errors = (*default_transient_errors(), *transient_errors)

    @signals.worker_process_init.connect(weak=False)
    def _build_orchestrator(**_: Any) -> None:
        app.saga_orchestrator.reset()
        try:
            app.saga_orchestrator.get()
        except Exception:
            # The first task builds it again and treats a failure as transient.
            log.exception("building the orchestrator failed; retrying at the first task")

    signals.worker_process_shutdown.connect(multiprocess.on_worker_process_shutdown, weak=False)
    register_sweep_task(app)

    @app.task(
        name=STEP_TASK,
        bind=True,
        acks_late=True,
        max_retries=None,
        # A failed step is an outcome, recorded on the saga: logged without a traceback.
        throws=(StepFailedError,),
        Request="saga.entrypoints.celery.step_states:StepRequest",
    )
    def run_step(self: Task, *args: Any, **kwargs: Any) -> str:
        return _run_step(app, self, args, kwargs)

    return app


def _run_step(app: SagaCelery, task: Task, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    request = task.request
    try:
        if len(args) != 1 or kwargs:
            raise MalformedMessage("expects exactly one positional argument, the step message")
        message = StepMessage.from_body(args[0])
        if message.message_id != request.id:
            raise MalformedMessage("task id does not match the step message message_id")
        outcome, setbacks = app.saga_orchestrator.get().handle_reporting(
            message, inline=app.saga_settings.worker_inline_steps
        )
    except Retry:
        raise
    except Exception as exc:
        if _is_transient(exc, app.saga_transient_errors):
            return _retry_later(task, exc)
        if isinstance(exc, OrchestrationError | ValueError):  # MalformedMessage is a ValueError
            reason, error = str(exc), type(exc).__name__
        else:
            # Kept, not lost: an operator can republish it once the bug is fixed.
            reason, error = f"unexpected error: {type(exc).__name__}: {exc}", type(exc).__name__
            log.exception("step task raised an unexpected error", extra={"task_id": request.id})
        try:
            _dead_letter_request(app, request, args, kwargs, reason, error)
        except Exception as publish_error:
            return _retry_later(task, publish_error)
        return "dead-lettered"
    value = getattr(outcome, "value", outcome)
    failpoint("worker.before_ack", message.step, message.phase, value)
    log.info(
        "step message handled",
        extra={
            "task_id": request.id,
            "saga_id": message.saga_id,
            "step": message.step,
            "phase": str(message.phase),
            "attempt": message.attempt,
            "outcome": str(value),
            "setbacks": len(setbacks),
        },
    )
    return end_task(message, str(value), setbacks)


def _retry_later(task: Task, exc: BaseException) -> Any:
    retries = int(task.request.retries or 0)
    delay = min(RETRY_MAX, RETRY_BASE * 2 ** min(retries, 10)) * random.uniform(0.5, 1.0)
    log.warning(
        "store unavailable (%s); step message %s retried in %.1fs",
        type(exc).__name__,
        task.request.id,
        delay,
        extra={
            "task_id": task.request.id,
            "retries": retries,
            "retry_in": round(delay, 2),
            "error": f"{type(exc).__name__}: {exc}",
        },
    )
    time.sleep(delay)
    # countdown=0: no ETA, so the copy is consumable at once (the wait happened
    # above) and no delayed-delivery machinery is needed on quorum queues.
    raise task.retry(exc=exc, countdown=0, max_retries=None)


def _dead_letter_request(
    app: SagaCelery,
    request: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    reason: str,
    error: str,
) -> None:
    delivery = request.delivery_info or {}
    headers = {
        "lang": "py",
        "task": request.task,
        "shadow": getattr(request, "shadow", None),
        "id": request.id,
        "root_id": request.root_id,
        "parent_id": request.parent_id,
        "group": request.group,
        "retries": request.retries,
        "argsrepr": getattr(request, "argsrepr", None),
        "kwargsrepr": getattr(request, "kwargsrepr", None),
        "origin": request.origin,
    }
    publish_dead_letter(
        app,
        app.saga_topology,
        body=task_body(args, kwargs),
        headers={k: v for k, v in headers.items() if v is not None},
        content_type="application/json",
        content_encoding="utf-8",
        reason=reason,
        error=error,
        exchange=delivery.get("exchange"),
        routing_key=delivery.get("routing_key"),
        message_id=request.id,
    )


@dataclass(frozen=True)
class Consumes:
    """What one worker command consumes, and with how many steps at once."""

    queue: str
    concurrency: int
    prefetch: int

    @classmethod
    def steps(cls, settings: Settings) -> Consumes:
        """`saga worker`: the step queue (chain steps too unless SAGA_CHAIN_QUEUE is set)."""
        return cls(settings.step_queue, settings.worker_concurrency, settings.worker_prefetch)

    @classmethod
    def chain_steps(cls, settings: Settings) -> Consumes:
        """`saga chain-executor`: the chain queue, SAGA_CHAIN_IN_FLIGHT threads, one
        message prefetched per thread (a dying process holds no more than it runs)."""
        return cls(settings.chain_queue, settings.chain_in_flight, 1)


def worker_argv(
    settings: Settings,
    *,
    hostname: str | None = None,
    pool: str | None = None,
    consumes: Consumes | None = None,
) -> list[str]:
    consumes = consumes or Consumes.steps(settings)
    argv = [
        "worker",
        f"--queues={consumes.queue}",
        f"--concurrency={consumes.concurrency}",
        f"--prefetch-multiplier={consumes.prefetch}",
        f"--loglevel={settings.log_level}",
        "--without-mingle",
        "--without-gossip",
    ]
    if hostname:
        argv.append(f"--hostname={hostname}")
    if pool:
        argv.append(f"--pool={pool}")
    return argv


def declare_before_consuming(settings: Settings, topology: Topology) -> None:
    """Declare the queues once before Celery does.

    Celery's own declaration of a queue that exists with another type (classic
    where SAGA_QUEUE_TYPE=quorum) logs a bare PRECONDITION_FAILED and the worker
    exits 0; declared here first, it is a TopologyMismatch saying what to do. A
    broker that does not answer yet is left to Celery's connection retries.
    """
    if not is_amqp_url(settings.broker_url):
        return
    from kombu import Connection

    try:
        with Connection(settings.broker_url, connect_timeout=5) as connection:
            connection.ensure_connection(max_retries=1)
            topology.declare_kombu(connection)
    except TopologyMismatch:
        raise
    except Exception as exc:
        log.warning("broker not reachable before the worker starts (%r); Celery keeps trying", exc)


def run_worker(
    settings: Settings,
    orchestrator_factory: OrchestratorFactory,
    *,
    transient_errors: Sequence[type[BaseException]] = (),
    hostname: str | None = None,
    pool: str | None = None,
    consumes: Consumes | None = None,
) -> None:
    """Run a worker in this process until it is told to stop (blocks)."""
    with multiprocess.worker_endpoint(settings.metrics_port, settings.metrics_address):
        app = create_celery_app(settings, orchestrator_factory, transient_errors=transient_errors)
        try:
            declare_before_consuming(settings, app.saga_topology)
        except TopologyMismatch as exc:
            log.error("%s", exc)
            raise SystemExit(f"saga worker: {exc}") from None
        app.worker_main(worker_argv(settings, hostname=hostname, pool=pool, consumes=consumes))
