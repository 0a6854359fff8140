"""Retry policy as declared data."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how fast a step (or a compensation) is tried again.

    `non_retryable` holds error *names*: a class's `__qualname__` or
    `module.qualname`. Keeping names, not classes, keeps the policy plain data that
    can be stored, logged and compared; the definition checks each name resolves to
    an error type the saga declared, so a typo fails at import, not in production.
    """

    max_attempts: int = 3
    initial_backoff: float = 0.5
    backoff_multiplier: float = 2.0
    max_backoff: float = 60.0
    non_retryable: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < 0:
            raise ValueError("backoff must not be negative")
        if self.backoff_multiplier < 1:
            raise ValueError("backoff_multiplier must be at least 1")

    def backoff(self, failures: int) -> float:
        """Delay before the next try, after `failures` failed tries (>= 1)."""
        delay = self.initial_backoff * self.backoff_multiplier ** max(failures - 1, 0)
        return min(delay, self.max_backoff)

    def gives_up(self, failures: int, error_types: tuple[str, ...]) -> bool:
        """True when the step must not be tried again."""
        if failures >= self.max_attempts:
            return True
        return any(name in self.non_retryable for name in error_types)


def error_names(exc: BaseException) -> tuple[str, ...]:
    """Every name by which a policy may refer to exc's type or one of its bases."""
    names: list[str] = []
    for cls in type(exc).__mro__:
        if cls is object:
            continue
        names.append(cls.__qualname__)
        names.append(f"{cls.__module__}.{cls.__qualname__}")
    return tuple(names)


@dataclass(frozen=True)
class OutagePolicy:
    """How long a chain step waits for a ledger that is unreachable, and how often it looks.

    Separate from RetryPolicy on purpose: an outage is no verdict on the step, so it
    spends none of the step's business attempts and never leads to compensation.
    The wait between looks grows with the outage (half the time waited so far),
    between `first_delay` and `max_delay`; once `budget` seconds have passed since
    the outage began, the saga goes to an operator.
    """

    budget: float = 600.0
    first_delay: float = 1.0
    max_delay: float = 10.0

    def __post_init__(self) -> None:
        if self.budget <= 0 or self.first_delay <= 0 or self.max_delay < self.first_delay:
            raise ValueError("outage budget and delays must be positive, max_delay >= first_delay")

    def retry_in(self, waited: float) -> float | None:
        """Seconds until the next look after `waited` seconds of outage; None: budget spent."""
        if waited >= self.budget:
            return None
        return min(max(self.first_delay, waited / 2), self.max_delay, self.budget - waited)
