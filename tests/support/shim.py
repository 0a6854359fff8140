"""Helpers for the chaincode and shim tests (no tests of its own).

The chaincode always runs in a real subprocess on a free port, and the peer
side is the devnet's :class:`ChaincodeClient`; world state is an in-memory
:class:`MemoryState` that commits simulations with Fabric's MVCC rule.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fabric_protos.common import common_pb2
from fabric_protos.msp import identities_pb2
from fabric_protos.peer import chaincode_pb2, proposal_pb2

from saga_devnet.shim_peer import ChaincodeClient, Simulation
from tests.support.ports import free_port

REPO = Path(__file__).resolve().parents[2]
CHANNEL = "mychannel"
CC_NAME = "sagafacts"
CC_ID = "sagafacts_1.0:0123abcd"


def wait_listening(
    proc: subprocess.Popen[bytes], port: int, log: Path | None = None, timeout: float = 20.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = log.read_text(errors="replace")[-4000:] if log else ""
            raise RuntimeError(f"chaincode exited with {proc.returncode}: {err}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"chaincode did not listen on {port} within {timeout}s")


@contextmanager
def chaincode_process(
    argv: Sequence[str] | None = None,
    *,
    port: int | None = None,
    cc_id: str = CC_ID,
    extra: Sequence[str] = (),
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Run ``python -m sagafacts_chaincode`` (or ``argv``) and yield (process, address)."""
    port = port or free_port()
    address = f"127.0.0.1:{port}"
    cmd = list(argv or [sys.executable, "-m", "sagafacts_chaincode"])
    cmd += ["--id", cc_id, "--address", address, *extra]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAINCODE_")}
    # A file, not a pipe: a chaincode blocked on a full stderr pipe stops answering.
    with tempfile.NamedTemporaryFile(prefix="chaincode-", suffix=".log", delete=False) as f:
        log = Path(f.name)
    with log.open("wb") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=err)
    try:
        wait_listening(proc, port, log)
        yield proc, address
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.unlink(missing_ok=True)


class MemoryState:
    """World state for one channel: {(namespace, key): (value, (block, tx))}."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, str], tuple[bytes, tuple[int, int]]] = {}
        self.block = 0

    def get_state(self, namespace: str, key: str) -> tuple[bytes, tuple[int, int]] | None:
        return self.data.get((namespace, key))

    def get_state_by_range(
        self, namespace: str, start: str, end: str
    ) -> list[tuple[str, bytes, tuple[int, int]]]:
        return sorted(
            (k, v, ver)
            for (ns, k), (v, ver) in self.data.items()
            if ns == namespace and k >= start and (end == "" or k < end)
        )

    def mvcc_ok(self, namespace: str, sim: Simulation) -> bool:
        for read in sim.reads:
            current = self.data.get((namespace, read.key))
            if (current[1] if current else None) != read.version:
                return False
        return True

    def commit(self, namespace: str, sim: Simulation) -> bool:
        """Commit one transaction in its own block; False (MVCC conflict) changes nothing."""
        self.block += 1
        if not self.mvcc_ok(namespace, sim):
            return False
        for w in sim.writes:
            if w.is_delete:
                self.data.pop((namespace, w.key), None)
            else:
                self.data[(namespace, w.key)] = (w.value, (self.block, 0))
        return True


@dataclass(frozen=True)
class Proposal:
    txid: str
    signed: proposal_pb2.SignedProposal
    input: chaincode_pb2.ChaincodeInput


_counter = 0


def make_proposal(
    function: str,
    *args: str | bytes,
    txid: str | None = None,
    mspid: str = "Org1MSP",
    seconds: int = 1_700_000_000,
) -> Proposal:
    """A proposal as a client builds it (signature not checked by the shim)."""
    global _counter
    _counter += 1
    txid = txid or f"{_counter:064x}"
    cc_input = chaincode_pb2.ChaincodeInput(
        args=[function.encode()] + [a if isinstance(a, bytes) else a.encode() for a in args]
    )
    chdr = common_pb2.ChannelHeader(
        type=common_pb2.ENDORSER_TRANSACTION, channel_id=CHANNEL, tx_id=txid
    )
    chdr.timestamp.seconds = seconds
    creator = identities_pb2.SerializedIdentity(mspid=mspid, id_bytes=b"-----BEGIN CERT-----")
    shdr = common_pb2.SignatureHeader(creator=creator.SerializeToString(), nonce=b"n" * 24)
    header = common_pb2.Header(
        channel_header=chdr.SerializeToString(), signature_header=shdr.SerializeToString()
    )
    spec = chaincode_pb2.ChaincodeInvocationSpec(
        chaincode_spec=chaincode_pb2.ChaincodeSpec(
            chaincode_id=chaincode_pb2.ChaincodeID(name=CC_NAME), input=cc_input
        )
    )
    payload = proposal_pb2.ChaincodeProposalPayload(input=spec.SerializeToString())
    prop = proposal_pb2.Proposal(
        header=header.SerializeToString(), payload=payload.SerializeToString()
    )
    signed = proposal_pb2.SignedProposal(proposal_bytes=prop.SerializeToString(), signature=b"sig")
    return Proposal(txid, signed, cc_input)


async def run(
    client: ChaincodeClient,
    state: MemoryState,
    function: str,
    *args: str | bytes,
    txid: str | None = None,
    timeout: float = 30.0,
) -> Simulation:
    p = make_proposal(function, *args, txid=txid)
    return await client.execute(
        channel_id=CHANNEL,
        txid=p.txid,
        signed_proposal=p.signed,
        input=p.input,
        state=state,
        timeout=timeout,
    )
