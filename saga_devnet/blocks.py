"""Block assembly and hashing, byte-compatible with Fabric's protoutil.

The header hash is SHA-256 over the ASN.1 DER of (number, previous_hash, data_hash) and
data_hash is SHA-256 over the concatenated envelopes, so a tool that checks a Fabric
chain (e.g. a block explorer) accepts the devnet's chain too.
"""

from __future__ import annotations

import hashlib
import os
import time

from saga_devnet.msp import Signer
from saga_devnet.protos import common_pb2, configtx_pb2


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _der(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(body)) + body


def _der_int(n: int) -> bytes:
    raw = n.to_bytes(max(1, (n.bit_length() + 8) // 8), "big", signed=True)
    return _der(0x02, raw)


def header_bytes(header: common_pb2.BlockHeader) -> bytes:
    body = _der_int(header.number) + _der(0x04, header.previous_hash) + _der(0x04, header.data_hash)
    return _der(0x30, body)


def header_hash(header: common_pb2.BlockHeader) -> bytes:
    return hashlib.sha256(header_bytes(header)).digest()


def data_hash(data: list[bytes]) -> bytes:
    return hashlib.sha256(b"".join(data)).digest()


def _timestamp(hdr: common_pb2.ChannelHeader) -> None:
    now = time.time_ns()
    hdr.timestamp.seconds = now // 1_000_000_000
    hdr.timestamp.nanos = now % 1_000_000_000


def genesis_envelope(channel: str, orderer: Signer) -> bytes:
    """A CONFIG envelope standing in for the channel's real config block (see README gaps)."""
    chdr = common_pb2.ChannelHeader(type=common_pb2.CONFIG, channel_id=channel, version=0)
    _timestamp(chdr)
    shdr = common_pb2.SignatureHeader(creator=orderer.identity.serialized, nonce=os.urandom(24))
    cfg = configtx_pb2.ConfigEnvelope(config=configtx_pb2.Config(sequence=0))
    payload = common_pb2.Payload(
        header=common_pb2.Header(
            channel_header=chdr.SerializeToString(), signature_header=shdr.SerializeToString()
        ),
        data=cfg.SerializeToString(),
    ).SerializeToString()
    return common_pb2.Envelope(payload=payload, signature=orderer.sign(payload)).SerializeToString()


def make_block(
    number: int, previous_hash: bytes, envelopes: list[bytes], codes: bytes, orderer: Signer
) -> common_pb2.Block:
    block = common_pb2.Block()
    block.header.number = number
    block.header.previous_hash = previous_hash
    block.header.data_hash = data_hash(envelopes)
    block.data.data.extend(envelopes)
    metadata = [b""] * len(common_pb2.BlockMetadataIndex.items())
    # SIGNATURES: the orderer signs value || signature_header || header bytes, as the
    # block writer does, so consumers that check the orderer signature find one.
    value = common_pb2.OrdererBlockMetadata(
        last_config=common_pb2.LastConfig(index=0)
    ).SerializeToString()
    sig_header = common_pb2.SignatureHeader(
        creator=orderer.identity.serialized, nonce=os.urandom(24)
    ).SerializeToString()
    signature = orderer.sign(value + sig_header + header_bytes(block.header))
    metadata[common_pb2.SIGNATURES] = common_pb2.Metadata(
        value=value,
        signatures=[common_pb2.MetadataSignature(signature_header=sig_header, signature=signature)],
    ).SerializeToString()
    metadata[common_pb2.TRANSACTIONS_FILTER] = codes
    block.metadata.metadata.extend(metadata)
    return block


def tx_codes(block: common_pb2.Block) -> bytes:
    md = block.metadata.metadata
    return md[common_pb2.TRANSACTIONS_FILTER] if len(md) > common_pb2.TRANSACTIONS_FILTER else b""
