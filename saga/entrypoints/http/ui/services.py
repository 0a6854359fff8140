"""What the console reads and does, each part built by the composition root.

`ConsoleServices.from_container` takes every part from saga.bootstrap.Container:
the orchestrator (the operator service `saga resume/compensate/retry` use), the
store's engine (the search `saga list` uses), the dead-letter passes (`saga dlq`),
the broker-admin port and the ledger's query client (`saga ledger`). The console
never writes to a table or a queue itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING, Any

from saga.app.orchestrator import Orchestrator
from saga.config import Settings

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from saga.adapters.fabric import GatewayClient
    from saga.adapters.fabric.tx_lookup import TxLookup
    from saga.adapters.rabbitmq.dead_letters import RabbitDeadLetters
    from saga.bootstrap import Container
    from saga.ports.broker_admin import QueueAdmin

log = logging.getLogger("saga.console")

# The overview polls; the ledger's height is asked at most this often.
_CHAIN_INFO_TTL = 5.0


@dataclass(frozen=True)
class ChainInfo:
    reachable: bool
    height: int | None
    error: str | None
    channel: str


class LedgerReads:
    """Read-only questions to the ledger through one reused gateway client."""

    def __init__(self, connect: Callable[[], GatewayClient], channel: str, timeout: float):
        self._connect = connect
        self.channel = channel
        self._timeout = timeout
        self._lock = threading.Lock()
        self._client: GatewayClient | None = None
        self._info: tuple[float, ChainInfo] | None = None

    def _call(self, use: Callable[[GatewayClient], Any]) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._connect()
            client = self._client
        try:
            return use(client)
        except Exception:
            # A broken channel is rebuilt on the next question rather than kept.
            with self._lock:
                if self._client is client:
                    self._client = None
            try:
                client.close()
            except Exception:
                log.debug("closing the ledger client failed", exc_info=True)
            raise

    def chain_info(self) -> ChainInfo:
        cached = self._info
        if cached is not None and time.monotonic() - cached[0] < _CHAIN_INFO_TTL:
            return cached[1]
        ledger_pb2: Any = import_module("fabric_protos.common.ledger_pb2")
        try:
            raw = self._call(
                lambda c: c.evaluate(
                    self.channel, "qscc", "GetChainInfo", [self.channel], timeout=self._timeout
                )
            )
            info = ChainInfo(
                True, int(ledger_pb2.BlockchainInfo.FromString(raw).height), None, self.channel
            )
        except Exception as exc:
            info = ChainInfo(False, None, str(exc) or type(exc).__name__, self.channel)
        self._info = (time.monotonic(), info)
        return info

    def record(self, channel: str, chaincode: str, key: str) -> dict[str, Any] | None:
        """What the chaincode holds under an idempotency key (GetRecord), None if nothing."""
        import json

        raw = self._call(
            lambda c: c.evaluate(channel, chaincode, "GetRecord", [key], timeout=self._timeout)
        )
        if not raw:
            return None
        value: dict[str, Any] = json.loads(raw)
        return value

    def transaction(self, channel: str, txid: str) -> TxLookup:
        from saga.adapters.fabric.tx_lookup import lookup_transaction

        return self._call(lambda c: lookup_transaction(c, channel, txid, timeout=self._timeout))

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


@dataclass
class ConsoleServices:
    settings: Settings
    orchestrator: Orchestrator
    engine: Engine
    dead_letters: Callable[[], RabbitDeadLetters]
    queue_admin: QueueAdmin
    ledger: LedgerReads | None

    @classmethod
    def from_container(cls, container: Container) -> ConsoleServices:
        s = container.settings
        ledger = (
            LedgerReads(container.query_client, s.fabric_channel, s.fabric_evaluate_timeout)
            if s.ledger_configured
            else None
        )
        return cls(
            settings=s,
            orchestrator=container.orchestrator(),
            engine=container.engine,
            dead_letters=container.dead_letters,
            queue_admin=container.queue_admin,
            ledger=ledger,
        )
