"""Offline checks of what the client builds and signs: no network involved."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
from fabric_protos.common import common_pb2
from fabric_protos.msp import identities_pb2
from fabric_protos.peer import chaincode_pb2, proposal_pb2

from saga.adapters.fabric import PreparedTransaction, SigningIdentity, build_proposal, crypto
from saga.ports.ledger import PreparedTx
from tests.fabric.client_fixtures import CertAuthority, new_identity, write_msp_dir


@pytest.fixture(scope="module")
def identity() -> SigningIdentity:
    return new_identity("Org1MSP")


def _headers(proposal_bytes: bytes) -> tuple[object, object, object]:
    proposal = proposal_pb2.Proposal.FromString(proposal_bytes)
    header = common_pb2.Header.FromString(proposal.header)
    return (
        proposal,
        common_pb2.ChannelHeader.FromString(header.channel_header),
        common_pb2.SignatureHeader.FromString(header.signature_header),
    )


def test_txid_is_sha256_of_nonce_and_creator_and_is_the_channel_header_txid(
    identity: SigningIdentity,
) -> None:
    proposal = build_proposal(identity, "mychannel", "sagas", "Record", ["k", b"\x00v"])
    _, channel_header, signature_header = _headers(proposal.proposal_bytes)

    assert len(signature_header.nonce) == 24
    assert signature_header.creator == identity.creator
    expected = hashlib.sha256(signature_header.nonce + identity.creator).hexdigest()
    assert proposal.txid == expected
    assert channel_header.tx_id == expected
    assert len(proposal.txid) == 64


def test_fixed_nonce_gives_the_same_txid_and_fresh_nonces_differ(
    identity: SigningIdentity,
) -> None:
    nonce = bytes(range(24))
    a = build_proposal(identity, "ch", "cc", "f", nonce=nonce)
    b = build_proposal(identity, "ch", "cc", "f", nonce=nonce)
    assert a.txid == b.txid == crypto.compute_txid(nonce, identity.creator)
    txids = {build_proposal(identity, "ch", "cc", "f").txid for _ in range(200)}
    assert len(txids) == 200


def test_proposal_parses_back_to_the_expected_structure(identity: SigningIdentity) -> None:
    before = time.time()
    proposal = build_proposal(
        identity,
        "mychannel",
        "sagas",
        "SagaContract:Record",
        ["saga-1", b"\xffbytes"],
        transient={"secret": b"s3"},
        endorsing_orgs=["Org1MSP", "Org2MSP"],
    )
    parsed, channel_header, signature_header = _headers(proposal.proposal_bytes)

    assert channel_header.type == common_pb2.ENDORSER_TRANSACTION == 3
    assert channel_header.channel_id == "mychannel"
    assert channel_header.epoch == 0
    assert before - 1 <= channel_header.timestamp.seconds <= time.time() + 1
    extension = proposal_pb2.ChaincodeHeaderExtension.FromString(channel_header.extension)
    assert extension.chaincode_id.name == "sagas"

    creator = identities_pb2.SerializedIdentity.FromString(signature_header.creator)
    assert creator.mspid == "Org1MSP"
    assert creator.id_bytes == identity.certificate_pem

    payload = proposal_pb2.ChaincodeProposalPayload.FromString(parsed.payload)
    assert dict(payload.TransientMap) == {"secret": b"s3"}
    spec = chaincode_pb2.ChaincodeInvocationSpec.FromString(payload.input).chaincode_spec
    assert spec.chaincode_id.name == "sagas"
    assert list(spec.input.args) == [b"SagaContract:Record", b"saga-1", b"\xffbytes"]

    assert proposal.endorsing_orgs == ("Org1MSP", "Org2MSP")
    assert proposal.signed_proposal().proposal_bytes == proposal.proposal_bytes


def test_proposal_signatures_verify_and_are_low_s(identity: SigningIdentity) -> None:
    for _ in range(300):
        proposal = build_proposal(identity, "mychannel", "sagas", "Record", ["x"])
        assert crypto.is_low_s(proposal.signature)
        assert crypto.verify(identity.certificate_pem, proposal.signature, proposal.proposal_bytes)
    assert not crypto.verify(
        identity.certificate_pem, proposal.signature, proposal.proposal_bytes + b"x"
    )


def test_identity_signatures_are_low_s_over_many_messages(identity: SigningIdentity) -> None:
    # Half of raw ECDSA signatures have a high S; normalisation must catch all.
    for i in range(1000):
        message = i.to_bytes(4, "big") * 8
        signature = identity.sign(message)
        assert crypto.is_low_s(signature)
        assert crypto.verify(identity.certificate_pem, signature, message)


def test_identity_from_msp_dir_picks_the_key_that_matches_the_certificate(
    tmp_path: Path,
) -> None:
    ca = CertAuthority.create("ca.org1.example.com")
    msp, cert = write_msp_dir(tmp_path, ca)
    # A Fabric CA client leaves old keys behind after re-enrolling.
    _, stray_key = ca.issue("old")
    (msp / "keystore" / "0000_sk").write_bytes(stray_key)
    (msp / "keystore" / "zzzz_sk").write_bytes(stray_key)

    loaded = SigningIdentity.from_msp_dir("Org1MSP", msp)

    assert loaded.certificate_pem == cert
    assert loaded.msp_id == "Org1MSP"
    assert crypto.verify(cert, loaded.sign(b"m"), b"m")


def test_identity_refuses_a_key_that_is_not_the_certificates(tmp_path: Path) -> None:
    ca = CertAuthority.create("ca")
    cert, _ = ca.issue("a")
    _, other_key = ca.issue("b")
    with pytest.raises(ValueError, match="does not belong"):
        SigningIdentity.from_pem("Org1MSP", cert, other_key)

    msp, _ = write_msp_dir(tmp_path, ca)
    (msp / "keystore" / "priv_sk").write_bytes(other_key)
    with pytest.raises(FileNotFoundError, match="no key"):
        SigningIdentity.from_msp_dir("Org1MSP", msp)


def _unsigned_envelope(identity: SigningIdentity, channel: str = "mychannel") -> tuple[str, object]:
    proposal = build_proposal(identity, channel, "sagas", "Record", ["k"])
    parsed = proposal_pb2.Proposal.FromString(proposal.proposal_bytes)
    header = common_pb2.Header.FromString(parsed.header)
    payload = common_pb2.Payload(header=header, data=b"")
    return proposal.txid, common_pb2.Envelope(payload=payload.SerializeToString())


def test_prepared_transaction_round_trips_through_bytes_unchanged(
    identity: SigningIdentity,
) -> None:
    txid, unsigned = _unsigned_envelope(identity)
    prepared = PreparedTransaction.sign(unsigned, identity)

    assert prepared.txid == txid
    assert prepared.channel == "mychannel"
    envelope = prepared.envelope_proto()
    assert envelope.payload == unsigned.payload
    assert crypto.verify(identity.certificate_pem, envelope.signature, envelope.payload)
    assert crypto.is_low_s(envelope.signature)

    stored = prepared.to_bytes()
    rebuilt = PreparedTransaction.from_bytes(stored)
    assert rebuilt == prepared
    assert rebuilt.to_bytes() == stored
    assert isinstance(rebuilt, PreparedTx)
    assert rebuilt.result() == b""


def test_prepared_transaction_refuses_what_is_not_a_signed_envelope(
    identity: SigningIdentity,
) -> None:
    _, unsigned = _unsigned_envelope(identity)
    with pytest.raises(ValueError, match="not signed"):
        PreparedTransaction.from_bytes(unsigned.SerializeToString())
    with pytest.raises(ValueError, match="not a Fabric transaction envelope"):
        PreparedTransaction.from_bytes(b"\xff\xff\xff garbage")
    config = common_pb2.Payload(
        header=common_pb2.Header(
            channel_header=common_pb2.ChannelHeader(
                type=common_pb2.CONFIG, tx_id="x"
            ).SerializeToString()
        )
    )
    config_envelope = common_pb2.Envelope(payload=config.SerializeToString(), signature=b"s")
    with pytest.raises(ValueError, match="not an endorser transaction"):
        PreparedTransaction.from_bytes(config_envelope.SerializeToString())


def test_build_proposal_needs_channel_chaincode_and_function(identity: SigningIdentity) -> None:
    with pytest.raises(ValueError):
        build_proposal(identity, "", "cc", "f")
    with pytest.raises(ValueError):
        build_proposal(identity, "ch", "cc", "")
