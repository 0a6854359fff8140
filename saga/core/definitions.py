"""Saga definitions: plain data, validated when declared.

Nothing here performs I/O. A local step's action receives a `StepContext` whose
`session` is whatever the store adapter passes (a SQLAlchemy session in practice);
the core never looks inside it.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import BaseModel

from saga.core.errors import DefinitionError, UnknownSaga
from saga.core.purpose import Purpose as Purpose
from saga.core.retry import RetryPolicy

_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,62}$")

# Every step message reads and rewrites the saga's state, which holds every step,
# so a saga costs O(steps^2) in the store: measured on SQLite, a 5,000-step saga
# took 0.16 s per step (over 13 minutes) and grew with each one. Thousands of
# steps is a design error (split the work into sagas), refused when declared.
MAX_STEPS = 200


class StepKind(StrEnum):
    LOCAL = "local"
    # Executed through the ledger port by saga.app.chain (prepare / persist / submit /
    # verify), never by running Python code inside the saga's transaction.
    CHAIN = "chain"


# The chaincode's idempotency keys: [A-Za-z0-9][A-Za-z0-9._:/@+=-]*, at most 256.
_CHAIN_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+=-]{0,255}$")


def chain_key(saga_id: str, step: str, purpose: Purpose | str) -> str:
    """The idempotency key of one chain step's effect or reversal.

    Derived, never stored or chosen at random: every worker on every host that
    retries the step computes the same key, so the chaincode can refuse a second
    effect for it and MVCC can invalidate a concurrent one.
    """
    key = f"{saga_id}/{step}/{Purpose(purpose)}"
    if not _CHAIN_KEY.match(key):
        raise ValueError(f"saga id {saga_id!r} cannot be part of a ledger idempotency key")
    return key


@dataclass(frozen=True)
class StepContext:
    """What a step's action or compensation is given."""

    saga_id: str
    saga_name: str
    step: str
    attempt: int
    input: BaseModel
    data: Mapping[str, Any]
    session: Any


StepFn = Callable[[StepContext], Mapping[str, Any] | None]


ArgsFn = Callable[[StepContext], list[str]]


@dataclass(frozen=True)
class ChainCall:
    """The ledger side of a chain step: chaincode, function and argument builders.

    The idempotency key is not part of what `args` builds: it is always the first
    chaincode argument, `chain_key(saga_id, step, "do")`. The reversal is called
    as `undo_function(undo_key, do_key, *undo_args(ctx))`, the shape of the
    sagafacts reversals (ReversePayment(idem_key, original_key, reason)).
    `ctx.session` is None for chain steps: the arguments come from the saga's
    input and data, not from the database.
    """

    chaincode: str
    function: str
    args: ArgsFn
    undo_function: str | None = None
    undo_args: ArgsFn | None = None
    # None: the deployment's channel (SAGA_FABRIC_CHANNEL).
    channel: str | None = None

    def function_for(self, purpose: Purpose | str) -> str:
        if Purpose(purpose) is Purpose.DO:
            return self.function
        if self.undo_function is None:
            raise ValueError(f"chain call {self.chaincode}.{self.function} has no undo_function")
        return self.undo_function

    def arguments(self, ctx: StepContext, purpose: Purpose | str) -> list[str]:
        """The full chaincode argument list, idempotency key(s) first."""
        do_key = chain_key(ctx.saga_id, ctx.step, Purpose.DO)
        if Purpose(purpose) is Purpose.DO:
            extra = self.args(ctx)
            head = [do_key]
        else:
            extra = self.undo_args(ctx) if self.undo_args is not None else []
            head = [chain_key(ctx.saga_id, ctx.step, Purpose.UNDO), do_key]
        if not isinstance(extra, list) or not all(isinstance(a, str) for a in extra):
            raise TypeError(
                f"the argument builder of chain step {ctx.step!r} must return a list of str, "
                f"got {extra!r}"
            )
        return [*head, *extra]


@dataclass(frozen=True)
class Step:
    name: str
    action: StepFn | None = None
    compensation: StepFn | None = None
    kind: StepKind = StepKind.LOCAL
    pivot: bool = False
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    compensation_retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(max_attempts=5))
    timeout: float = 30.0
    chain: ChainCall | None = None
    # The action (or compensation) has effects outside the step's session: a mail,
    # an HTTP call. A worker never runs such a step in one transaction with other
    # steps (see saga.app.steps): a fused run that fails is rolled back and run
    # again step by step, which would repeat an effect no rollback can take back.
    external: bool = False

    @property
    def fusable(self) -> bool:
        """May share one transaction with the local steps before and after it."""
        return self.kind is StepKind.LOCAL and not self.external

    @property
    def compensable(self) -> bool:
        if self.kind is StepKind.CHAIN:
            return self.chain is not None and self.chain.undo_function is not None
        return self.compensation is not None


@dataclass(frozen=True)
class SagaDefinition:
    name: str
    version: int
    input_model: type[BaseModel]
    steps: tuple[Step, ...]
    errors: tuple[type[BaseException], ...] = ()
    # Inputs are validated in pydantic's strict JSON mode: a caller's value must
    # be the JSON type the schema names. A saga fed by callers that send numbers
    # as strings may opt into pydantic's lax coercion here, knowingly.
    lax_input: bool = False
    pivot_index: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pivot_index", _validate(self))

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def index(self, name: str) -> int:
        for i, step in enumerate(self.steps):
            if step.name == name:
                return i
        raise KeyError(name)

    @property
    def key(self) -> tuple[str, int]:
        return (self.name, self.version)


