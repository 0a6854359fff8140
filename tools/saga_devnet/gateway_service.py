"""The `gateway.Gateway` gRPC service of one peer org, after internal/pkg/gateway in Fabric 2.5.

Status codes and messages follow Fabric's gateway so that clients' error handling (which
branches on them) behaves the same against the devnet as against a real peer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2

from saga_devnet.blocks import tx_codes
from saga_devnet.commit_notifier import CommitNotifier
from saga_devnet.endorser import (
    SYSTEM_CHAINCODES,
    Endorser,
    ProposalRejected,
    UnpackedProposal,
    unpack,
)
from saga_devnet.faults import Faults
from saga_devnet.ledger_store import LedgerStore
from saga_devnet.msp import IdentityError, MembershipRegistry
from saga_devnet.orderer import Orderer
from saga_devnet.policy import Rule, orgs_to_endorse
from saga_devnet.protos import (
    chaincode_event_pb2,
    common_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    proposal_pb2,
    proposal_response_pb2,
    status_pb2,
    transaction_pb2,
)
from saga_devnet.txparse import parse_envelope

log = logging.getLogger(__name__)


class RpcError(Exception):
    def __init__(
        self, code: grpc.StatusCode, message: str, details: Sequence[gateway_pb2.ErrorDetail] = ()
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = list(details)


async def _abort(context: grpc.aio.ServicerContext, err: RpcError) -> None:
    metadata: tuple[tuple[str, bytes], ...] = ()
    if err.details:
        # google.rpc.Status in the grpc-status-details-bin trailer, as Go's status.WithDetails.
        st = status_pb2.Status(code=err.code.value[0], message=err.message)
        for d in err.details:
            packed = any_pb2.Any()
            packed.Pack(d)
            st.details.append(packed)
        metadata = (("grpc-status-details-bin", st.SerializeToString()),)
    await context.abort(err.code, err.message, trailing_metadata=metadata)


@dataclass
class Outcome:
    endorser: Endorser
    response: proposal_response_pb2.ProposalResponse | None
    code: grpc.StatusCode
    message: str

    @property
    def ok(self) -> bool:
        return self.code == grpc.StatusCode.OK

    def detail(self) -> gateway_pb2.ErrorDetail:
        return gateway_pb2.ErrorDetail(
            address=self.endorser.address, msp_id=self.endorser.org.msp_id, message=self.message
        )


async def _call(
    endorser: Endorser, signed: proposal_pb2.SignedProposal, timeout: float, faults: Faults
) -> Outcome:
    """ProcessProposal and the gateway's reading of its result (responseStatus in apiutils.go)."""
    if faults.peer_state(endorser.org.msp_id) != "up":
        return Outcome(
            endorser, None, grpc.StatusCode.UNAVAILABLE, refused_rpc(endorser.listen_address)
        )
    try:
        resp = await asyncio.wait_for(endorser.process(signed), timeout)
    except ProposalRejected as exc:
        return Outcome(endorser, None, grpc.StatusCode.FAILED_PRECONDITION, str(exc))
    except TimeoutError:
        return Outcome(
            endorser,
            None,
            grpc.StatusCode.UNAVAILABLE,
            "rpc error: code = DeadlineExceeded desc = context deadline exceeded",
        )
    status = resp.response.status
    if status < 200 or status >= 400:
        if not resp.payload and status == 500:
            return Outcome(endorser, resp, grpc.StatusCode.ABORTED, resp.response.message)
        return Outcome(
            endorser,
            resp,
            grpc.StatusCode.UNKNOWN,
            f"chaincode response {status}, {resp.response.message}",
        )
    return Outcome(endorser, resp, grpc.StatusCode.OK, "")


