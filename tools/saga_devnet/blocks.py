"""Block assembly and hashing, byte-compatible with Fabric's protoutil.

The header hash is SHA-256 over the ASN.1 DER of (number, previous_hash, data_hash) and
data_hash is SHA-256 over the concatenated envelopes, so a tool that checks a Fabric
chain (e.g. a block explorer) accepts the devnet's chain too.
"""

from __future__ import annotations

import hashlib
import os
import time
from importlib import import_module
from typing import Any

from saga_devnet.msp import Signer
from saga_devnet.protos import common_pb2, configtx_pb2

etcdraft_metadata_pb2: Any = import_module("fabric_protos.orderer.etcdraft.metadata_pb2")


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


def genesis_block(config: configtx_pb2.Config, channel: str) -> common_pb2.Block:
    """Block 0 as `configtxgen -outputBlock` writes it (common/genesis, protoutil), plus the
    TRANSACTIONS_FILTER the peer adds when it joins the channel (cscc JoinChain).

    The CONFIG envelope is unsigned and its signature header has no creator; the txid is
    ComputeTxID(nonce, nil) and the channel header version 1 (msgVersion), the timestamp in
    whole seconds. The only metadata configtxgen sets is SIGNATURES' value, an
    OrdererBlockMetadata naming block 0 as the last config; LAST_CONFIG itself stays empty.
    """
    nonce = os.urandom(24)
    chdr = common_pb2.ChannelHeader(
        type=common_pb2.CONFIG,
        version=1,
        channel_id=channel,
        tx_id=hashlib.sha256(nonce).hexdigest(),
        epoch=0,
    )
    chdr.timestamp.seconds = int(time.time())
    shdr = common_pb2.SignatureHeader(nonce=nonce)
    payload = common_pb2.Payload(
        header=common_pb2.Header(
            channel_header=chdr.SerializeToString(), signature_header=shdr.SerializeToString()
        ),
        data=configtx_pb2.ConfigEnvelope(config=config).SerializeToString(),
    )
    envelope = common_pb2.Envelope(payload=payload.SerializeToString()).SerializeToString()
    block = common_pb2.Block()
    block.header.number = 0
    block.header.data_hash = data_hash([envelope])
    block.data.data.append(envelope)
    metadata = [b""] * len(common_pb2.BlockMetadataIndex.items())
    metadata[common_pb2.SIGNATURES] = common_pb2.Metadata(
        value=common_pb2.OrdererBlockMetadata(
            last_config=common_pb2.LastConfig(index=0)
        ).SerializeToString()
    ).SerializeToString()
    metadata[common_pb2.TRANSACTIONS_FILTER] = b"\x00"
    block.metadata.metadata.extend(metadata)
    return block


def raft_metadata(raft_index: int) -> bytes:
    """What an etcdraft orderer puts in OrdererBlockMetadata.consenter_metadata: one consenter
    (id 1). A real raft_index counts Raft log entries, config and leader changes included; the
    devnet has no Raft log, so it uses the block number."""
    return common_pb2.Metadata(
        value=etcdraft_metadata_pb2.BlockMetadata(
            consenter_ids=[1], next_consenter_id=2, raft_index=raft_index
        ).SerializeToString()
    ).SerializeToString()


def make_block(
    number: int,
    previous_hash: bytes,
    envelopes: list[bytes],
    codes: bytes,
    orderer: Signer,
    *,
    commit_hash: bytes = b"",
    last_config: int = 0,
) -> common_pb2.Block:
    """A block as the orderer's BlockWriter cuts it (LAST_CONFIG, then SIGNATURES over the
    OrdererBlockMetadata), plus what the peer's committer adds (TRANSACTIONS_FILTER and, from
    block 1, COMMIT_HASH)."""
    block = common_pb2.Block()
    block.header.number = number
    block.header.previous_hash = previous_hash
    block.header.data_hash = data_hash(envelopes)
    block.data.data.extend(envelopes)
    metadata = [b""] * len(common_pb2.BlockMetadataIndex.items())
    metadata[common_pb2.LAST_CONFIG] = common_pb2.Metadata(
        value=common_pb2.LastConfig(index=last_config).SerializeToString()
    ).SerializeToString()
    # SIGNATURES: the orderer signs value || signature_header || header bytes, as the
    # block writer does, so consumers that check the orderer signature find one.
    value = common_pb2.OrdererBlockMetadata(
        last_config=common_pb2.LastConfig(index=last_config),
        consenter_metadata=raft_metadata(number),
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
    if commit_hash:
        metadata[common_pb2.COMMIT_HASH] = common_pb2.Metadata(
            value=commit_hash
        ).SerializeToString()
    block.metadata.metadata.extend(metadata)
    return block


def commit_hash_of(block: common_pb2.Block) -> bytes:
    """The COMMIT_HASH value a block carries, b"" when it has none (block 0)."""
    md = block.metadata.metadata
    if len(md) <= common_pb2.COMMIT_HASH or not md[common_pb2.COMMIT_HASH]:
        return b""
    return bytes(common_pb2.Metadata.FromString(md[common_pb2.COMMIT_HASH]).value)


def tx_codes(block: common_pb2.Block) -> bytes:
    md = block.metadata.metadata
    return md[common_pb2.TRANSACTIONS_FILTER] if len(md) > common_pb2.TRANSACTIONS_FILTER else b""
