"""Fabric Gateway client: the ledger port's adapter for Hyperledger Fabric.

Nothing here opens a connection at import time; ``GatewayClient.connect`` and
``AsyncGatewayClient.connect`` do, when called.
"""

from saga.adapters.fabric.aio import AsyncGatewayClient
from saga.adapters.fabric.connection import (
    ConnectionProfile,
    GatewayEndpoint,
    load_connection_profile,
    parse_connection_profile,
)
from saga.adapters.fabric.errors import (
    CommitError,
    CommitStatusError,
    EndorseError,
    ErrorDetail,
    EvaluateError,
    GatewayError,
    SubmitError,
)
from saga.adapters.fabric.gateway import Deadlines, GatewayClient
from saga.adapters.fabric.identity import SigningIdentity
from saga.adapters.fabric.proposal import Proposal, build_proposal
from saga.adapters.fabric.transaction import PreparedTransaction

__all__ = [
    "AsyncGatewayClient",
    "CommitError",
    "CommitStatusError",
    "ConnectionProfile",
    "Deadlines",
    "EndorseError",
    "ErrorDetail",
    "EvaluateError",
    "GatewayClient",
    "GatewayEndpoint",
    "GatewayError",
    "PreparedTransaction",
    "Proposal",
    "SigningIdentity",
    "SubmitError",
    "build_proposal",
    "load_connection_profile",
    "parse_connection_profile",
]
