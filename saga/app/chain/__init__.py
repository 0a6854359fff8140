"""Chain steps: the prepare / persist / submit / verify protocol over the ledger port.

`ChainStepExecutor` runs a chain step (or its reversal) for the orchestrator;
`sagafacts` holds the conventions of the sagafacts chaincode it talks to.
Nothing here imports gRPC: the ledger comes in through `saga.ports.ledger.Ledger`.
"""

from saga.app.chain.errors import (
    ChaincodeRefused,
    ChainStepError,
    EndorsementFailed,
    LedgerNotConfigured,
    LedgerOutcomeUnknown,
    LedgerUnavailable,
    TransactionsInvalid,
)
from saga.app.chain.executor import ChainSettings, ChainStepExecutor, ChainStepHooks

__all__ = [
    "ChainSettings",
    "ChainStepError",
    "ChainStepExecutor",
    "ChainStepHooks",
    "ChaincodeRefused",
    "EndorsementFailed",
    "LedgerNotConfigured",
    "LedgerOutcomeUnknown",
    "LedgerUnavailable",
    "TransactionsInvalid",
]
