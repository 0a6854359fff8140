"""The hint under a refused `saga compensate` / `resume` / `retry` fits the refusal."""

from __future__ import annotations

import pytest

from saga.app.errors import OperatorActionRefused, SagaNotFound
from saga.entrypoints.cli.operator import refusal_hint
from tests.support.chain_world import World


def _refusal(w: World, saga_id: str) -> OperatorActionRefused:
    with pytest.raises(OperatorActionRefused) as caught:
        w.orch.compensate(saga_id, actor="op", why="test")
    return caught.value


def test_compensate_refused_for_a_transaction_in_doubt_points_at_the_lookup() -> None:
    w = World(timeout=0.001)
    saga_id = w.start()
    w.ledger.drop_submit_reply = 1
    w.run(2)  # the chain step's transaction went out; its answer was lost
    refused = _refusal(w, saga_id)
    hint = refusal_hint("compensate", refused)
    assert "saga ledger tx TXID" in hint and "saga resume" in hint, hint
    assert "pivot" not in hint


def test_compensate_refused_past_the_pivot_or_when_finished_says_why() -> None:
    w = World()
    saga_id = w.start()
    w.drive()  # completed: past its pivot
    refused = _refusal(w, saga_id)
    hint = refusal_hint("compensate", refused)
    assert "completed" in str(refused) and "nothing is left to compensate" in hint, hint
    assert "pivot" not in hint

    unknown = refusal_hint("compensate", SagaNotFound("nope"))
    assert "saga list" in unknown and "pivot" not in unknown
