"""Exhaustive table test of `saga.core.chain.decide`.

Every combination of up to three attempts, each in every recorded state (and
code), with every possible answer from the ledger, and every answer about the
idempotency key, is checked against the protocol's rules written out again
here, independently of the implementation:

  R1  a transaction known VALID (recorded, or learned now) -> done with it.
  R2  otherwise, any transaction whose outcome is unknown -> resubmit exactly
      those (same txids, in order); never a new transaction beside them.
  R3  otherwise, nothing was ever recorded -> prepare a new transaction.
  R4  otherwise every transaction is final and invalid: the key decides -
      not asked yet -> ask it; a record -> done with the record's txid;
      absent -> prepare a new transaction.
  A recorded code is final: a later, different answer for the same txid does
  not override it (the first commit of a txid is the one that counts).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from saga.core.chain import (
    AskKey,
    Attempt,
    AttemptState,
    Committed,
    Decision,
    Done,
    KeyAnswer,
    KeyCheck,
    KeyPresent,
    PrepareNew,
    Resubmit,
    Unknown,
    decide,
)

VALID, MVCC, POLICY = 0, 11, 10
RECORDED: list[tuple[AttemptState, int | None]] = [
    (AttemptState.PREPARED, None),
    (AttemptState.SUBMITTED, None),
    (AttemptState.COMMITTED, VALID),
    (AttemptState.COMMITTED, MVCC),
    (AttemptState.COMMITTED, POLICY),
]
ANSWERS: list[Committed | Unknown | None] = [
    None,  # not asked (or no answer kept)
    Unknown("deadline"),
    Committed(VALID, 7),
    Committed(MVCC, 7),
    Committed(POLICY, 7),
]
KEY_ANSWERS: list[KeyAnswer] = [KeyCheck.NOT_ASKED, KeyCheck.ABSENT, KeyPresent("outside-tx")]


def cases() -> Iterator[tuple[list[Attempt], dict[str, Committed | Unknown], KeyAnswer]]:
    for n in range(4):
        per_attempt = list(itertools.product(RECORDED, ANSWERS))
        for combo in itertools.product(per_attempt, repeat=n):
            attempts = [Attempt(f"tx{i}", st, code) for i, ((st, code), _) in enumerate(combo)]
            answers = {f"tx{i}": a for i, (_, a) in enumerate(combo) if a is not None}
            for key in KEY_ANSWERS:
                yield attempts, answers, key


def known_code(attempt: Attempt, answers: dict[str, Committed | Unknown]) -> int | None:
    if attempt.state is AttemptState.COMMITTED:
        return attempt.code
    answer = answers.get(attempt.txid)
    return answer.code if isinstance(answer, Committed) else None


def expected(
    attempts: list[Attempt], answers: dict[str, Committed | Unknown], key: KeyAnswer
) -> Decision:
    codes = [known_code(a, answers) for a in attempts]
    valid = [a.txid for a, c in zip(attempts, codes, strict=True) if c == VALID]
    if valid:
        return Done(valid[0], "")
    unknown = tuple(a.txid for a, c in zip(attempts, codes, strict=True) if c is None)
    if unknown:
        return Resubmit(unknown)
    if not attempts:
        return PrepareNew()
    if key is KeyCheck.NOT_ASKED:
        return AskKey()
    if isinstance(key, KeyPresent):
        return Done(key.txid, "")
    return PrepareNew()


def test_decide_follows_the_rules_for_every_combination() -> None:
    checked = 0
    for attempts, answers, key in cases():
        got = decide(attempts, answers, key)
        want = expected(attempts, answers, key)
        if isinstance(want, Done):
            assert isinstance(got, Done) and got.txid == want.txid, (attempts, answers, key, got)
        else:
            assert got == want, (attempts, answers, key, got)
        checked += 1
    # 0..3 attempts, 25 (state, answer) pairs each, 3 key answers.
    assert checked == 3 * (1 + 25 + 25**2 + 25**3)


def test_safety_never_a_new_transaction_while_one_may_still_commit() -> None:
    for attempts, answers, key in cases():
        got = decide(attempts, answers, key)
        codes = [known_code(a, answers) for a in attempts]
        if isinstance(got, PrepareNew):
            assert all(c is not None and c != VALID for c in codes)
            assert not attempts or key is KeyCheck.ABSENT
        if isinstance(got, Resubmit):
            by_txid = dict(zip([a.txid for a in attempts], codes, strict=True))
            assert got.txids and all(by_txid[t] is None for t in got.txids)
        if isinstance(got, Done):
            assert got.txid in {a.txid for a in attempts} | {"outside-tx"}


def test_a_recorded_code_is_not_overridden_by_a_later_answer() -> None:
    attempt = Attempt("tx0", AttemptState.COMMITTED, MVCC)
    assert decide([attempt], {"tx0": Committed(VALID)}, KeyCheck.NOT_ASKED) == AskKey()
    attempt = Attempt("tx0", AttemptState.COMMITTED, VALID)
    assert isinstance(decide([attempt], {"tx0": Committed(MVCC)}), Done)