class GatewayService(gateway_pb2_grpc.GatewayServicer):
    ENDORSEMENT_TIMEOUT = 10.0

    def __init__(
        self,
        *,
        local: Endorser,
        endorsers: dict[str, Endorser],
        channel: str,
        policy_of: dict[str, Rule],
        registry: MembershipRegistry,
        store: LedgerStore,
        orderer: Orderer,
        notifier: CommitNotifier,
        faults: Faults,
        orderer_endpoint: str = "",
        orderer_msp_id: str = "OrdererMSP",
    ) -> None:
        self._local = local
        # The orderer as the channel config names it (OrdererAddresses), for Submit's details.
        self._orderer_endpoint = orderer_endpoint
        self._orderer_msp_id = orderer_msp_id
        self._endorsers = endorsers
        self._channel = channel
        self._policy_of = policy_of
        self._registry = registry
        self._store = store
        self._orderer = orderer
        self._notifier = notifier
        self._faults = faults

    # -- Endorse ----------------------------------------------------------------------------

    async def Endorse(
        self, request: gateway_pb2.EndorseRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.EndorseResponse:
        try:
            return await self._endorse(request)
        except RpcError as err:
            await _abort(context, err)
            raise  # unreachable: abort raises

    async def _endorse(self, request: gateway_pb2.EndorseRequest) -> gateway_pb2.EndorseResponse:
        signed = request.proposed_transaction
        if not signed.proposal_bytes:
            raise RpcError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "the proposed transaction must contain a signed proposal",
            )
        try:
            up = unpack(signed)
        except ValueError as exc:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc
        name = up.chaincode_name
        channel = up.channel_header.channel_id
        outcomes: list[Outcome] = []
        if request.endorsing_organizations:
            # registry.planForOrgs: orgs with a live peer that has the chaincode, on the channel.
            orgs = list(request.endorsing_organizations)
            unknown = [o for o in orgs if o not in self._planable(channel, name)]
            if unknown:
                raise RpcError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"failed to find any endorsing peers for org(s): {', '.join(unknown)}",
                )
        else:
            # planFromFirstEndorser: no local endorser for the chaincode means discovery's
            # plan, which fails without the chaincode's metadata on the channel.
            if channel != self._channel or not self._has_chaincode(name):
                raise RpcError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"{NO_COMBINATION}: No metadata was found for chaincode {name} in channel "
                    f"{channel}",
                )
            first = await _call(self._local, signed, self.ENDORSEMENT_TIMEOUT, self._faults)
            if not first.ok:
                raise RpcError(
                    grpc.StatusCode.ABORTED,
                    "failed to endorse transaction, see attached details for more info",
                    [first.detail()],
                )
            outcomes.append(first)
            rule = self._policy_of.get(name)
            live = self._planable(channel, name)
            needed = (
                orgs_to_endorse(rule, live, self._local.org.msp_id)
                if rule is not None
                else [self._local.org.msp_id]
            )
            if needed is None:
                raise RpcError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"{NO_COMBINATION}: no peer combination can satisfy the endorsement policy",
                )
            orgs = [o for o in needed if o != self._local.org.msp_id]
        failure_msg = "failed to collect enough transaction endorsements"
        calls = [
            _call(self._endorsers[o], signed, self.ENDORSEMENT_TIMEOUT, self._faults) for o in orgs
        ]
        outcomes += await asyncio.gather(*calls)
        failed = [o for o in outcomes if not o.ok]
        if failed:
            raise RpcError(
                grpc.StatusCode.ABORTED,
                f"{failure_msg}, see attached details for more info",
                [o.detail() for o in failed],
            )
        payloads = {o.response.payload for o in outcomes if o.response is not None}
        if len(payloads) != 1:
            raise RpcError(
                grpc.StatusCode.ABORTED,
                f"{failure_msg}, see attached details for more info",
                [
                    gateway_pb2.ErrorDetail(
                        address=o.endorser.address,
                        msp_id=o.endorser.org.msp_id,
                        message="ProposalResponsePayloads do not match",
                    )
                    for o in outcomes[1:]
                ],
            )
        endorsements: dict[bytes, proposal_response_pb2.Endorsement] = {}
        for o in outcomes:
            assert o.response is not None
            endorsements.setdefault(o.response.endorsement.endorser, o.response.endorsement)
        return gateway_pb2.EndorseResponse(
            prepared_transaction=prepare_transaction(
                up, payloads.pop(), list(endorsements.values())
            )
        )

    def _has_chaincode(self, name: str) -> bool:
        return name in self._policy_of or name in SYSTEM_CHAINCODES

    def _planable(self, channel: str, chaincode: str) -> list[str]:
        """The orgs the gateway can plan with (registry.endorsersByOrg): on the channel, the
        chaincode installed, and the peer still in gossip's view (an unreachable peer is)."""
        if channel != self._channel or not self._has_chaincode(chaincode):
            return []
        return [m for m in self._endorsers if self._faults.peer_state(m) != "gone"]

    # -- Submit -----------------------------------------------------------------------------

    async def Submit(
        self, request: gateway_pb2.SubmitRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.SubmitResponse:
        try:
            self._check_submit(request)
            if self._faults.orderer_down:
                # submitNonBFT: every orderer of the channel config tried, each refused.
                raise RpcError(
                    grpc.StatusCode.UNAVAILABLE,
                    "no orderers could successfully process transaction",
                    [
                        gateway_pb2.ErrorDetail(
                            address=self._orderer_endpoint,
                            msp_id=self._orderer_msp_id,
                            message=refused_rpc(self._orderer_endpoint),
                        )
                    ],
                )
        except RpcError as err:
            await _abort(context, err)
        self._orderer.submit(request.prepared_transaction.SerializeToString())
        self._faults.maybe_crash("after_submit")
        if self._faults.take("drop_submit_reply"):
            log.warning("fault: dropping the Submit reply for %s", request.transaction_id)
            if self._faults.drop_submit_mode == "hang":
                await asyncio.Event().wait()  # until the caller's deadline cancels the call
            await context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset by peer")
        return gateway_pb2.SubmitResponse()

    def _check_submit(self, request: gateway_pb2.SubmitRequest) -> None:
        env = request.prepared_transaction
        if not request.HasField("prepared_transaction"):
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "a prepared transaction is required")
        if not env.signature:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "prepared transaction must be signed")
        if request.channel_id != self._channel:
            raise RpcError(grpc.StatusCode.FAILED_PRECONDITION, _no_config(request.channel_id))
        # The orderer's Broadcast filters: well-formed, and signed by a channel writer.
        try:
            tx = parse_envelope(env.SerializeToString())
            creator = self._registry.deserialize(tx.signature_header.creator)
            signed_ok = creator.verify(env.signature, env.payload)
        except (ValueError, IdentityError):
            signed_ok = False
        if not signed_ok:
            status = common_pb2.Status.Name(common_pb2.FORBIDDEN)
            raise RpcError(
                grpc.StatusCode.ABORTED,
                f"received unsuccessful response from orderer: status={status}, info=implicit "
                "policy evaluation failed - 0 sub-policies were satisfied, but this policy "
                "requires 1 of the 'Writers' sub-policies to be satisfied: permission denied",
            )

    # -- CommitStatus -----------------------------------------------------------------------

    async def CommitStatus(
        self, request: gateway_pb2.SignedCommitStatusRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.CommitStatusResponse:
        try:
            req = self._check_signed(
                request.request,
                request.signature,
                gateway_pb2.CommitStatusRequest(),
                "commit status",
            )
        except RpcError as err:
            await _abort(context, err)
            raise
        assert isinstance(req, gateway_pb2.CommitStatusRequest)
        if not req.transaction_id:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "transaction ID should not be empty"
            )
        if self._faults.take("commit_status_hang"):
            log.warning("fault: CommitStatus for %s will not answer", req.transaction_id)
            await asyncio.Event().wait()
        found = self._store.tx_status(req.transaction_id)
        if found is not None:
            code, block = found[0], found[1]
        else:
            fut = self._notifier.wait_tx(req.transaction_id)
            try:
                code, block = await fut
            finally:
                self._notifier.forget(req.transaction_id, fut)
        return gateway_pb2.CommitStatusResponse(result=code, block_number=block)

    def _check_signed(
        self,
        raw: bytes,
        signature: bytes,
        msg: gateway_pb2.CommitStatusRequest | gateway_pb2.ChaincodeEventsRequest,
        what: str,
    ) -> gateway_pb2.CommitStatusRequest | gateway_pb2.ChaincodeEventsRequest:
        if not raw:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"a {what} request is required")
        try:
            msg.ParseFromString(raw)
        except Exception as exc:
            raise RpcError(
                grpc.StatusCode.INVALID_ARGUMENT, f"invalid {what} request: {exc}"
            ) from exc
        if not msg.identity:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "no identity provided")
        if not msg.channel_id:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "no channel ID provided")
        # The channel's Readers ACL (core/policy/policy.go CheckPolicyBySignedData): an
        # unknown channel has no policy manager, so it is a permission error too.
        if msg.channel_id != self._channel:
            raise RpcError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"Failed to get policy manager for channel [{msg.channel_id}]",
            )
        try:
            identity = self._registry.deserialize(msg.identity)
            ok = identity.verify(signature, raw)
        except IdentityError:
            ok = False
        if not ok:
            raise RpcError(
                grpc.StatusCode.PERMISSION_DENIED,
                "Failed evaluating policy on signed data during check policy on channel "
                f"[{self._channel}] with policy [/Channel/Application/Readers]: [implicit policy "
                "evaluation failed - 0 sub-policies were satisfied, but this policy requires 1 "
                "of the 'Readers' sub-policies to be satisfied]",
            )
        return msg

    # -- Evaluate ---------------------------------------------------------------------------

    async def Evaluate(
        self, request: gateway_pb2.EvaluateRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.EvaluateResponse:
        try:
            return await self._evaluate(request)
        except RpcError as err:
            await _abort(context, err)
            raise

    async def _evaluate(self, request: gateway_pb2.EvaluateRequest) -> gateway_pb2.EvaluateResponse:
        signed = request.proposed_transaction
        try:
            if not signed.proposal_bytes:
                raise ValueError("a signed proposal is required")
            up = unpack(signed)
        except ValueError as exc:
            raise RpcError(
                grpc.StatusCode.INVALID_ARGUMENT, f"failed to unpack transaction proposal: {exc}"
            ) from exc
        channel, name = up.channel_header.channel_id, up.chaincode_name
        if channel != self._channel:  # registry.connectChannelPeers finds no channel config
            raise RpcError(grpc.StatusCode.UNAVAILABLE, _no_config(channel))
        # registry.evaluator: the local org's peer first, then the others that may be asked.
        live = self._planable(channel, name)
        targets = list(request.target_organizations) or live
        local = self._local.org.msp_id
        ordered = sorted((o for o in targets if o in live), key=lambda o: o != local)
        if not ordered:
            raise RpcError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"no peers available to evaluate chaincode {name} in channel {channel}",
            )
        details: list[gateway_pb2.ErrorDetail] = []
        code = grpc.StatusCode.UNAVAILABLE
        for org in ordered:
            endorser = self._endorsers[org]
            outcome = await _call(endorser, signed, self.ENDORSEMENT_TIMEOUT, self._faults)
            if outcome.ok and outcome.response is not None:
                response = outcome.response.response
                result = _result_of(outcome.response)
                if result is not None:
                    response.payload = result
                return gateway_pb2.EvaluateResponse(result=response)
            details.append(outcome.detail())
            code = outcome.code
            # Only peer-side failures (ABORTED) and unreachable peers (UNAVAILABLE) are
            # retried on the next peer; a chaincode's own refusal is final.
            if code not in (grpc.StatusCode.ABORTED, grpc.StatusCode.UNAVAILABLE):
                raise RpcError(
                    code, "evaluate call to endorser returned error: " + outcome.message, details
                )
        raise RpcError(
            code, "failed to evaluate transaction, see attached details for more info", details
        )

    # -- ChaincodeEvents --------------------------------------------------------------------

    async def ChaincodeEvents(
        self, request: gateway_pb2.SignedChaincodeEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gateway_pb2.ChaincodeEventsResponse]:
        try:
            req = self._check_signed(
                request.request,
                request.signature,
                gateway_pb2.ChaincodeEventsRequest(),
                "chaincode events",
            )
        except RpcError as err:
            await _abort(context, err)
            return
        assert isinstance(req, gateway_pb2.ChaincodeEventsRequest)
        start = self._store.height
        kind = req.start_position.WhichOneof("Type")
        if kind == "specified":
            start = req.start_position.specified.number
        elif kind not in (None, "next_commit"):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"invalid start position type: {kind}"
            )
        after = req.after_transaction_id
        if after:
            found = self._store.tx_status(after)
            if found is not None:
                start = found[1]
        passed = not after
        num = start
        while True:
            await self._notifier.wait_height(num + 1)
            block = self._store.get_block(num)
            if block is None:
                return
            events, passed = _block_events(block, req.chaincode_id, after, passed)
            if events:
                yield gateway_pb2.ChaincodeEventsResponse(events=events, block_number=num)
            num += 1


