"""COMMIT_HASH as Fabric 2.5's kvledger computes it (tools/saga_devnet/commit_hash.py)."""

from __future__ import annotations

import hashlib
import uuid

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from saga_devnet import blocks, commit_hash
from saga_devnet.protos import common_pb2, transaction_pb2


def _txmgr_updates_class() -> type:
    """txmgr.Updates from core/ledger/kvledger/txmgmt/txmgr/updates.proto, built at runtime so
    the hand-written encoder is checked against the protobuf library's own encoding."""
    f = descriptor_pb2.FileDescriptorProto(name="txmgr_updates_test.proto", package="txmgr")
    f.syntax = "proto3"
    kv = f.message_type.add(name="KVWrite")
    types = descriptor_pb2.FieldDescriptorProto
    for number, (name, kind) in enumerate(
        [
            ("namespace", types.TYPE_STRING),
            ("collection", types.TYPE_STRING),
            ("key", types.TYPE_BYTES),
            ("isDelete", types.TYPE_BOOL),
            ("value", types.TYPE_BYTES),
            ("version_bytes", types.TYPE_BYTES),
        ],
        start=1,
    ):
        kv.field.add(name=name, number=number, type=kind, label=types.LABEL_OPTIONAL)
    upd = f.message_type.add(name="Updates")
    upd.field.add(
        name="kvwrites",
        number=1,
        type=types.TYPE_MESSAGE,
        type_name=".txmgr.KVWrite",
        label=types.LABEL_REPEATED,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("txmgr.Updates"))


def test_order_preserving_encoding_matches_fabric_util() -> None:
    assert commit_hash.order_preserving_uint64(0) == b"\x00"
    assert commit_hash.order_preserving_uint64(1) == b"\x01\x01"
    assert commit_hash.order_preserving_uint64(256) == b"\x02\x01\x00"
    assert commit_hash.order_preserving_uint64(2**64 - 1) == b"\x08" + b"\xff" * 8


def test_update_batch_bytes_are_the_protobuf_encoding_of_txmgr_updates() -> None:
    updates: commit_hash.Updates = {
        ("ns2", "b"): (b"v2", (7, 1)),
        ("ns1", "z"): (None, (7, 0)),
        ("ns1", "a"): (b"v1", (7, 300)),
        ("", "config"): (b"skipped", (7, 2)),
    }
    expected = _txmgr_updates_class()()
    for ns, key, value, version, delete in [
        ("ns1", b"a", b"v1", (7, 300), False),
        ("", b"z", b"", (7, 0), True),  # namespace only on a namespace's first entry
        ("ns2", b"b", b"v2", (7, 1), False),
    ]:
        expected.kvwrites.add(
            namespace=ns,
            key=key,
            value=value,
            isDelete=delete,
            version_bytes=commit_hash.version_bytes(*version),
        )
    assert commit_hash.update_batch_bytes(updates) == expected.SerializeToString()


def test_each_block_chains_its_commit_hash_across_a_restart(devnet_factory) -> None:
    net = devnet_factory()
    gw = net.client(1)
    k = f"k-{uuid.uuid4().hex[:8]}"
    gw.submit_transaction("devkv", "create", k, "v")
    gw.submit_transaction("devkv", "delete", k)
    net.restart()  # the hash chain continues from the block file, as lastPersistedCommitHash
    gw = net.client(1)
    _txid, code, last = gw.submit_transaction("devkv", "put", k, "again")
    assert code == transaction_pb2.VALID and last == 3
    previous = b""
    for number in range(1, last + 1):
        raw = gw.evaluate("qscc", "GetBlockByNumber", "mychannel", str(number)).payload
        block = common_pb2.Block.FromString(raw)
        codes = blocks.tx_codes(block)
        updates = commit_hash.block_updates(number, list(block.data.data), codes)
        expected = commit_hash.commit_hash(codes, updates, previous)
        assert blocks.commit_hash_of(block) == expected, number
        previous = expected
    # Block 1's input, spelled out: varint(len(filter)) || filter || writes || (no previous).
    raw1 = gw.evaluate("qscc", "GetBlockByNumber", "mychannel", "1").payload
    block1 = common_pb2.Block.FromString(raw1)
    writes = commit_hash.update_batch_bytes(
        {("devkv", k): (b"v", (1, 0))},
    )
    assert blocks.commit_hash_of(block1) == hashlib.sha256(b"\x01\x00" + writes).digest()
