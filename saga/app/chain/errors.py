"""What a chain step fails with. Retry policies name these (see RetryPolicy.non_retryable)."""

from __future__ import annotations

from saga.core.errors import OrchestrationError, SagaError


class ChainStepError(SagaError):
    """Base of the failures a chain step reports to the state machine."""


class ChaincodeRefused(ChainStepError):
    """The chaincode refused the proposal for a business reason (INVALID_ARGUMENT, ...).

    Nothing reached the orderer. Trying the same arguments again gives the same
    answer, so sagas usually list it in `non_retryable`.
    """

    def __init__(self, code: str, detail: str) -> None:
        self.code = code
        self.detail = detail
        super().__init__(f"{code}: {detail}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.code, self.detail))


class EndorsementFailed(ChainStepError):
    """Endorsement failed for a reason other than the chaincode's (policy, permission, ...)."""


class LedgerUnavailable(ChainStepError):
    """The ledger could not be reached. No longer reported: an unreachable ledger makes
    the step wait under SAGA_CHAIN_OUTAGE_BUDGET (LedgerWait, guarantee 7) instead of
    failing. Kept so that retry policies and `errors=` lists naming it still load."""


class TransactionsInvalid(ChainStepError):
    """Every transaction prepared for the step committed invalid, as many times as the
    executor allows. None of them can ever be VALID, so this is not in doubt: a ledger
    that refuses every transaction is not asked for another one for ever."""


class LedgerOutcomeUnknown(ChainStepError):
    """A transaction of the step was submitted and its outcome is still unknown past the
    step's timeout. Reported in doubt: giving up on it goes to an operator, never to
    compensation, because the transaction may still commit."""


class LedgerNotConfigured(OrchestrationError):
    """A chain step arrived at a process that has no ledger configured."""

    def __init__(self, saga: str, step: str, missing: str = "") -> None:
        self.saga, self.step = saga, step
        super().__init__(
            f"step {step!r} of saga {saga!r} is a chain step and this process has no ledger: "
            "set SAGA_FABRIC_PROFILE (connection profile path), SAGA_FABRIC_MSP_ID and "
            "SAGA_FABRIC_MSP_DIR (signcerts + keystore), and SAGA_FABRIC_CHANNEL if not "
            f"'mychannel'{f' ({missing})' if missing else ''}"
        )
