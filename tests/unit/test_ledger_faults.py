"""The ledger fault table: every error text a real Fabric 2.5 gateway was seen to return
(FABRIC-FACTS.md, tests/fabric/real/) or that fabric's internal/pkg/gateway writes for
the case, mapped to what it means for a saga step."""

from __future__ import annotations

import pytest

from saga.core.ledger_faults import FaultKind, Operation, classify

E, S, C, V = Operation.ENDORSE, Operation.SUBMIT, Operation.COMMIT_STATUS, Operation.EVALUATE
REFUSED, REJECTED = FaultKind.REFUSED, FaultKind.REJECTED
MISCONFIGURED, UNAVAILABLE = FaultKind.MISCONFIGURED, FaultKind.UNAVAILABLE

CASES = [
    # (operation, code, message, details, kind)
    # The chaincode's own answers travel as "chaincode response <status>, <message>".
    (
        E,
        "ABORTED",
        "failed to endorse transaction, see attached details for more info",
        ["chaincode response 400, INVALID_ARGUMENT: amount must be positive"],
        REFUSED,
    ),
    (
        E,
        "ABORTED",
        "failed to endorse transaction, see attached details for more info",
        ['chaincode response 409, ALREADY_RECORDED:{"key":"k","txid":"t"}'],
        REFUSED,
    ),
    (
        E,
        "ABORTED",
        "failed to endorse transaction, see attached details for more info",
        ["chaincode response 500, something went wrong in the contract"],
        REJECTED,
    ),
    # Chaincode process down: the peer cannot launch it, within ~20 ms.
    (
        E,
        "ABORTED",
        "failed to endorse transaction, see attached details for more info",
        [
            "error in simulation: failed to execute transaction abc: could not launch "
            "chaincode sagafacts_1.0:1234: error building chaincode: error creating grpc "
            "connection to 127.0.0.1:9999: dial tcp 127.0.0.1:9999: connect: connection refused"
        ],
        UNAVAILABLE,
    ),
    # The other org's peer down: first the endorsement round fails, then the gateway
    # has dropped the peer and no plan satisfies the policy.
    (
        E,
        "ABORTED",
        "failed to collect enough transaction endorsements, see attached details for more info",
        ["rpc error: code = Unavailable desc = connection error: connection refused"],
        UNAVAILABLE,
    ),
    (
        E,
        "FAILED_PRECONDITION",
        "no combination of peers can be derived which satisfy the endorsement policy: "
        "cannot satisfy any principal combination",
        [],
        UNAVAILABLE,
    ),
    (
        E,
        "DEADLINE_EXCEEDED",
        "endorsement timeout expired while collecting endorsements",
        [],
        UNAVAILABLE,
    ),
    (
        E,
        "UNAVAILABLE",
        "failed to connect to all addresses; last error: connection refused",
        [],
        UNAVAILABLE,
    ),
    (E, "RESOURCE_EXHAUSTED", "too many requests", [], UNAVAILABLE),
    (E, "ABORTED", "failed to endorse transaction", ["chaincode stream terminated"], UNAVAILABLE),
    # Unknown chaincode: discovery has no metadata for it (the same wrapper text as a
    # peer outage, told apart by the cause).
    (
        E,
        "FAILED_PRECONDITION",
        "no combination of peers can be derived which satisfy the endorsement policy: "
        "No metadata was found for chaincode nosuchcc in channel mychannel",
        [],
        MISCONFIGURED,
    ),
    (
        E,
        "ABORTED",
        "failed to endorse transaction",
        ["make sure the chaincode nosuchcc has been successfully defined on channel mychannel"],
        MISCONFIGURED,
    ),
    # Unknown channel: Evaluate says UNAVAILABLE, CommitStatus PERMISSION_DENIED.
    (
        V,
        "UNAVAILABLE",
        "failed to get config for channel [nochannel]: channel does not exist",
        [],
        MISCONFIGURED,
    ),
    (
        C,
        "PERMISSION_DENIED",
        "failed evaluating policy on signed data during check policy",
        [],
        MISCONFIGURED,
    ),
    (
        E,
        "ABORTED",
        "failed to endorse transaction",
        ["channel 'nochannel' not found"],
        MISCONFIGURED,
    ),
    (
        E,
        "FAILED_PRECONDITION",
        "error validating proposal: access denied: channel [mychannel] creator org unknown, "
        "creator is malformed",
        [],
        MISCONFIGURED,
    ),
    (E, "UNIMPLEMENTED", "unknown service gateway.Gateway", [], MISCONFIGURED),
    (E, "UNAUTHENTICATED", "no client certificate", [], MISCONFIGURED),
    # Orderer answers.
    (
        S,
        "ABORTED",
        "received unsuccessful response from orderer: status=FORBIDDEN, info=implicit policy "
        "evaluation failed - 0 sub-policies were satisfied, but this policy requires 1 of the "
        "'Writers' sub-policies to be satisfied",
        [],
        REJECTED,
    ),
    (
        S,
        "ABORTED",
        "received unsuccessful response from orderer: status=SERVICE_UNAVAILABLE, "
        "info=no Raft leader",
        [],
        UNAVAILABLE,
    ),
    (S, "UNAVAILABLE", "no orderer nodes available", [], UNAVAILABLE),
    (
        S,
        "DEADLINE_EXCEEDED",
        "submit timeout expired while broadcasting to ordering service",
        [],
        UNAVAILABLE,
    ),
    (
        E,
        "ABORTED",
        "failed to endorse transaction",
        ["duplicate transaction found [abc]"],
        REJECTED,
    ),
    (
        E,
        "INVALID_ARGUMENT",
        "the proposed transaction must contain a signed proposal",
        [],
        REJECTED,
    ),
    # Seen from a real Fabric 2.5.16 network by tests/fabric/real/test_differential.py,
    # word for word (ports and ids from one run).
    (
        V,
        "UNKNOWN",
        "evaluate call to endorser returned error: chaincode response 400, "
        "INVALID_ARGUMENT:GetRecord takes (idem_key), got 0 argument(s)",
        ["chaincode response 400, INVALID_ARGUMENT:GetRecord takes (idem_key), got 0 argument(s)"],
        REFUSED,
    ),
    (
        E,
        "ABORTED",
        "failed to endorse transaction, see attached details for more info",
        [
            "error in simulation: failed to execute transaction b26d6cd7: could not launch "
            "chaincode sagafacts_1.0:0b7842ef: connection to sagafacts_1.0:0b7842ef failed: "
            "error cannot create connection for sagafacts_1.0:0b7842ef: error creating grpc "
            "connection to 127.0.0.1:45281: failed to create new connection: connection error: "
            'desc = "transport: error while dialing: dial tcp 127.0.0.1:45281: connect: '
            'connection refused"'
        ],
        UNAVAILABLE,
    ),
    (
        E,
        "ABORTED",
        "failed to collect enough transaction endorsements, see attached details for more info",
        [
            'rpc error: code = Unavailable desc = connection error: desc = "transport: Error '
            'while dialing: dial tcp 127.0.0.1:54265: connect: connection refused"'
        ],
        UNAVAILABLE,
    ),
    (
        E,
        "FAILED_PRECONDITION",
        "no combination of peers can be derived which satisfy the endorsement policy: no peer "
        "combination can satisfy the endorsement policy",
        [],
        UNAVAILABLE,
    ),
    (
        V,
        "UNAVAILABLE",
        "failed to evaluate transaction, see attached details for more info",
        [
            'rpc error: code = Unavailable desc = connection error: desc = "transport: Error '
            'while dialing: dial tcp 127.0.0.1:54265: connect: connection refused"'
        ],
        UNAVAILABLE,
    ),
    # Evaluate aimed at an org whose only peer gossip has dropped (the same words as for
    # a chaincode no peer has: the table waits).
    (
        V,
        "FAILED_PRECONDITION",
        "no peers available to evaluate chaincode sagafacts in channel mychannel",
        [],
        UNAVAILABLE,
    ),
    (
        S,
        "UNAVAILABLE",
        "no orderers could successfully process transaction",
        [
            'rpc error: code = Unavailable desc = connection error: desc = "transport: Error '
            f'while dialing: dial tcp 127.0.0.1:{port}: connect: connection refused"'
            for port in (52029, 47199, 37643)
        ],
        UNAVAILABLE,
    ),
    (
        S,
        "FAILED_PRECONDITION",
        "failed to get config for channel [nochannel]: could not get last config for channel "
        "nochannel",
        [],
        MISCONFIGURED,
    ),
    (
        C,
        "PERMISSION_DENIED",
        "Failed to get policy manager for channel [nochannel]",
        [],
        MISCONFIGURED,
    ),
    # Unrecognised: a definite answer, spent from the step's business retries.
    (E, "ABORTED", "failed to endorse transaction", ["something new"], REJECTED),
    (E, None, "", [], REJECTED),
]


