"""The Fabric protobuf modules, typed for mypy.

``hyperledger-fabric-protos`` ships no stubs, and its generated modules create
their classes at run time, so mypy would report every message as missing.
They are loaded here as ``Any`` once; the aliases keep signatures readable.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any, TypeAlias

common_pb2: Any = import_module("fabric_protos.common.common_pb2")
gateway_pb2: Any = import_module("fabric_protos.gateway.gateway_pb2")
gateway_pb2_grpc: Any = import_module("fabric_protos.gateway.gateway_pb2_grpc")
identities_pb2: Any = import_module("fabric_protos.msp.identities_pb2")
chaincode_pb2: Any = import_module("fabric_protos.peer.chaincode_pb2")
proposal_pb2: Any = import_module("fabric_protos.peer.proposal_pb2")
proposal_response_pb2: Any = import_module("fabric_protos.peer.proposal_response_pb2")
transaction_pb2: Any = import_module("fabric_protos.peer.transaction_pb2")

Envelope: TypeAlias = Any
ChannelHeader: TypeAlias = Any
SignedProposal: TypeAlias = Any
EndorseRequest: TypeAlias = Any
EvaluateRequest: TypeAlias = Any
EvaluateResponse: TypeAlias = Any
SubmitRequest: TypeAlias = Any
SignedCommitStatusRequest: TypeAlias = Any
CommitStatusResponse: TypeAlias = Any
