"""Which part of the network a failed call names, from a real Fabric 2.5.16 gateway's
words (seen by tests/fabric/real/test_ledger_health_real.py and FABRIC-FACTS.md)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from saga.core.ledger_parts import Part, part_down


@dataclass(frozen=True)
class Said:
    address: str
    msp_id: str
    message: str


CC_ID = "sagafacts_1.0:512d5553d3011cb009669fd3d7dc6bfbaeb3b777e309657fa5d50943be3ef9c6"
CHAINCODE_DOWN = Said(
    "127.0.0.1:59093",
    "Org1MSP",
    f"error in simulation: failed to execute transaction f4a4: could not launch chaincode "
    f"{CC_ID}: connection to {CC_ID} failed: error cannot create connection for {CC_ID}: "
    "error creating grpc connection to 127.0.0.1:43579: failed to create new connection: "
    'connection error: desc = "transport: error while dialing: dial tcp 127.0.0.1:43579: '
    'connect: connection refused"',
)
ORG2_DOWN = Said(
    "peer0.org2.example.com:51201",
    "Org2MSP",
    'rpc error: code = Unavailable desc = connection error: desc = "transport: Error while '
    'dialing: dial tcp 127.0.0.1:51201: connect: connection refused"',
)


def test_a_chaincode_that_is_not_running_is_named_with_its_address() -> None:
    found = part_down(
        "ABORTED",
        "failed to endorse transaction, see attached details for more info",
        [CHAINCODE_DOWN],
        chaincode="sagafacts",
    )
    assert found is not None and found.part is Part.CHAINCODE
    assert found.says == (
        "chaincode sagafacts is not running: the peer could not connect to it at 127.0.0.1:43579"
    )
    # Without the caller's name, the label of the package id the peer gave.
    unnamed = part_down("ABORTED", "failed to endorse transaction", [CHAINCODE_DOWN])
    assert unnamed is not None and "chaincode sagafacts_1.0 is not running" in unnamed.says


def test_the_other_orgs_peer_is_named_while_the_gateway_still_tries_it_and_after() -> None:
    first = part_down(
        "ABORTED",
        "failed to collect enough transaction endorsements, see attached details for more info",
        [ORG2_DOWN],
    )
    assert first is not None and first.part is Part.ENDORSING_PEER
    assert "(Org2MSP at peer0.org2.example.com:51201)" in first.says
    later = part_down(
        "FAILED_PRECONDITION",
        "no combination of peers can be derived which satisfy the endorsement policy: "
        "no peer combination can satisfy the endorsement policy",
    )
    assert later is not None and later.part is Part.ENDORSING_PEER


@pytest.mark.parametrize(
    ("code", "message", "part"),
    [
        ("UNAVAILABLE", "no orderers could successfully process transaction", Part.ORDERER),
        (
            "UNAVAILABLE",
            "failed to connect to all addresses; last error: connection refused",
            Part.GATEWAY_PEER,
        ),
        ("DEADLINE_EXCEEDED", "timeout expired while executing transaction", Part.CHAINCODE),
    ],
)
def test_orderers_gateway_peer_and_a_silent_chaincode(code: str, message: str, part: Part) -> None:
    found = part_down(code, message)
    assert found is not None and found.part is part, found


def test_a_refusal_or_a_misconfiguration_names_no_part() -> None:
    assert part_down("UNKNOWN", "chaincode response 400, INVALID_ARGUMENT:amount") is None
    assert part_down("FAILED_PRECONDITION", "no metadata was found for chaincode nope") is None
