"""Errors raised by the pure core."""

from __future__ import annotations


class SagaError(Exception):
    """Base class of every error this package raises on purpose."""


class DefinitionError(SagaError):
    """A saga definition is inconsistent; raised when it is declared (at import)."""


class UnknownSaga(SagaError):
    """No saga (or no such version of it) is registered under that name."""

    def __init__(self, name: str, version: int | None = None) -> None:
        self.name = name
        self.version = version
        what = f"{name!r}" if version is None else f"{name!r} version {version}"
        super().__init__(
            f"unknown saga {what}; register its definition in the application's registry "
            "(see `saga list-definitions`)"
        )


class UnknownStep(SagaError):
    def __init__(self, saga: str, version: int, step: str) -> None:
        self.saga, self.version, self.step = saga, version, step
        super().__init__(f"saga {saga!r} version {version} has no step {step!r}")
