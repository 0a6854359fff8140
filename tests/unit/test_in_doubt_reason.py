"""A chain step that gives up with its outcome unknown says what its attempt record
says (prepared, submitted, when) and which command looks a transaction up."""

from __future__ import annotations

from datetime import UTC, datetime

from saga.core.state import SagaStatus
from tests.support.chain_world import World


def test_the_in_doubt_reason_matches_the_attempt_record_and_names_the_lookup() -> None:
    w = World(timeout=10)
    w.clock.now = datetime.now(UTC)  # the fake store stamps attempts with the wall clock
    saga_id = w.start()
    w.ledger.drop_submit_reply = 1  # ordered, but the worker never hears so
    w.run(2)  # the local step; the chain step prepares, submits, and waits
    [attempt] = w.attempts()
    assert attempt.state == "prepared" and attempt.submitted_at is None
    w.clock.advance(60)  # past the step's timeout, no block cut
    w.drive(cut=False)

    record = w.db.saga(saga_id)
    assert record is not None and record.state.status is SagaStatus.FAILED
    [attempt] = w.attempts()
    # The resubmission that preceded giving up is on the record, as `saga show` lists it.
    assert attempt.state == "submitted" and attempt.submitted_at is not None
    reason = record.state.reason or ""
    prepared = attempt.created_at.isoformat(timespec="seconds")
    assert f"{attempt.txid} (prepared {prepared}, submitted " in reason, reason
    assert "unknown more than 10s after it was prepared" in reason, reason
    assert "submitted more than" not in reason
    assert "saga ledger tx TXID" in reason, reason
