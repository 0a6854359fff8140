"""One peer's endorser: ProcessProposal as core/endorser/endorser.go does it.

A proposal that fails checks (signature, txid, duplicate) raises ProposalRejected, the
equivalent of the peer returning an error; a proposal that fails in simulation or in the
chaincode comes back as a ProposalResponse with status 500, unendorsed, as Fabric does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from saga.adapters.fabric import crypto
from saga_devnet import qscc
from saga_devnet.chaincodes import Chaincode
from saga_devnet.config import ChaincodeConfig, OrgConfig
from saga_devnet.faults import Faults
from saga_devnet.ledger_store import LIFECYCLE, LedgerStore, lifecycle_sequence_key
from saga_devnet.msp import IdentityError, MembershipRegistry, Signer
from saga_devnet.protos import (
    chaincode_pb2,
    common_pb2,
    kv_rwset_pb2,
    proposal_pb2,
    proposal_response_pb2,
    rwset_pb2,
)
from saga_devnet.rwlock import RWLock
from saga_devnet.shim_peer import KVRead, ShimError, Simulation

SYSTEM_CHAINCODES = ("qscc",)
ERROR_THRESHOLD = 400  # shim.ERRORTHRESHOLD
ERROR = 500  # shim.ERROR


class ProposalRejected(Exception):
    """The proposal itself is bad; the gateway reports it as FailedPrecondition."""


@dataclass
class UnpackedProposal:
    signed: proposal_pb2.SignedProposal
    proposal: proposal_pb2.Proposal
    header: common_pb2.Header
    channel_header: common_pb2.ChannelHeader
    signature_header: common_pb2.SignatureHeader
    payload: proposal_pb2.ChaincodeProposalPayload
    spec: chaincode_pb2.ChaincodeInvocationSpec
    proposal_hash: bytes

    @property
    def chaincode_name(self) -> str:
        return str(self.spec.chaincode_spec.chaincode_id.name)

    @property
    def txid(self) -> str:
        return str(self.channel_header.tx_id)


def unpack(signed: proposal_pb2.SignedProposal) -> UnpackedProposal:
    """Unmarshal the layers; ValueError on a malformed proposal."""
    try:
        prop = proposal_pb2.Proposal.FromString(signed.proposal_bytes)
        hdr = common_pb2.Header.FromString(prop.header)
        chdr = common_pb2.ChannelHeader.FromString(hdr.channel_header)
        shdr = common_pb2.SignatureHeader.FromString(hdr.signature_header)
        cpp = proposal_pb2.ChaincodeProposalPayload.FromString(prop.payload)
        spec = chaincode_pb2.ChaincodeInvocationSpec.FromString(cpp.input)
    except Exception as exc:
        raise ValueError(f"error unmarshalling proposal: {exc}") from exc
    # The hash covers the payload without its transient map, which never reaches the ledger.
    no_transient = proposal_pb2.ChaincodeProposalPayload(input=cpp.input).SerializeToString()
    phash = hashlib.sha256(hdr.channel_header + hdr.signature_header + no_transient).digest()
    return UnpackedProposal(signed, prop, hdr, chdr, shdr, cpp, spec, phash)


def build_rwset(namespace: str, sim: Simulation, lifecycle: KVRead | None = None) -> bytes:
    """The TxReadWriteSet, namespaces sorted as Fabric's rwset builder sorts them. A user
    chaincode's always holds the `_lifecycle` read the peer makes to find the definition."""
    if not sim.reads and not sim.writes and not sim.range_queries and lifecycle is None:
        return b""
    txrw = rwset_pb2.TxReadWriteSet(data_model=rwset_pb2.TxReadWriteSet.KV)
    sets = {namespace: _kv_set(sim)}
    if lifecycle is not None:
        read = kv_rwset_pb2.KVRWSet()
        _add_read(read.reads, lifecycle)
        sets[LIFECYCLE] = read
    for ns in sorted(sets):
        txrw.ns_rwset.add(namespace=ns, rwset=sets[ns].SerializeToString())
    return txrw.SerializeToString()


def _add_read(reads: Any, r: KVRead) -> None:  # a repeated KVRead field
    read = reads.add(key=r.key)
    if r.version is not None:
        read.version.block_num, read.version.tx_num = r.version


def _kv_set(sim: Simulation) -> kv_rwset_pb2.KVRWSet:
    kv = kv_rwset_pb2.KVRWSet()
    for r in sim.reads:
        _add_read(kv.reads, r)
    for rq in sim.range_queries:
        info = kv.range_queries_info.add(
            start_key=rq.start_key, end_key=rq.end_key, itr_exhausted=rq.itr_exhausted
        )
        for r in rq.reads:
            read = info.raw_reads.kv_reads.add(key=r.key)
            if r.version is not None:
                read.version.block_num, read.version.tx_num = r.version
    for w in sim.writes:
        kv.writes.add(key=w.key, value=w.value, is_delete=w.is_delete)
    return kv


