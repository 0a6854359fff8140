"""Gateway request and response messages, shared by the blocking and asyncio clients."""

from __future__ import annotations

from saga.adapters.fabric import protos
from saga.adapters.fabric.errors import EvaluateError
from saga.adapters.fabric.identity import SigningIdentity
from saga.adapters.fabric.proposal import Proposal
from saga.adapters.fabric.protos import gateway_pb2, transaction_pb2
from saga.ports.ledger import CommitResult

# The chaincode shim's threshold: a response status of 400 or more is an error.
ERROR_THRESHOLD = 400


def validation_code_name(code: int) -> str:
    try:
        return str(transaction_pb2.TxValidationCode.Name(code))
    except ValueError:
        return f"UNKNOWN_CODE_{code}"


def endorse_request(proposal: Proposal) -> protos.EndorseRequest:
    return gateway_pb2.EndorseRequest(
        transaction_id=proposal.txid,
        channel_id=proposal.channel,
        proposed_transaction=proposal.signed_proposal(),
        endorsing_organizations=list(proposal.endorsing_orgs),
    )


def evaluate_request(proposal: Proposal) -> protos.EvaluateRequest:
    return gateway_pb2.EvaluateRequest(
        transaction_id=proposal.txid,
        channel_id=proposal.channel,
        proposed_transaction=proposal.signed_proposal(),
        target_organizations=list(proposal.endorsing_orgs),
    )


def submit_request(txid: str, channel: str, envelope: bytes) -> protos.SubmitRequest:
    request = gateway_pb2.SubmitRequest(transaction_id=txid, channel_id=channel)
    request.prepared_transaction.ParseFromString(envelope)
    return request


def signed_commit_status_request(
    identity: SigningIdentity, channel: str, txid: str
) -> protos.SignedCommitStatusRequest:
    """The gateway only tells a commit status to a client that signs the request."""
    request = gateway_pb2.CommitStatusRequest(
        transaction_id=txid, channel_id=channel, identity=identity.creator
    ).SerializeToString()
    return gateway_pb2.SignedCommitStatusRequest(request=request, signature=identity.sign(request))


def commit_result(txid: str, response: protos.CommitStatusResponse) -> CommitResult:
    code = int(response.result)
    return CommitResult(
        txid=txid,
        code=code,
        code_name=validation_code_name(code),
        block_number=int(response.block_number),
    )


def evaluate_payload(proposal: Proposal, response: protos.EvaluateResponse) -> bytes:
    status = int(response.result.status)
    if status >= ERROR_THRESHOLD:
        raise EvaluateError(
            txid=proposal.txid,
            code=None,
            status_message=f"chaincode response {status}: {response.result.message}",
        )
    return bytes(response.result.payload)
