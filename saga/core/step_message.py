"""The body of a step message, as written to the outbox and read by workers."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from saga.core.errors import SagaError
from saga.core.messages import Command, RunCompensation, RunStep
from saga.core.purpose import Purpose
from saga.core.state import SagaState


class MalformedMessage(SagaError, ValueError):
    """A message body that is not a step message; it goes to the dead-letter queue."""


@dataclass(frozen=True)
class StepMessage:
    message_id: str
    saga_id: str
    saga: str
    version: int
    step: str
    attempt: int
    phase: Purpose  # do: the step's action; undo: its compensation

    @classmethod
    def for_command(cls, state: SagaState, command: Command, message_id: str) -> StepMessage:
        """The message that carries `command` for the saga in `state`."""
        return cls(
            message_id=message_id,
            saga_id=state.saga_id,
            saga=state.name,
            version=state.version,
            step=command.step,
            attempt=command.attempt,
            phase=Purpose.DO if isinstance(command, RunStep) else Purpose.UNDO,
        )

    def check_saga(self, state: SagaState) -> None:
        """Raise MalformedMessage unless this message names the saga and version `state` runs."""
        if (state.name, state.version) != (self.saga, self.version):
            raise MalformedMessage(
                f"message names saga {self.saga!r} v{self.version} but saga "
                f"{state.saga_id} runs {state.name!r} v{state.version}"
            )

    def to_body(self) -> dict[str, Any]:
        body = asdict(self)
        body["phase"] = str(self.phase)
        return body

    @classmethod
    def from_body(cls, body: object) -> StepMessage:
        if not isinstance(body, dict):
            raise MalformedMessage(f"step message must be a JSON object, got {type(body).__name__}")
        expected = {
            "message_id": str,
            "saga_id": str,
            "saga": str,
            "version": int,
            "step": str,
            "attempt": int,
            "phase": str,
        }
        missing = sorted(set(expected) - set(body))
        if missing:
            raise MalformedMessage(f"step message lacks field(s): {', '.join(missing)}")
        extra = sorted(set(body) - set(expected))
        if extra:
            raise MalformedMessage(f"step message has unknown field(s): {', '.join(extra)}")
        for key, typ in expected.items():
            value = body[key]
            if not isinstance(value, typ) or isinstance(value, bool):
                raise MalformedMessage(
                    f"step message field {key!r} must be {typ.__name__}, got {type(value).__name__}"
                )
        try:
            phase = Purpose(body["phase"])
        except ValueError:
            raise MalformedMessage(f"phase must be 'do' or 'undo', got {body['phase']!r}") from None
        if body["attempt"] < 1 or body["version"] < 1:
            raise MalformedMessage("attempt and version must be positive")
        return cls(
            message_id=body["message_id"],
            saga_id=body["saga_id"],
            saga=body["saga"],
            version=body["version"],
            step=body["step"],
            attempt=body["attempt"],
            phase=phase,
        )

    def command(self) -> Command:
        if self.phase is Purpose.DO:
            return RunStep(self.step, self.attempt)
        return RunCompensation(self.step, self.attempt)