@pytest.mark.parametrize(("operation", "code", "message", "details", "kind"), CASES)
def test_each_gateway_answer_has_the_kind_it_means(
    operation: Operation, code: str | None, message: str, details: list[str], kind: FaultKind
) -> None:
    assert classify(operation, code, message, details).kind is kind


def test_a_misconfiguration_names_what_to_check() -> None:
    fault = classify(V, "UNAVAILABLE", "failed to get config for channel [x]: no such channel")
    assert "SAGA_FABRIC_CHANNEL" in fault.meaning
    fault = classify(C, "PERMISSION_DENIED", "access denied")
    assert "SAGA_FABRIC_MSP_ID" in fault.meaning


def test_the_fabric_adapter_attaches_the_fault_to_its_errors() -> None:
    import grpc

    from saga.adapters.fabric.errors import EndorseError, ErrorDetail

    error = EndorseError(
        txid="t1",
        code=grpc.StatusCode.ABORTED,
        status_message="failed to endorse transaction, see attached details for more info",
        details=(
            ErrorDetail("peer0", "Org1MSP", "could not launch chaincode x: connection refused"),
        ),
    )
    assert error.fault.kind is FaultKind.UNAVAILABLE and error.retryable
    import pickle

    again = pickle.loads(pickle.dumps(error))
    assert again.fault == error.fault and again.txid == "t1"