class Endorser:
    def __init__(
        self,
        *,
        org: OrgConfig,
        address: str,
        signer: Signer,
        channel: str,
        registry: MembershipRegistry,
        store: LedgerStore,
        chaincodes: Callable[[str], tuple[Chaincode, ChaincodeConfig] | None],
        lock: RWLock,
        faults: Faults,
        listen_address: str = "",
    ) -> None:
        self.org = org
        self.address = address  # the peer's name, as gossip and the gateway's details give it
        self.listen_address = listen_address or address  # where it listens, for dial errors
        self.signer = signer
        self._channel = channel
        self._registry = registry
        self._store = store
        self._chaincodes = chaincodes
        self._lock = lock
        self._faults = faults

    def _pre_process(self, up: UnpackedProposal) -> None:
        """preProcess in core/endorser/endorser.go: UnpackedProposal.Validate (its checks in
        its order and words, wrapped "error validating proposal: "), then the duplicate txid."""
        try:
            self._validate(up)
        except ProposalRejected as exc:
            raise ProposalRejected(f"error validating proposal: {exc}") from exc
        chdr, shdr = up.channel_header, up.signature_header
        if self._store.tx_status(chdr.tx_id) is not None:
            raise ProposalRejected(
                f"duplicate transaction found [{chdr.tx_id}]. Creator [{shdr.creator.hex()}]"
            )

    def _validate(self, up: UnpackedProposal) -> None:
        """core/endorser/msgvalidation.go Validate. Identity and signature failures share one
        generic text on purpose (Fabric hides which, so that nobody can probe channels)."""
        chdr, shdr = up.channel_header, up.signature_header
        if chdr.type != common_pb2.ENDORSER_TRANSACTION:
            raise ProposalRejected(f"invalid header type {common_pb2.HeaderType.Name(chdr.type)}")
        if chdr.epoch != 0:
            raise ProposalRejected("epoch is non-zero")
        if len(shdr.nonce) == 0:
            raise ProposalRejected("nonce is empty")
        if len(shdr.creator) == 0:
            raise ProposalRejected("creator is empty")
        expected = crypto.compute_txid(shdr.nonce, shdr.creator)
        if chdr.tx_id != expected:
            raise ProposalRejected(
                f"incorrectly computed txid '{chdr.tx_id}' -- expected '{expected}'"
            )
        if not up.signed.signature:
            raise ProposalRejected("empty signature bytes")
        try:
            creator = self._registry.deserialize(shdr.creator)
        except IdentityError as exc:
            raise ProposalRejected(
                f"access denied: channel [{chdr.channel_id}] creator org unknown, creator is "
                "malformed"
            ) from exc
        if not creator.verify(up.signed.signature, up.signed.proposal_bytes):
            raise ProposalRejected(
                f"access denied: channel [{chdr.channel_id}] creator org [{creator.msp_id}]"
            )

    async def process(
        self, signed: proposal_pb2.SignedProposal
    ) -> proposal_response_pb2.ProposalResponse:
        try:
            up = unpack(signed)
        except ValueError as exc:
            raise ProposalRejected(str(exc)) from exc
        if up.channel_header.channel_id != self._channel:
            return _failure(f"channel '{up.channel_header.channel_id}' not found")
        self._pre_process(up)
        if self._faults.refuses(self.org.msp_id):
            return _failure(self._faults.refuse_endorsement_message)
        name = up.chaincode_name
        version = "syscc"
        if name in SYSTEM_CHAINCODES:
            status, message, payload = qscc.invoke(
                self._store, self._channel, list(up.spec.chaincode_spec.input.args)
            )
            sim = Simulation(status, message, payload, (), (), None)
        else:
            found = self._chaincodes(name)
            if found is None:
                return _failure(
                    f"make sure the chaincode {name} has been successfully defined on channel "
                    f"{self._channel} and try again: chaincode {name} not found"
                )
            chaincode, cc_cfg = found
            version = cc_cfg.version
            try:
                async with self._lock.shared():
                    sim = await chaincode.execute(
                        channel_id=self._channel,
                        txid=up.txid,
                        signed_proposal=signed,
                        input=up.spec.chaincode_spec.input,
                        state=self._store,
                    )
            except ShimError as exc:
                return _failure(f"error in simulation: {exc}")
        return self._respond(up, sim, version)

    def _respond(
        self, up: UnpackedProposal, sim: Simulation, version: str
    ) -> proposal_response_pb2.ProposalResponse:
        response = proposal_response_pb2.Response(
            status=sim.status, message=sim.message, payload=sim.payload
        )
        if sim.status >= ERROR_THRESHOLD and sim.status < ERROR:
            return proposal_response_pb2.ProposalResponse(response=response)
        lifecycle = None
        if up.chaincode_name not in SYSTEM_CHAINCODES:
            key = lifecycle_sequence_key(up.chaincode_name)
            found = self._store.get_state(LIFECYCLE, key)
            lifecycle = KVRead(key, found[1] if found else None)
        action = proposal_pb2.ChaincodeAction(
            results=build_rwset(up.chaincode_name, sim, lifecycle),
            events=sim.event or b"",
            response=response,
            chaincode_id=chaincode_pb2.ChaincodeID(name=up.chaincode_name, version=version),
        )
        prp = proposal_response_pb2.ProposalResponsePayload(
            proposal_hash=up.proposal_hash, extension=action.SerializeToString()
        ).SerializeToString()
        if sim.status >= ERROR:
            return proposal_response_pb2.ProposalResponse(response=response, payload=prp)
        endorser = self.signer.identity.serialized
        return proposal_response_pb2.ProposalResponse(
            version=1,
            response=response,
            payload=prp,
            endorsement=proposal_response_pb2.Endorsement(
                endorser=endorser, signature=self.signer.sign(prp + endorser)
            ),
        )


def _failure(message: str) -> proposal_response_pb2.ProposalResponse:
    return proposal_response_pb2.ProposalResponse(
        response=proposal_response_pb2.Response(status=ERROR, message=message)
    )
