"""The generated Fabric protobuf modules, typed as Any.

`hyperledger-fabric-protos` ships py.typed but no .pyi stubs, so mypy would see every
message class as missing; importing through here keeps the rest of the package checked.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

chaincode_event_pb2: Any = import_module("fabric_protos.peer.chaincode_event_pb2")
chaincode_pb2: Any = import_module("fabric_protos.peer.chaincode_pb2")
common_pb2: Any = import_module("fabric_protos.common.common_pb2")
configtx_pb2: Any = import_module("fabric_protos.common.configtx_pb2")
gateway_pb2: Any = import_module("fabric_protos.gateway.gateway_pb2")
gateway_pb2_grpc: Any = import_module("fabric_protos.gateway.gateway_pb2_grpc")
identities_pb2: Any = import_module("fabric_protos.msp.identities_pb2")
kv_rwset_pb2: Any = import_module("fabric_protos.ledger.rwset.kvrwset.kv_rwset_pb2")
ledger_pb2: Any = import_module("fabric_protos.common.ledger_pb2")
proposal_pb2: Any = import_module("fabric_protos.peer.proposal_pb2")
proposal_response_pb2: Any = import_module("fabric_protos.peer.proposal_response_pb2")
rwset_pb2: Any = import_module("fabric_protos.ledger.rwset.rwset_pb2")
status_pb2: Any = import_module("google.rpc.status_pb2")
transaction_pb2: Any = import_module("fabric_protos.peer.transaction_pb2")
