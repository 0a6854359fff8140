"""The channel's orderers, and whether each one answers: for `saga ledger ping`.

A chain step reaches the orderers only through the gateway's Submit, which a
health check must not call (it would write). So the orderers are found where
the gateway finds them, in the channel's latest config block (read through qscc
on the gateway peer: each orderer org's endpoints and TLS CA certificates), and
each is asked for the channel's newest block over its own Deliver service, as
the configured identity, which is a read the channel's Readers policy allows.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from importlib import import_module
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from saga.adapters.fabric.connection import GatewayEndpoint
from saga.adapters.fabric.crypto import compute_txid, new_nonce
from saga.adapters.fabric.identity import SigningIdentity
from saga.adapters.fabric.protos import common_pb2

# No stubs ship with the protos (see saga.adapters.fabric.protos).
_ab_pb2: Any = import_module("fabric_protos.orderer.ab_pb2")
_ab_pb2_grpc: Any = import_module("fabric_protos.orderer.ab_pb2_grpc")
_configtx_pb2: Any = import_module("fabric_protos.common.configtx_pb2")
_configuration_pb2: Any = import_module("fabric_protos.common.configuration_pb2")
_ledger_pb2: Any = import_module("fabric_protos.common.ledger_pb2")
_msp_config_pb2: Any = import_module("fabric_protos.msp.msp_config_pb2")


@dataclass(frozen=True)
class Orderer:
    address: str
    msp_id: str
    tls_root_certs: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class OrdererAnswer:
    orderer: Orderer
    # The channel's newest block number as this orderer has it; None if it did not answer.
    newest_block: int | None
    round_trip_ms: float
    error: str = ""


def _last_config_index(block: Any) -> int:
    metadata = block.metadata.metadata
    signatures = common_pb2.SIGNATURES
    if len(metadata) > signatures and metadata[signatures]:
        value = common_pb2.Metadata.FromString(metadata[signatures]).value
        if value:
            return int(common_pb2.OrdererBlockMetadata.FromString(value).last_config.index)
    return 0


def channel_orderers(client: Any, channel: str) -> list[Orderer]:
    """Every orderer endpoint of the channel's latest config, with its org's TLS CAs."""
    info = _ledger_pb2.BlockchainInfo.FromString(
        client.evaluate(channel, "qscc", "GetChainInfo", [channel])
    )
    newest = common_pb2.Block.FromString(
        client.evaluate(channel, "qscc", "GetBlockByNumber", [channel, str(info.height - 1)])
    )
    index = _last_config_index(newest)
    block = (
        newest
        if index == info.height - 1
        else common_pb2.Block.FromString(
            client.evaluate(channel, "qscc", "GetBlockByNumber", [channel, str(index)])
        )
    )
    envelope = common_pb2.Envelope.FromString(block.data.data[0])
    payload = common_pb2.Payload.FromString(envelope.payload)
    config = _configtx_pb2.ConfigEnvelope.FromString(payload.data).config
    return list(_orderers(config.channel_group))


def _orderers(channel_group: Any) -> Iterator[Orderer]:
    orderer_group = channel_group.groups["Orderer"]
    for org in orderer_group.groups.values():
        msp = _msp_config_pb2.FabricMSPConfig.FromString(
            _msp_config_pb2.MSPConfig.FromString(org.values["MSP"].value).config
        )
        roots = b"".join(bytes(c) for c in msp.tls_root_certs) or None
        if "Endpoints" not in org.values:
            continue
        addresses = _configuration_pb2.OrdererAddresses.FromString(org.values["Endpoints"].value)
        for address in addresses.addresses:
            yield Orderer(str(address), str(msp.name), roots)


def _seek_newest(identity: SigningIdentity, channel: str) -> Any:
    nonce = new_nonce()
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    header = common_pb2.Header(
        channel_header=common_pb2.ChannelHeader(
            type=common_pb2.DELIVER_SEEK_INFO,
            channel_id=channel,
            timestamp=stamp,
            tx_id=compute_txid(nonce, identity.creator),
        ).SerializeToString(),
        signature_header=common_pb2.SignatureHeader(
            creator=identity.creator, nonce=nonce
        ).SerializeToString(),
    )
    newest = _ab_pb2.SeekPosition(newest=_ab_pb2.SeekNewest())
    seek = _ab_pb2.SeekInfo(start=newest, stop=newest, behavior=_ab_pb2.SeekInfo.FAIL_IF_NOT_READY)
    payload = common_pb2.Payload(header=header, data=seek.SerializeToString()).SerializeToString()
    return common_pb2.Envelope(payload=payload, signature=identity.sign(payload))


def ask_orderer(
    orderer: Orderer,
    identity: SigningIdentity,
    channel: str,
    *,
    client_tls: GatewayEndpoint | None = None,
    timeout: float = 5.0,
) -> OrdererAnswer:
    """The orderer's newest block of the channel through Deliver, or why it did not answer.

    ``client_tls`` lends its client certificate and key, for orderers that require
    mutual TLS.
    """
    host = orderer.address.rsplit(":", 1)[0]
    endpoint = GatewayEndpoint(
        orderer.address, orderer.tls_root_certs, server_name_override=host or None
    )
    if client_tls is not None and client_tls.client_cert and client_tls.client_key:
        endpoint = replace(
            endpoint, client_cert=client_tls.client_cert, client_key=client_tls.client_key
        )
    started = time.perf_counter()
    channel_ = endpoint.open_channel()
    try:
        stub = _ab_pb2_grpc.AtomicBroadcastStub(channel_)
        for response in stub.Deliver(iter([_seek_newest(identity, channel)]), timeout=timeout):
            if response.WhichOneof("Type") == "block":
                ms = (time.perf_counter() - started) * 1000
                return OrdererAnswer(orderer, int(response.block.header.number), ms)
            status = common_pb2.Status.Name(response.status)
            return OrdererAnswer(
                orderer, None, (time.perf_counter() - started) * 1000, f"answered {status}"
            )
        return OrdererAnswer(orderer, None, (time.perf_counter() - started) * 1000, "no answer")
    except grpc.RpcError as exc:
        code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
        said = exc.details() if hasattr(exc, "details") else str(exc)
        return OrdererAnswer(
            orderer, None, (time.perf_counter() - started) * 1000, f"{code}: {said}"
        )
    finally:
        channel_.close()