NO_COMBINATION = "no combination of peers can be derived which satisfy the endorsement policy"


def refused_rpc(address: str) -> str:
    """What a 2.5 gateway's gRPC call reports for a peer or orderer whose port refuses
    connections (grpc-go's words for a failed transport, "Error" capitalised as in 2.5.16;
    the peer's own chaincode dial in shim_peer.py writes "error")."""
    return (
        'rpc error: code = Unavailable desc = connection error: desc = "transport: Error while '
        f'dialing: dial tcp {address}: connect: connection refused"'
    )


def _no_config(channel: str) -> str:
    """registry.config's error for a channel this peer has not joined."""
    return (
        f"failed to get config for channel [{channel}]: could not get last config for channel "
        f"{channel}"
    )


def _block_events(
    block: common_pb2.Block, chaincode_id: str, after: str, passed: bool
) -> tuple[list[chaincode_event_pb2.ChaincodeEvent], bool]:
    codes = tx_codes(block)
    out = []
    for txnum, raw in enumerate(block.data.data):
        try:
            tx = parse_envelope(raw)
        except ValueError:
            continue
        if txnum < len(codes) and codes[txnum] != 0:
            continue
        ev = tx.event()
        if ev is None:
            continue
        if not passed:
            passed = ev.tx_id == after
            continue
        if ev.chaincode_id == chaincode_id:
            out.append(ev)
    return out, passed