def _fail(saga: SagaDefinition, message: str) -> DefinitionError:
    return DefinitionError(f"saga {saga.name!r} version {saga.version}: {message}")


def _validate(saga: SagaDefinition) -> int:
    """Check the definition; return the index of its pivot step (len(steps) if none)."""
    if not _NAME.match(saga.name):
        raise _fail(saga, "name must be lower-case letters, digits, '_', '.', '-' (max 63)")
    if saga.version < 1:
        raise _fail(saga, "version must be a positive integer")
    if not (isinstance(saga.input_model, type) and issubclass(saga.input_model, BaseModel)):
        raise _fail(saga, "input_model must be a pydantic BaseModel subclass")
    if not saga.steps:
        raise _fail(saga, "a saga needs at least one step")
    if len(saga.steps) > MAX_STEPS:
        raise _fail(
            saga,
            f"{len(saga.steps)} steps is more than the {MAX_STEPS} a saga may have; "
            "split the work into several sagas",
        )
    try:
        known = _known_error_names(saga.errors)
    except DefinitionError as exc:
        raise _fail(saga, str(exc)) from None
    seen: set[str] = set()
    for step in saga.steps:
        if not _NAME.match(step.name):
            raise _fail(saga, f"step name {step.name!r} is not a valid name")
        if step.name in seen:
            raise _fail(saga, f"duplicate step name {step.name!r}")
        seen.add(step.name)
        if step.timeout <= 0:
            raise _fail(saga, f"step {step.name!r}: timeout must be positive")
        if step.kind is StepKind.LOCAL and step.action is None:
            raise _fail(saga, f"local step {step.name!r} has no action")
        if step.kind is StepKind.CHAIN:
            _validate_chain_step(saga, step)
            if step.external:
                raise _fail(
                    saga,
                    f"chain step {step.name!r} is never fused with other steps; "
                    "external=True is for local steps with effects outside their session",
                )
        for policy in (step.retry, step.compensation_retry):
            for name in policy.non_retryable:
                if name not in known:
                    raise _fail(
                        saga,
                        f"step {step.name!r}: unknown error type {name!r} in its retry "
                        "policy; declare it in the saga's errors=(...) or use a builtin "
                        "exception name",
                    )

    pivots = [i for i, s in enumerate(saga.steps) if s.pivot]
    if len(pivots) > 1:
        names = ", ".join(saga.steps[i].name for i in pivots)
        raise _fail(saga, f"more than one pivot step ({names})")
    if pivots:
        pivot = pivots[0]
    else:
        # Without an explicit pivot the first step that cannot be undone is the pivot.
        pivot = next((i for i, s in enumerate(saga.steps) if not s.compensable), len(saga.steps))
    for i, step in enumerate(saga.steps):
        if i < pivot and not step.compensable:
            raise _fail(
                saga,
                f"step {step.name!r} comes before the pivot "
                f"{saga.steps[pivot].name!r} but has no compensation",
            )
        if i >= pivot and step.compensable:
            where = "is the pivot" if i == pivot else "comes after the pivot"
            raise _fail(
                saga,
                f"step {step.name!r} {where} but declares a compensation; steps from the "
                "pivot on are retried forward, never compensated",
            )
    return pivot


def _validate_chain_step(saga: SagaDefinition, step: Step) -> None:
    chain = step.chain
    if chain is None:
        raise _fail(saga, f"chain step {step.name!r} needs a ChainCall")
    if step.action is not None or step.compensation is not None:
        raise _fail(
            saga,
            f"chain step {step.name!r} runs on the ledger; it takes no action or compensation "
            "function (use ChainCall.undo_function for its reversal)",
        )
    if not chain.chaincode or not chain.function:
        raise _fail(saga, f"chain step {step.name!r}: ChainCall needs a chaincode and a function")
    if chain.undo_args is not None and chain.undo_function is None:
        raise _fail(saga, f"chain step {step.name!r}: undo_args given without an undo_function")


def _known_error_names(errors: Iterable[type[BaseException]]) -> set[str]:
    names: set[str] = set()
    for cls in errors:
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise DefinitionError(f"errors=(...) must hold exception classes, got {cls!r}")
        names.add(cls.__qualname__)
        names.add(f"{cls.__module__}.{cls.__qualname__}")
    for name, obj in vars(builtins).items():
        if isinstance(obj, type) and issubclass(obj, BaseException):
            names.add(name)
            names.add(f"builtins.{name}")
    return names


class Registry:
    """The saga definitions an application knows, every version of each."""

    def __init__(self, definitions: Iterable[SagaDefinition] = ()) -> None:
        self._by_key: dict[tuple[str, int], SagaDefinition] = {}
        for definition in definitions:
            self.add(definition)

    def add(self, definition: SagaDefinition) -> SagaDefinition:
        if definition.key in self._by_key and self._by_key[definition.key] is not definition:
            raise DefinitionError(
                f"saga {definition.name!r} version {definition.version} is registered twice"
            )
        self._by_key[definition.key] = definition
        return definition

    def get(self, name: str, version: int | None = None) -> SagaDefinition:
        if version is None:
            versions = [v for (n, v) in self._by_key if n == name]
            if not versions:
                raise UnknownSaga(name)
            version = max(versions)
        try:
            return self._by_key[(name, version)]
        except KeyError:
            raise UnknownSaga(name, version) from None

    def names(self) -> list[str]:
        return sorted({n for (n, _) in self._by_key})

    def __iter__(self) -> Any:
        return iter(sorted(self._by_key.values(), key=lambda d: d.key))

    def __len__(self) -> int:
        return len(self._by_key)
