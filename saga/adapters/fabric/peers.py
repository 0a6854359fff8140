"""The gateway peers of the client's organization, and which one is in use.

A Fabric Gateway peer endorses through the peers of every org and broadcasts to
every orderer, so any peer of the client's own org serves the client as well as
another. When the one in use cannot be reached, the client moves to the next:

- Endorse, Evaluate and CommitStatus are asked again of the next peer, within the
  same deadline: none of them puts anything on the ledger (an endorsement that
  is never submitted is a signature nobody uses).
- Submit is never sent again by the client: the envelope may have reached the
  orderer before the connection broke. The Submit's error goes up as before (its
  outcome is unknown), and only the *next* call, the executor's verify pass
  (CommitStatus of the recorded txid, then the same envelope again), goes to the
  next peer.

Only a failure of the connection moves the client. Anything the gateway itself
answered (a refusal, an endorsement or orderer failure it reports with details)
would be answered alike by another peer of the org, which shares its view of the
network.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import grpc

from saga.adapters.fabric.connection import GatewayEndpoint
from saga.adapters.fabric.errors import GatewayError

log = logging.getLogger("saga.fabric")

# What gRPC's own transport writes when no answer came from the other end: the
# connect failed, or the connection broke during the call. A gateway's own
# UNAVAILABLE answers ("no orderer nodes available", "no peers available to
# evaluate chaincode ...") contain none of these.
_TRANSPORT_WORDS = (
    "failed to connect",
    "connection refused",
    "connection reset",
    "socket closed",
    "broken pipe",
    "goaway",
    "connections to all backends failing",
    "end of tcp stream",
    "keepalive watchdog timeout",
    "dns resolution failed",
    "ssl_error",
    "handshake",
)


# How long a call handed to the next peer waits for that peer's channel to connect
# (it may have been down before, and a gRPC channel that failed to connect fails
# every call at once until it has redialled). A peer that is up connects in
# milliseconds; this bounds the cost of a second dead one.
NEXT_PEER_CONNECT_WAIT = 2.0


def unreachable(error: GatewayError) -> bool:
    """True when the peer gave no answer: UNAVAILABLE from gRPC's transport, not from
    the gateway (which explains its own failures in ErrorDetails)."""
    if error.code is not grpc.StatusCode.UNAVAILABLE or error.details:
        return False
    said = error.status_message.lower()
    return any(word in said for word in _TRANSPORT_WORDS)


class PeerSet:
    """The org's gateway endpoints in order of preference, and the one in use.

    Shared by every client a process opens for the same settings (the watcher
    reopens its client after an outage, and starts on the peer last found alive).
    Thread-safe; the asyncio client only takes the lock for a few instructions.
    """

    def __init__(self, endpoints: Sequence[GatewayEndpoint]) -> None:
        if not endpoints:
            raise ValueError("a gateway client needs at least one peer endpoint")
        addresses = [e.address for e in endpoints]
        if len(set(addresses)) != len(addresses):
            raise ValueError(f"the gateway peers are listed twice: {', '.join(addresses)}")
        self.endpoints = tuple(endpoints)
        self._current = 0
        self._lock = threading.Lock()

    @classmethod
    def of(cls, peers: PeerSet | GatewayEndpoint | Sequence[GatewayEndpoint]) -> PeerSet:
        if isinstance(peers, PeerSet):
            return peers
        if isinstance(peers, GatewayEndpoint):
            return cls([peers])
        return cls(peers)

    def __len__(self) -> int:
        return len(self.endpoints)

    @property
    def current(self) -> int:
        return self._current

    def order(self) -> list[int]:
        """Indexes to try: the one in use, then the others in turn."""
        start = self._current
        n = len(self.endpoints)
        return [(start + k) % n for k in range(n)]

    def moved_from(self, index: int, error: GatewayError) -> None:
        """Endpoint `index` did not answer: use the next one from now on, unless another
        call already moved away from it."""
        if len(self.endpoints) == 1:
            return
        with self._lock:
            if self._current != index:
                return
            self._current = (index + 1) % len(self.endpoints)
            to = self.endpoints[self._current].address
        log.warning(
            "gateway peer unreachable; moving to the next peer of the org",
            extra={
                "peer": self.endpoints[index].address,
                "next_peer": to,
                "step": error.step,
                "txid": error.txid,
                "error": error.status_message,
            },
        )
