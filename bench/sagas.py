"""Saga definitions used only by the benchmarks, and the bench-only timing hook.

`bench-3` and `bench-10`: N local steps, each one real PostgreSQL write (a row
in `order_payment_events`, the example service's table, same as the naive
Celery baseline writes). `bench-chain`: one chain step (sagafacts
RecordPayment) and nothing else.

Timing hook: when BENCH_TIMING_DIR is set in a worker's environment, every
task's Celery `task_prerun`/`task_postrun` times and the step function's own
start/end are appended as JSON lines to `<dir>/t-<pid>.jsonl` (wall clock,
`time.time()`), one line per task. The hook lives here, in the bench's
definitions module, which each worker process imports after the fork; product
code is not touched.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import insert

from saga.core.definitions import ChainCall, Registry, SagaDefinition, Step, StepContext, StepKind
from saga.core.retry import RetryPolicy
from saga.examples.order_payment_tables import order_payment_events


class BenchInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    order_id: str = Field(min_length=1, max_length=64)
    amount_cents: int = Field(gt=0)
    currency: str = "EUR"
    customer_id: str = "bench"


# -- timing hook ------------------------------------------------------------------

_TIMING_DIR = os.environ.get("BENCH_TIMING_DIR", "")
_fn_times: dict[str, tuple[float, float]] = {}
_buffer: list[str] = []
_last_flush = 0.0
# The chain executor runs tasks on threads: the buffer and the file are shared.
_lock = threading.Lock()


def _flush(force: bool = False) -> None:
    global _last_flush
    with _lock:
        now = time.time()
        if not _buffer or (not force and now - _last_flush < 0.5):
            return
        with open(os.path.join(_TIMING_DIR, f"t-{os.getpid()}.jsonl"), "a") as fh:
            fh.write("".join(_buffer))
        _buffer.clear()
        _last_flush = now


def _install_hook() -> None:
    from celery import signals

    starts: dict[str, float] = {}

    @signals.task_prerun.connect(weak=False)
    def _prerun(task_id: str = "", **_: Any) -> None:
        starts[task_id] = time.time()

    @signals.task_postrun.connect(weak=False)
    def _postrun(task_id: str = "", args: Any = (), retval: Any = None, **_: Any) -> None:
        end = time.time()
        body: Mapping[str, Any] = args[0] if args and isinstance(args[0], Mapping) else {}
        saga_id, step = str(body.get("saga_id", "")), str(body.get("step", ""))
        fn = _fn_times.pop(f"{saga_id}/{step}", None)
        record = {
            "pid": os.getpid(),
            "saga_id": saga_id,
            "step": step,
            "phase": body.get("phase"),
            # A task that ends in a Celery Retry returns the exception: its name.
            "outcome": retval if isinstance(retval, str | None) else type(retval).__name__,
            "pre": starts.pop(task_id, end),
            "post": end,
            "fn0": fn[0] if fn else None,
            "fn1": fn[1] if fn else None,
        }
        with _lock:
            _buffer.append(json.dumps(record) + "\n")
        _flush()

    @signals.worker_process_shutdown.connect(weak=False)
    def _shutdown(**_: Any) -> None:
        _flush(force=True)

    # A threads pool has no pool processes: the worker itself flushes at its end.
    signals.worker_shutdown.connect(_shutdown, weak=False)


if _TIMING_DIR:
    _install_hook()


# -- steps ------------------------------------------------------------------------


def write(ctx: StepContext) -> None:
    started = time.time()
    payment = ctx.input
    assert isinstance(payment, BenchInput)
    ctx.session.execute(
        insert(order_payment_events).values(
            saga_id=ctx.saga_id,
            order_id=payment.order_id,
            step=ctx.step,
            action="write",
            amount_cents=payment.amount_cents,
        )
    )
    if _TIMING_DIR:
        _fn_times[f"{ctx.saga_id}/{ctx.step}"] = (started, time.time())


def undo(ctx: StepContext) -> None:
    write(ctx)


def local_saga(steps: int) -> SagaDefinition:
    return SagaDefinition(
        name=f"bench-{steps}",
        version=1,
        input_model=BenchInput,
        steps=tuple(
            Step(f"s{i + 1}", write, compensation=undo, retry=RetryPolicy(max_attempts=3))
            for i in range(steps)
        ),
    )


def _payment_args(ctx: StepContext) -> list[str]:
    payment = ctx.input
    assert isinstance(payment, BenchInput)
    return [payment.order_id, str(payment.amount_cents), payment.currency, payment.customer_id]


chain_saga = SagaDefinition(
    name="bench-chain",
    version=1,
    input_model=BenchInput,
    steps=(
        Step(
            "record_on_ledger",
            kind=StepKind.CHAIN,
            chain=ChainCall("sagafacts", "RecordPayment", _payment_args),
            retry=RetryPolicy(max_attempts=5, initial_backoff=0.5, max_backoff=5.0),
        ),
    ),
)


def register(registry: Registry) -> Registry:
    registry.add(local_saga(3))
    registry.add(local_saga(10))
    registry.add(chain_saga)
    return registry
