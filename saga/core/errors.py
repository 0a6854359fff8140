"""The one error root, and the pure core's errors.

Every error this package raises on purpose derives from `SagaError`. Each layer
names its own errors; a failure that crosses a layer is translated at the
boundary (the Fabric adapter raises its GatewayError subclasses, which are the
ledger port's errors; the chain executor turns a ledger port error into a chain
step failure the state machine records), so one failure has one name per layer.
An error that also was a ValueError, LookupError or RuntimeError still is.

    SagaError                                  saga.core.errors
    ├── OrchestrationError                     the core's and the application's refusals
    │   ├── DefinitionError, UnknownSaga, UnknownStep          saga.core.errors
    │   ├── InvalidInput, IdempotencyConflict, InvalidIdempotencyKey,
    │   │   SagaNotFound, OperatorActionRefused                saga.app.errors
    │   └── LedgerNotConfigured                                saga.app.chain.errors
    ├── MalformedMessage (ValueError)          saga.core.step_message: to the dead-letter queue
    ├── ChainStepError                         saga.app.chain.errors: what a chain step fails
    │   ├── ChaincodeRefused                   with (the state machine records the name;
    │   ├── EndorsementFailed                  retry policies name them)
    │   ├── LedgerUnavailable, TransactionsInvalid, LedgerOutcomeUnknown
    ├── DlqError                               saga.app.dlq
    ├── ports (what the application catches)
    │   ├── StoreUnavailable, DuplicateIdempotencyKey          saga.ports.store
    │   ├── PublishFailed                                      saga.ports.broker
    │   └── LedgerError                                        saga.ports.ledger
    │       ├── EndorseFailed, EvaluateFailed, SubmitFailed, StatusUnknown
    │       └── GatewayError (the Fabric adapter's, saga.adapters.fabric.errors):
    │           EndorseError (also EndorseFailed), EvaluateError, SubmitError,
    │           CommitStatusError (also StatusUnknown); CommitError
    ├── adapters
    │   ├── TransactionNotFound (LookupError), ClientTlsError (ValueError)   fabric
    │   ├── BrokerUnavailable                                  rabbitmq.queues
    │   └── BadFilter (ValueError), MigrationsNotFound (RuntimeError),
    │       StepEndedTransaction, StepAbortedTransaction (RuntimeError)      sql
    ├── configuration and entry points
    │   ├── ConfigError (ValueError)                           saga.config
    │   ├── FailpointError (RuntimeError), FailpointConfigError (ValueError) saga.failpoints
    │   ├── BodyRejected                                       entrypoints.http.limits
    │   ├── StepSetbackError: StepFailedError, StepRetriedError   entrypoints.celery
    │   ├── Poison                                             entrypoints.celery.consumer
    │   ├── ProcessFileError (ValueError), ProcessSetError (RuntimeError)    entrypoints.processes
    │   └── DemoLedgerError (RuntimeError)                     entrypoints.demo_ledger
    └── SagaClientError (the Python client's, saga.client): BadRequestError,
        UnauthorizedError, UnknownSagaError, SagaNotFoundError, IdempotencyConflictError,
        PayloadTooLargeError, InvalidPayloadError, ServiceUnavailableError

Code that refuses a request catches `OrchestrationError`, never `SagaError`: a store
outage is a SagaError too, and must not be taken for a refusal.
"""

from __future__ import annotations


class SagaError(Exception):
    """Base class of every error this package raises on purpose (the tree above)."""


class OrchestrationError(SagaError):
    """The core or the application refuses: a definition, a saga or a request is wrong."""


class DefinitionError(OrchestrationError):
    """A saga definition is inconsistent; raised when it is declared (at import)."""


class UnknownSaga(OrchestrationError):
    """No saga (or no such version of it) is registered under that name."""

    def __init__(self, name: str, version: int | None = None) -> None:
        self.name = name
        self.version = version
        what = f"{name!r}" if version is None else f"{name!r} version {version}"
        super().__init__(
            f"unknown saga {what}; register its definition in the application's registry "
            "(see `saga list-definitions`)"
        )


class UnknownStep(OrchestrationError):
    def __init__(self, saga: str, version: int, step: str) -> None:
        self.saga, self.version, self.step = saga, version, step
        super().__init__(f"saga {saga!r} version {version} has no step {step!r}")
