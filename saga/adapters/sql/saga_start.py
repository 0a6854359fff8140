"""Starting a saga on PostgreSQL in one statement: the saga, its steps, its first
messages and its history, and the idempotency check.

The enqueue was five statements in a transaction (saga, steps, outbox, history,
each a round trip, and a savepoint around the saga with a key). Here the saga's
INSERT skips a key another saga holds (ON CONFLICT DO NOTHING) and the other
inserts select from its RETURNING, so a refused key writes nothing at all; the
steps, messages and history entries are arrays unnested server-side, so the
statement has one shape whatever the saga's length and is prepared once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, text

from saga.adapters.sql.tables import IDEMPOTENCY_KEY_CONSTRAINT
from saga.ports.store import HistoryEntry, OutboxMessage, SagaRecord

# Casts, not type inference: psycopg sends Python strings untyped, and the
# arrays' element types must be spelled for unnest.
START = text(
    f"""
WITH s AS (
  INSERT INTO sagas (id, name, version, status, current, input, data, reason,
                     idempotency_key, payload_hash, created_at, updated_at)
  VALUES (:id, :name, :version, :status, :current, CAST(:input AS jsonb),
          CAST(:data AS jsonb), :reason, :idempotency_key, :payload_hash,
          :created_at, :updated_at)
  ON CONFLICT ON CONSTRAINT {IDEMPOTENCY_KEY_CONSTRAINT} DO NOTHING
  RETURNING id
), st AS (
  INSERT INTO saga_steps (saga_id, idx, name, status, attempts, failures,
                          compensation_attempts, compensation_failures, last_error,
                          waiting_since, updated_at)
  SELECT s.id, u.idx, u.name, u.status, u.attempts, u.failures, u.c_attempts,
         u.c_failures, u.last_error, u.waiting_since, :updated_at
  FROM s, unnest(CAST(:st_idx AS int[]), CAST(:st_name AS text[]),
                 CAST(:st_status AS text[]), CAST(:st_attempts AS int[]),
                 CAST(:st_failures AS int[]), CAST(:st_c_attempts AS int[]),
                 CAST(:st_c_failures AS int[]), CAST(:st_last_error AS text[]),
                 CAST(:st_waiting_since AS timestamptz[]))
       AS u(idx, name, status, attempts, failures, c_attempts, c_failures,
            last_error, waiting_since)
), o AS (
  INSERT INTO outbox (message_id, saga_id, body, available_at, created_at)
  SELECT u.message_id, s.id, u.body,
         CASE WHEN u.delay > 0 THEN clock_timestamp() + u.delay * interval '1 second'
              ELSE now() END,
         now()
  FROM s, unnest(CAST(:o_message_id AS text[]), CAST(:o_body AS jsonb[]),
                 CAST(:o_delay AS float8[])) AS u(message_id, body, delay)
), h AS (
  INSERT INTO saga_history (saga_id, at, kind, detail, actor)
  SELECT s.id, u.at, u.kind, u.detail, u.actor
  FROM s, unnest(CAST(:h_at AS timestamptz[]), CAST(:h_kind AS text[]),
                 CAST(:h_detail AS jsonb[]), CAST(:h_actor AS text[]))
       AS u(at, kind, detail, actor)
)
SELECT id FROM s
"""
)


def start(
    connection: Connection,
    record: SagaRecord,
    messages: Sequence[OutboxMessage],
    notes: Sequence[HistoryEntry],
) -> bool:
    """Write the saga, its steps, messages and notes; False if its key was taken
    (then nothing was written)."""
    state = record.state
    steps = state.steps
    params: dict[str, Any] = {
        "id": state.saga_id,
        "name": state.name,
        "version": state.version,
        "status": str(state.status),
        "current": state.current,
        "input": json.dumps(record.input),
        "data": json.dumps(record.data),
        "reason": state.reason,
        "idempotency_key": record.idempotency_key,
        "payload_hash": record.payload_hash,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "st_idx": list(range(len(steps))),
        "st_name": [s.name for s in steps],
        "st_status": [str(s.status) for s in steps],
        "st_attempts": [s.attempts for s in steps],
        "st_failures": [s.failures for s in steps],
        "st_c_attempts": [s.compensation_attempts for s in steps],
        "st_c_failures": [s.compensation_failures for s in steps],
        "st_last_error": [s.last_error for s in steps],
        "st_waiting_since": [s.waiting_since for s in steps],
        "o_message_id": [m.message_id for m in messages],
        "o_body": [json.dumps(m.body) for m in messages],
        "o_delay": [float(m.delay) for m in messages],
        "h_at": [n.at for n in notes],
        "h_kind": [n.kind for n in notes],
        "h_detail": [json.dumps(n.detail) for n in notes],
        "h_actor": [n.actor for n in notes],
    }
    return connection.execute(START, params).first() is not None
