"""Chaincode endpoints by name: a chaincode-as-a-service server reached over the shim, or a
small built-in chaincode of the devnet's own (used by the devnet's tests; the product's
chaincode always runs over the real shim)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

from saga_devnet.config import ChaincodeConfig
from saga_devnet.protos import chaincode_event_pb2, chaincode_pb2, proposal_pb2
from saga_devnet.shim_peer import (
    ChaincodeClient,
    KVRead,
    KVWrite,
    Simulation,
    StateReader,
)


class Chaincode(Protocol):
    async def execute(
        self,
        *,
        channel_id: str,
        txid: str,
        signed_proposal: proposal_pb2.SignedProposal,
        input: chaincode_pb2.ChaincodeInput,
        state: StateReader,
        timeout: float = 30.0,
    ) -> Simulation: ...

    async def close(self) -> None: ...


class KVChaincode:
    """Built-in chaincode "kv": create/put/get/delete on string keys.

    `create` reads the key and refuses when it exists, the same read-then-write shape as
    the sagas' idempotency keys, so it exercises MVCC exactly like the real chaincode.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    async def close(self) -> None:
        return None

    async def execute(
        self,
        *,
        channel_id: str,
        txid: str,
        signed_proposal: proposal_pb2.SignedProposal,
        input: chaincode_pb2.ChaincodeInput,
        state: StateReader,
        timeout: float = 30.0,
    ) -> Simulation:
        args = [bytes(a) for a in input.args]
        fn = args[0].decode() if args else ""
        params = [a.decode() for a in args[1:]]
        reads: list[KVRead] = []
        writes: list[KVWrite] = []
        event: bytes | None = None

        def read(key: str) -> bytes | None:
            found = state.get_state(self.name, key)
            reads.append(KVRead(key, found[1] if found else None))
            return found[0] if found else None

        def done(status: int, message: str = "", payload: bytes = b"") -> Simulation:
            return Simulation(status, message, payload, tuple(reads), tuple(writes), event)

        if fn in ("create", "put") and len(params) == 2:
            key, value = params
            existing = read(key)
            if fn == "create" and existing is not None:
                return done(500, f"already recorded: {key}={existing.decode('utf-8', 'replace')}")
            writes.append(KVWrite(key, value.encode()))
            event = chaincode_event_pb2.ChaincodeEvent(
                chaincode_id=self.name, tx_id=txid, event_name=fn, payload=key.encode()
            ).SerializeToString()
            return done(200, "", value.encode())
        if fn == "get" and len(params) == 1:
            found = read(params[0])
            if found is None:
                return done(500, f"key not found: {params[0]}")
            return done(200, "", found)
        if fn == "delete" and len(params) == 1:
            read(params[0])
            writes.append(KVWrite(params[0], b"", is_delete=True))
            return done(200)
        if fn == "keys":
            rows = state.get_state_by_range(self.name, "", "")
            return done(200, "", json.dumps([k for k, _v, _ver in rows]).encode())
        return done(500, f"unknown function {fn!r} or wrong number of arguments")


BUILTINS = {"kv": KVChaincode}


def _read_pem(directory: Path, path: str) -> bytes | None:
    if not path:
        return None
    p = Path(path)
    return (p if p.is_absolute() else directory / p).read_bytes()


def make_chaincode(directory: Path, name: str, cfg: ChaincodeConfig) -> Chaincode:
    if cfg.builtin:
        if cfg.builtin not in BUILTINS:
            raise ValueError(f"unknown builtin chaincode {cfg.builtin!r}; known: {list(BUILTINS)}")
        return BUILTINS[cfg.builtin](name)
    if not cfg.address:
        raise ValueError(f"chaincode {name!r} needs an address or a builtin")
    return ChaincodeClient(
        name,
        cfg.address,
        tls_root_cert=_read_pem(directory, cfg.root_cert) if cfg.tls_required else None,
        client_cert=_read_pem(directory, cfg.client_cert) if cfg.tls_required else None,
        client_key=_read_pem(directory, cfg.client_key) if cfg.tls_required else None,
        package_id=cfg.package_id or None,
    )
