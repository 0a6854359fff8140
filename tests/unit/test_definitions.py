"""Saga definitions are validated when declared; the registry keeps every version."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from saga.core.definitions import ChainCall, Registry, SagaDefinition, Step, StepKind
from saga.core.errors import DefinitionError, UnknownSaga
from saga.core.retry import RetryPolicy, error_names


class In(BaseModel):
    n: int = 0


class BusinessError(Exception):
    pass


class CardDeclined(BusinessError):
    pass


class Undeclared(Exception):
    pass


def act(ctx: object) -> None:
    return None


def undo(ctx: object) -> None:
    return None


def define(*steps: Step, name: str = "pay", version: int = 1, **kw: object) -> SagaDefinition:
    return SagaDefinition(name=name, version=version, input_model=In, steps=steps, **kw)  # type: ignore[arg-type]


def refused(match: str, *steps: Step, name: str = "pay", **kw: object) -> str:
    with pytest.raises(DefinitionError, match=match) as info:
        define(*steps, name=name, **kw)
    message = str(info.value)
    assert f"saga {name!r}" in message, message
    return message


# -- what a valid definition looks like -------------------------------------------


def test_explicit_pivot_is_found() -> None:
    d = define(
        Step("a", act, undo),
        Step("b", act, undo),
        Step("p", act, pivot=True),
        Step("after", act),
    )
    assert d.pivot_index == 2
    assert d.index("after") == 3
    assert d.step("b").compensable
    assert not d.step("p").compensable


def test_implicit_pivot_is_first_step_without_compensation() -> None:
    d = define(Step("a", act, undo), Step("b", act), Step("c", act))
    assert d.pivot_index == 1


def test_all_compensable_has_no_pivot() -> None:
    d = define(Step("a", act, undo), Step("b", act, undo))
    assert d.pivot_index == 2


# -- what is refused at declaration ---------------------------------------------


def test_duplicate_step_names() -> None:
    msg = refused("duplicate step name", Step("a", act, undo), Step("a", act))
    assert "'a'" in msg


def test_compensable_step_after_pivot() -> None:
    msg = refused(
        "comes after the pivot",
        Step("a", act, undo),
        Step("p", act, pivot=True),
        Step("late", act, undo),
    )
    assert "'late'" in msg


def test_pivot_with_compensation() -> None:
    msg = refused("is the pivot", Step("a", act, undo), Step("p", act, undo, pivot=True))
    assert "'p'" in msg


def test_missing_compensation_before_pivot() -> None:
    msg = refused(
        "has no compensation",
        Step("a", act, undo),
        Step("forgot", act),
        Step("p", act, pivot=True),
    )
    assert "'forgot'" in msg and "'p'" in msg


def test_two_pivots() -> None:
    msg = refused(
        "more than one pivot",
        Step("p1", act, pivot=True),
        Step("p2", act, pivot=True),
    )
    assert "p1" in msg and "p2" in msg


def test_unknown_error_type_in_retry_policy() -> None:
    msg = refused(
        "unknown error type 'CardDecliend'",
        Step("a", act, undo, retry=RetryPolicy(non_retryable=("CardDecliend",))),
        errors=(CardDeclined,),
    )
    assert "'a'" in msg


def test_unknown_error_type_in_compensation_policy() -> None:
    msg = refused(
        "unknown error type 'Undeclared'",
        Step("a", act, undo, compensation_retry=RetryPolicy(non_retryable=("Undeclared",))),
        errors=(CardDeclined,),
    )
    assert "'a'" in msg


def test_known_error_names_declared_builtin_and_qualified() -> None:
    qualified = f"{CardDeclined.__module__}.CardDeclined"
    policy = RetryPolicy(non_retryable=("CardDeclined", qualified, "ValueError", "KeyError"))
    d = define(Step("a", act, undo, retry=policy), errors=(CardDeclined,))
    assert d.step("a").retry.non_retryable == policy.non_retryable


def test_errors_must_be_exception_classes() -> None:
    refused("exception classes", Step("a", act), errors=("CardDeclined",))


def test_no_steps() -> None:
    refused("at least one step")


@pytest.mark.parametrize("bad", ["", "Pay", "1pay", "pay now", "x" * 64, "pay/1"])
def test_bad_saga_name(bad: str) -> None:
    with pytest.raises(DefinitionError, match="name must be") as info:
        define(Step("a", act), name=bad)
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize("bad", ["", "Step", "9th", "with space", "x" * 64])
def test_bad_step_name(bad: str) -> None:
    msg = refused("is not a valid name", Step(bad, act))
    assert repr(bad) in msg


def test_bad_version() -> None:
    with pytest.raises(DefinitionError, match="version must be"):
        define(Step("a", act), version=0)


@pytest.mark.parametrize("model", [dict, In(), "In", None])
def test_bad_input_model(model: object) -> None:
    with pytest.raises(DefinitionError, match="input_model") as info:
        SagaDefinition(name="pay", version=1, input_model=model, steps=(Step("a", act),))  # type: ignore[arg-type]
    assert "'pay'" in str(info.value)


def test_chain_step_without_chaincall() -> None:
    msg = refused("needs a ChainCall", Step("ledger", kind=StepKind.CHAIN))
    assert "'ledger'" in msg


def test_chain_step_with_chaincall_and_undo_is_compensable() -> None:
    call = ChainCall("facts", "Record", lambda ctx: [], undo_function="Reverse")
    d = define(
        Step("ledger", kind=StepKind.CHAIN, chain=call),
        Step("p", act, pivot=True),
    )
    assert d.step("ledger").compensable
    assert d.pivot_index == 1


def test_only_local_steps_not_declared_external_are_fusable() -> None:
    call = ChainCall("facts", "Record", lambda ctx: [])
    d = define(
        Step("a", act),
        Step("mail", act, external=True),
        Step("ledger", kind=StepKind.CHAIN, chain=call),
    )
    assert [s.fusable for s in d.steps] == [True, False, False]


def test_a_chain_step_declared_external_is_refused() -> None:
    call = ChainCall("facts", "Record", lambda ctx: [])
    msg = refused("never fused", Step("ledger", kind=StepKind.CHAIN, chain=call, external=True))
    assert "'ledger'" in msg


def test_local_step_without_action() -> None:
    msg = refused("has no action", Step("a", None))
    assert "'a'" in msg


def test_non_positive_timeout() -> None:
    msg = refused("timeout must be positive", Step("slow", act, timeout=0))
    assert "'slow'" in msg


# -- retry policy -----------------------------------------------------------------


def test_retry_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(initial_backoff=-1)
    with pytest.raises(ValueError):
        RetryPolicy(backoff_multiplier=0.5)


def test_backoff_grows_and_is_capped() -> None:
    p = RetryPolicy(initial_backoff=0.5, backoff_multiplier=2.0, max_backoff=3.0)
    assert [p.backoff(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_gives_up_after_max_attempts() -> None:
    p = RetryPolicy(max_attempts=3)
    assert not p.gives_up(1, ("Exception",))
    assert not p.gives_up(2, ("Exception",))
    assert p.gives_up(3, ("Exception",))


def test_gives_up_at_once_on_non_retryable() -> None:
    p = RetryPolicy(max_attempts=10, non_retryable=("CardDeclined",))
    assert p.gives_up(1, error_names(CardDeclined("no")))
    assert not p.gives_up(1, error_names(BusinessError("maybe")))


def test_policy_naming_a_base_class_catches_subclass() -> None:
    p = RetryPolicy(max_attempts=10, non_retryable=("BusinessError",))
    assert p.gives_up(1, error_names(CardDeclined("no")))
    qualified = RetryPolicy(
        max_attempts=10, non_retryable=(f"{BusinessError.__module__}.BusinessError",)
    )
    assert qualified.gives_up(1, error_names(CardDeclined("no")))
    builtin = RetryPolicy(max_attempts=10, non_retryable=("LookupError",))
    assert builtin.gives_up(1, error_names(KeyError("k")))
    assert not builtin.gives_up(1, error_names(ValueError("v")))


def test_error_names_cover_mro_but_not_object() -> None:
    names = error_names(CardDeclined("x"))
    for cls in (CardDeclined, BusinessError, Exception, BaseException):
        assert cls.__qualname__ in names
        assert f"{cls.__module__}.{cls.__qualname__}" in names
    assert "object" not in names


# -- registry ---------------------------------------------------------------------


def test_registry_keeps_versions_and_new_sagas_take_latest() -> None:
    v1 = define(Step("a", act))
    v2 = define(Step("a", act, undo), Step("b", act), version=2)
    v3 = define(Step("x", act), version=3)
    reg = Registry([v2, v3, v1])
    assert reg.get("pay") is v3
    assert reg.get("pay", 1) is v1
    assert reg.get("pay", 2) is v2
    assert len(reg) == 3
    assert [d.key for d in reg] == [("pay", 1), ("pay", 2), ("pay", 3)]
    assert reg.names() == ["pay"]


def test_registry_unknown_saga_and_version() -> None:
    reg = Registry([define(Step("a", act))])
    with pytest.raises(UnknownSaga, match="'nope'"):
        reg.get("nope")
    with pytest.raises(UnknownSaga, match="version 7"):
        reg.get("pay", 7)


def test_registry_refuses_same_version_twice() -> None:
    v1 = define(Step("a", act))
    reg = Registry([v1])
    reg.add(v1)  # the same object again is harmless
    with pytest.raises(DefinitionError, match="registered twice"):
        reg.add(define(Step("b", act)))
    assert reg.get("pay", 1) is v1