def _result_of(resp: proposal_response_pb2.ProposalResponse) -> bytes | None:
    try:
        prp = proposal_response_pb2.ProposalResponsePayload.FromString(resp.payload)
        return bytes(proposal_pb2.ChaincodeAction.FromString(prp.extension).response.payload)
    except Exception:
        return None


def prepare_transaction(
    up: UnpackedProposal, prp_bytes: bytes, endorsements: list[proposal_response_pb2.Endorsement]
) -> common_pb2.Envelope:
    """The unsigned envelope, assembled as prepareTransaction in the gateway's apiutils.go."""
    cpp = proposal_pb2.ChaincodeProposalPayload(input=up.payload.input).SerializeToString()
    cap = transaction_pb2.ChaincodeActionPayload(
        chaincode_proposal_payload=cpp,
        action=transaction_pb2.ChaincodeEndorsedAction(
            proposal_response_payload=prp_bytes, endorsements=endorsements
        ),
    )
    tx = transaction_pb2.Transaction(
        actions=[
            transaction_pb2.TransactionAction(
                header=up.header.signature_header, payload=cap.SerializeToString()
            )
        ]
    )
    payload = common_pb2.Payload(header=up.header, data=tx.SerializeToString())
    return common_pb2.Envelope(payload=payload.SerializeToString())
