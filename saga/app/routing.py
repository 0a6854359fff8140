"""Which queue a step message belongs on: chain steps to the chain executor's queue.

The relay asks this of every message it publishes when SAGA_CHAIN_QUEUE is set. A
message that names no known saga, version or step is left on the step queue, where a
worker dead-letters it with the reason (routing is no place to judge a message).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from saga.core.definitions import Registry, StepKind
from saga.core.errors import UnknownSaga


class ChainRouting:
    """Answers "is this step message a chain step's?" from the saga definitions."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        # (saga, version, step) -> chain or not: every message of a busy relay asks.
        self._known: dict[tuple[str, int, str], bool] = {}

    def is_chain(self, body: Mapping[str, Any]) -> bool:
        name, version, step = body.get("saga"), body.get("version"), body.get("step")
        if not (isinstance(name, str) and isinstance(version, int) and isinstance(step, str)):
            return False
        key = (name, version, step)
        known = self._known.get(key)
        if known is None:
            try:
                known = self._registry.get(name, version).step(step).kind is StepKind.CHAIN
            except (UnknownSaga, KeyError):
                return False
            self._known[key] = known
        return known
