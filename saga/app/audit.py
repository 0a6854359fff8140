"""The database against the ledger: what `saga audit` counts.

Kinds of discrepancy, each a count that must be zero:

- ``done_without_valid``: a chain step the database calls done (or compensated:
  it was done first) has no VALID transaction on the ledger among its recorded
  txids; for a compensated step, the same for its reversal ("undo").
- ``valid_not_done``: a finished saga whose chain step the database does not
  count as done (failed, never run, compensated as "never took effect") has a
  VALID transaction on the ledger: the saga decided without the ledger.
- ``unknown_keys``: a VALID transaction created the record of an idempotency
  key that no transaction the database recorded ever wrote. The database knows
  a key from the stored envelopes of its ledger attempts (the key is in their
  write sets), so a step whose attempts never reached the ledger still counts
  as known. Checked for the whole channel only: with ``saga_id`` given it is
  not (a foreign key belongs to no saga).
- ``duplicate_keys``: more than one VALID transaction created the same key.
- ``not_terminal``: sagas still running or compensating.
- ``pending_transactions``: a transaction of a chain step (or its reversal) that
  has not taken effect, which the database records as prepared or submitted (no
  commit status learned) and the ledger does not have: its outcome is unknown
  and it may still commit, which is what a saga that gave up "in doubt" waits
  on. Once the step took effect (another transaction of it is VALID) a stray one
  can no longer be VALID (guarantee 3) and is not counted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from saga.core.chain import AttemptState
from saga.core.definitions import Registry, StepKind
from saga.core.state import SagaState, StepStatus
from saga.ports.ledger_scan import LedgerScan, ScannedTx
from saga.ports.store import LedgerAttemptRecord, UnitOfWorkFactory

KINDS = (
    "done_without_valid",
    "valid_not_done",
    "unknown_keys",
    "duplicate_keys",
    "not_terminal",
    "pending_transactions",
)

# Statuses meaning the step's action took effect at some point.
_TOOK_EFFECT = (StepStatus.DONE, StepStatus.COMPENSATED, StepStatus.COMPENSATION_FAILED)


@dataclass(frozen=True)
class Discrepancy:
    kind: str
    detail: str
    saga_id: str | None = None
    step: str | None = None
    purpose: str | None = None
    key: str | None = None
    txids: tuple[str, ...] = ()


@dataclass
class AuditReport:
    sagas: int = 0
    chain_steps: int = 0
    blocks: int = 0
    ledger_transactions: int = 0
    # None: that kind was not checked in this run.
    found: dict[str, list[Discrepancy] | None] = field(
        default_factory=lambda: {k: [] for k in KINDS}
    )

    def add(self, item: Discrepancy) -> None:
        bucket = self.found[item.kind]
        if bucket is not None:
            bucket.append(item)

    def counts(self) -> dict[str, int | None]:
        return {k: (None if v is None else len(v)) for k, v in self.found.items()}

    @property
    def clean(self) -> bool:
        return not any(self.counts().values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "sagas": self.sagas,
            "chain_steps": self.chain_steps,
            "blocks": self.blocks,
            "ledger_transactions": self.ledger_transactions,
            "counts": self.counts(),
            "discrepancies": [
                asdict(d) for items in self.found.values() if items is not None for d in items
            ],
        }


@dataclass(frozen=True)
class _Saga:
    state: SagaState
    attempts: tuple[LedgerAttemptRecord, ...]


def audit(
    uow_factory: UnitOfWorkFactory,
    registry: Registry | None,
    scan: LedgerScan,
    *,
    saga_id: str | None = None,
    since: datetime | None = None,
) -> AuditReport:
    """Compare the store with a ledger scan; ``since`` limits both sides by time."""
    report = AuditReport(
        blocks=scan.height - scan.start, ledger_transactions=scan.transaction_count
    )
    loaded = list(_load_sagas(uow_factory, saga_id, since))
    report.sagas = len(loaded)
    for saga in loaded:
        _check_saga(report, registry, scan, saga)

    saga_keys: set[str] | None = None
    if saga_id is not None:
        saga_keys = {k for s in loaded for a in s.attempts for k in _attempt_keys(scan, a)}
        report.found["unknown_keys"] = None
    else:
        known = _known_keys(uow_factory, scan)
        for key, txs in sorted(scan.valid_by_key().items()):
            recent = [t for t in txs if _after(t, since)]
            if recent and key not in known:
                report.add(
                    Discrepancy(
                        "unknown_keys",
                        f"{len(recent)} VALID transaction(s) for a key the database does not know",
                        key=key,
                        txids=tuple(t.txid for t in recent),
                    )
                )
    for key, txs in sorted(scan.duplicates().items()):
        if saga_keys is not None and key not in saga_keys:
            continue
        if not any(_after(t, since) for t in txs):
            continue
        report.add(
            Discrepancy(
                "duplicate_keys",
                f"{len(txs)} VALID transactions for one key",
                key=key,
                txids=tuple(t.txid for t in txs),
            )
        )
    return report


def _after(tx: ScannedTx, since: datetime | None) -> bool:
    return since is None or tx.timestamp is None or tx.timestamp >= since


def _load_sagas(
    uow_factory: UnitOfWorkFactory, saga_id: str | None, since: datetime | None
) -> Iterable[_Saga]:
    if saga_id is None:
        with uow_factory() as uow:
            ids = uow.sagas.ids(created_since=since)
    else:
        ids = [saga_id]
    # One short transaction per saga: an audit of a busy store never holds a
    # snapshot (or locks) for minutes.
    for sid in ids:
        with uow_factory() as uow:
            record = uow.sagas.get(sid)
            if record is None or not _created_since(record.created_at, since):
                continue
            yield _Saga(record.state, tuple(uow.ledger_attempts.for_saga(sid)))


def _created_since(created_at: datetime | None, since: datetime | None) -> bool:
    return since is None or (created_at is not None and created_at >= since)


def _chain_steps(registry: Registry | None, saga: _Saga) -> set[str]:
    with_attempts = {a.step for a in saga.attempts}
    if registry is None:
        return with_attempts
    try:
        definition = registry.get(saga.state.name, saga.state.version)
    except Exception:
        # A definition no longer deployed: what the store recorded is all there is.
        return with_attempts
    return {s.name for s in definition.steps if s.kind is StepKind.CHAIN} | with_attempts


def _check_saga(
    report: AuditReport, registry: Registry | None, scan: LedgerScan, saga: _Saga
) -> None:
    state = saga.state
    if not state.status.terminal:
        report.add(
            Discrepancy(
                "not_terminal",
                f"saga is {state.status} at step {state.steps[state.current].name!r}"
                if 0 <= state.current < len(state.steps)
                else f"saga is {state.status}",
                saga_id=state.saga_id,
            )
        )
    chain = _chain_steps(registry, saga)
    report.chain_steps += len(chain)
    for step in state.steps:
        if step.name not in chain:
            continue
        for purpose in ("do", "undo"):
            attempts = [a for a in saga.attempts if a.step == step.name and a.purpose == purpose]
            valid = [a.txid for a in attempts if scan.is_valid(a.txid)]
            should = _should_be_valid(step.status, purpose)
            if should and not valid:
                recorded = (
                    ", ".join(
                        f"{a.txid[:12]} {a.state}{'' if a.code is None else f' code={a.code}'}"
                        for a in attempts
                    )
                    or "none"
                )
                report.add(
                    Discrepancy(
                        "done_without_valid",
                        f"step is {step.status} but no recorded txid is VALID on the ledger "
                        f"(recorded: {recorded})",
                        saga_id=state.saga_id,
                        step=step.name,
                        purpose=purpose,
                        txids=tuple(a.txid for a in attempts),
                    )
                )
            elif not should and valid and state.status.terminal:
                report.add(
                    Discrepancy(
                        "valid_not_done",
                        f"saga is {state.status} with step {step.status}, yet the ledger "
                        f"has a VALID {purpose!r} transaction",
                        saga_id=state.saga_id,
                        step=step.name,
                        purpose=purpose,
                        txids=tuple(valid),
                    )
                )
            if not should and not valid:
                _pending(report, scan, state.saga_id, step.name, purpose, attempts)


def _pending(
    report: AuditReport,
    scan: LedgerScan,
    saga_id: str,
    step: str,
    purpose: str,
    attempts: list[LedgerAttemptRecord],
) -> None:
    for a in attempts:
        if a.state is AttemptState.COMMITTED or scan.get(a.txid) is not None:
            continue
        prepared = f"prepared {_at(a.created_at)}" if a.created_at else "prepared"
        sent = (
            f"submitted {_at(a.submitted_at)}"
            if a.submitted_at is not None
            else "no submit recorded"
        )
        report.add(
            Discrepancy(
                "pending_transactions",
                f"{prepared}, {sent}; not on the ledger up to block {scan.height - 1}: "
                f"it may still commit (`saga ledger tx {a.txid}`)",
                saga_id=saga_id,
                step=step,
                purpose=purpose,
                txids=(a.txid,),
            )
        )


def _at(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def _should_be_valid(status: StepStatus, purpose: str) -> bool:
    if purpose == "do":
        return status in _TOOK_EFFECT
    return status is StepStatus.COMPENSATED


def _attempt_keys(scan: LedgerScan, attempt: LedgerAttemptRecord) -> tuple[str, ...]:
    on_ledger = scan.get(attempt.txid)
    if on_ledger is not None:
        return on_ledger.created
    return _parse(scan, attempt.envelope)


def _parse(scan: LedgerScan, envelope: bytes) -> tuple[str, ...]:
    try:
        return scan.keys_created_by(envelope)
    except Exception:
        # An envelope the store holds but cannot parse knows no key; the audit
        # then reports that key's ledger transaction, which is what an operator
        # needs to look at.
        return ()


def _known_keys(uow_factory: UnitOfWorkFactory, scan: LedgerScan) -> set[str]:
    known: set[str] = set()
    with uow_factory() as uow:
        rows = uow.ledger_attempts.envelopes()
    for txid, envelope in rows:
        on_ledger = scan.get(txid)
        if on_ledger is not None:
            known.update(on_ledger.created)
        else:
            known.update(_parse(scan, envelope))
    return known
