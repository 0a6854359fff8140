"""Hypothesis strategies: random saga definitions and per-attempt outcomes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st
from pydantic import BaseModel

from saga.core.definitions import SagaDefinition, Step, StepContext
from saga.core.retry import RetryPolicy


class Payload(BaseModel):
    n: int = 0


class StepBroke(Exception):
    """A failure; retryable unless a policy names it."""


class BusinessRule(Exception):
    """Base of BusinessRefusal; a policy naming this catches the subclass."""


class BusinessRefusal(BusinessRule):
    pass


ERRORS: dict[str, type[Exception]] = {"broke": StepBroke, "refused": BusinessRefusal}
# What a policy may name; "BusinessRule" is a base class of BusinessRefusal.
POLICY_NAMES = ("StepBroke", "BusinessRule", "BusinessRefusal")


def is_fatal(outcome: str, non_retryable: tuple[str, ...]) -> bool:
    """The test's own reading of a policy (independent of RetryPolicy.gives_up)."""
    if outcome == "broke":
        return "StepBroke" in non_retryable
    if outcome == "refused":
        return "BusinessRule" in non_retryable or "BusinessRefusal" in non_retryable
    return False


@dataclass(frozen=True)
class StepSpec:
    name: str
    compensable: bool
    pivot_flag: bool
    max_attempts: int
    non_retryable: tuple[str, ...]
    comp_max_attempts: int
    comp_non_retryable: tuple[str, ...]


@dataclass(frozen=True)
class SagaSpec:
    steps: tuple[StepSpec, ...]
    pivot: int  # index of the pivot; len(steps) when every step is compensable

    def build(
        self,
        action: Callable[[str], Callable[[StepContext], Any]] | None = None,
        compensation: Callable[[str], Callable[[StepContext], Any]] | None = None,
        *,
        external: frozenset[str] = frozenset(),
    ) -> SagaDefinition:
        """`external`: the steps declared to have effects outside their session."""

        def noop(ctx: StepContext) -> None:
            return None

        steps = []
        for s in self.steps:
            steps.append(
                Step(
                    s.name,
                    action(s.name) if action else noop,
                    compensation=(compensation(s.name) if compensation else noop)
                    if s.compensable
                    else None,
                    pivot=s.pivot_flag,
                    external=s.name in external,
                    retry=RetryPolicy(
                        max_attempts=s.max_attempts,
                        initial_backoff=0.25,
                        backoff_multiplier=2.0,
                        max_backoff=1.0,
                        non_retryable=s.non_retryable,
                    ),
                    compensation_retry=RetryPolicy(
                        max_attempts=s.comp_max_attempts,
                        initial_backoff=0.1,
                        non_retryable=s.comp_non_retryable,
                    ),
                )
            )
        return SagaDefinition(
            name="random-saga",
            version=1,
            input_model=Payload,
            steps=tuple(steps),
            errors=(StepBroke, BusinessRule, BusinessRefusal),
        )


_names = st.sets(st.sampled_from(POLICY_NAMES)).map(lambda s: tuple(sorted(s)))


@st.composite
def saga_specs(draw: st.DrawFn, max_steps: int = 6) -> SagaSpec:
    n = draw(st.integers(1, max_steps))
    pivot = draw(st.integers(0, n))  # n: no pivot at all
    explicit = draw(st.booleans())
    steps = []
    for i in range(n):
        steps.append(
            StepSpec(
                name=f"s{i}",
                compensable=i < pivot,
                pivot_flag=explicit and i == pivot,
                max_attempts=draw(st.integers(1, 4)),
                non_retryable=draw(_names),
                comp_max_attempts=draw(st.integers(1, 4)),
                comp_non_retryable=draw(_names),
            )
        )
    return SagaSpec(tuple(steps), pivot)


# An attempt's outcome: mostly success, so that runs get far enough to compensate.
outcomes = st.sampled_from(["ok", "ok", "ok", "broke", "refused"])
