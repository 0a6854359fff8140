"""The composition root: builds every adapter from Settings, lazily.

Nothing is connected at import; each part is created the first time it is asked
for and reused after that, once per process (a forked worker process builds its
own orchestrator after the fork, through the factory the Celery entry point gives
`run_worker`). Entry points import this module, never the other way round.
"""

from __future__ import annotations

import threading
from functools import cached_property
from typing import TYPE_CHECKING

from saga.app.chain.executor import ChainSettings
from saga.app.orchestrator import Orchestrator
from saga.app.relay import run_relay
from saga.app.sweeper import SweepConfig, Sweeper
from saga.app.watcher import WatcherConfig, WatcherStats, run_watcher
from saga.config import ConfigError, Settings
from saga.core.definitions import Registry
from saga.core.retry import OutagePolicy
from saga.logs import configure
from saga.registry_loader import load_registry

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy.engine import Engine

    from saga.adapters.fabric import (
        AsyncGatewayClient,
        Deadlines,
        GatewayClient,
        GatewayEndpoint,
        SigningIdentity,
    )
    from saga.adapters.fabric.peers import PeerSet
    from saga.adapters.prometheus.exposition import ApiScrape
    from saga.adapters.rabbitmq.dead_letters import RabbitDeadLetters
    from saga.ports.broker import Publisher
    from saga.ports.broker_admin import QueueAdmin
    from saga.ports.ledger import Ledger
    from saga.ports.ledger_scan import LedgerScan
    from saga.ports.store import OutboxReader, SagaStarts, UnitOfWorkFactory
    from saga.ports.telemetry import Telemetry


class Container:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._ledger_lock = threading.Lock()
        self._ledger: Ledger | None = None
        # Its own lock: ledger() holds _ledger_lock while it asks for the peers.
        self._peers_lock = threading.Lock()
        self._peer_set: tuple[PeerSet, SigningIdentity] | None = None

    def configure_logging(self) -> None:
        configure(self.settings.log_level, self.settings.log_format)

    @cached_property
    def registry(self) -> Registry:
        return load_registry(self.settings.definitions)

    @cached_property
    def engine(self) -> Engine:
        from saga.adapters.sql import create_engine

        return create_engine(self.settings)

    @cached_property
    def uow_factory(self) -> UnitOfWorkFactory:
        from saga.adapters.sql import SqlUnitOfWorkFactory

        return SqlUnitOfWorkFactory(self.engine)

    @property
    def transient_errors(self) -> tuple[type[BaseException], ...]:
        from saga.adapters.sql import TRANSIENT_ERRORS

        return tuple(TRANSIENT_ERRORS)

    @cached_property
    def telemetry(self) -> Telemetry:
        """What every application service reports through: the process's Prometheus
        instruments (served by the entry points, saga.entrypoints.metrics)."""
        from saga.adapters.prometheus.telemetry import PrometheusTelemetry

        return PrometheusTelemetry()

    def orchestrator(self) -> Orchestrator:
        return self._orchestrator

    @cached_property
    def _orchestrator(self) -> Orchestrator:
        return Orchestrator(
            self.registry,
            self.uow_factory,
            transient_errors=self.transient_errors,
            ledger=self.ledger if self.settings.ledger_configured else None,
            chain_settings=self.chain_settings,
            inline_reserve=self.settings.worker_inline_reserve,
            fuse_steps=self.settings.worker_fuse_steps,
            starts=self.saga_starts,
            telemetry=self.telemetry,
        )

    @property
    def saga_starts(self) -> SagaStarts:
        """The enqueue's writes: one autocommitted statement on PostgreSQL."""
        from saga.adapters.sql import SqlSagaStarts

        return SqlSagaStarts(self.engine)

    @property
    def chain_settings(self) -> ChainSettings:
        s = self.settings
        return ChainSettings(
            channel=s.fabric_channel,
            status_timeout=s.fabric_status_timeout,
            endorse_timeout=s.fabric_endorse_timeout,
            submit_timeout=s.fabric_submit_timeout,
            evaluate_timeout=s.fabric_evaluate_timeout,
            recheck_delay=s.chain_recheck_delay,
            outage=OutagePolicy(budget=s.chain_outage_budget, max_delay=s.chain_outage_max_delay),
        )

    def ledger(self) -> Ledger:
        """The Fabric Gateway client, connected at the first chain step of this process.

        A Container is built per process (after a worker forks), so a gRPC
        channel is never shared across a fork.
        """
        with self._ledger_lock:
            if self._ledger is None:
                self._ledger = self._connect_ledger()
            return self._ledger

    def _connect_ledger(self) -> Ledger:
        from saga.adapters.fabric import GatewayClient

        peers, identity = self.fabric_peers()
        return GatewayClient.connect(peers, identity, deadlines=self._deadlines())

    def _deadlines(self) -> Deadlines:
        from saga.adapters.fabric import Deadlines

        s = self.settings
        return Deadlines(
            endorse=s.fabric_endorse_timeout,
            submit=s.fabric_submit_timeout,
            commit_status=s.fabric_status_timeout,
            evaluate=s.fabric_evaluate_timeout,
        )

    def migrate(self) -> None:
        from saga.adapters.sql import upgrade

        upgrade(self.settings.database_url)

    def outbox_reader(self) -> OutboxReader:
        from saga.adapters.sql import SqlOutboxReader

        return SqlOutboxReader(self.engine)

    def publisher(self) -> Publisher:
        """The relay's publisher; with SAGA_CHAIN_QUEUE it routes chain step messages
        there (which needs the saga definitions, loaded only then)."""
        from saga.adapters.rabbitmq.publishers import create_publisher

        if not self.settings.chain_queue:
            return create_publisher(self.settings)
        from saga.app.routing import ChainRouting

        return create_publisher(self.settings, chain_route=ChainRouting(self.registry).is_chain)

    def run_relay(self, stop: threading.Event) -> None:
        run_relay(
            self.settings, self.outbox_reader(), self.publisher(), stop, telemetry=self.telemetry
        )

    def run_watcher(
        self, stop: threading.Event, config: WatcherConfig, stats: WatcherStats | None = None
    ) -> WatcherStats:
        """The commit watcher until `stop`; `stats`: the counters an endpoint serves."""
        return run_watcher(
            self.uow_factory,
            self.commit_client_factory(config.max_in_flight),
            stop,
            config,
            telemetry=self.telemetry,
            stats=stats,
            settle_valid=self.orchestrator().settle_valid_commit,
        )

    def api_metrics(self) -> ApiScrape:
        """GET /metrics of the API: its own counters and the store and broker gauges
        (collectors read at scrape time)."""
        from saga.adapters.prometheus.exposition import ApiScrape

        return ApiScrape(self.settings, self.uow_factory, self.registry.names())

    def dead_letters(self) -> RabbitDeadLetters:
        """The dead-letter queue's operator passes (browse, find, replay, drop) over AMQP."""
        from saga.adapters.rabbitmq.dead_letters import RabbitDeadLetters

        return RabbitDeadLetters(self.settings)

    @cached_property
    def queue_admin(self) -> QueueAdmin:
        """The broker-admin port: the saga queues' depths, asked of RabbitMQ."""
        from saga.adapters.rabbitmq.queues import RabbitQueueAdmin

        return RabbitQueueAdmin(self.settings)

    def sweeper(self) -> Sweeper:
        """The stuck-saga sweeper the settings describe (beat's task, `saga sweep`)."""
        s = self.settings
        return Sweeper(
            self.uow_factory,
            self.registry,
            SweepConfig.from_settings(s),
            ledger=self.ledger if s.ledger_configured else None,
            backlog=self.queue_admin.step_queue_depth,
            telemetry=self.telemetry,
        )

    # -- Fabric access, shared by workers, the commit watcher and the audit --------------

    def fabric_access(self) -> tuple[GatewayEndpoint, SigningIdentity]:
        """The preferred Gateway peer (the first of `fabric_peers`) and the client
        identity the SAGA_FABRIC_* settings name."""
        peers, identity = self.fabric_peers()
        return peers.endpoints[0], identity

    def fabric_peers(self) -> tuple[PeerSet, SigningIdentity]:
        """The Gateway peers of the client's org (SAGA_FABRIC_PEERS, else the profile's
        peers of the org with SAGA_FABRIC_PEER first) and the client identity.

        Every ledger client of the product (chain executor, watcher, sweeper, audit,
        `saga ledger ping`, the demo) connects through the endpoints returned here, so
        the client TLS pair is attached in this one place. One PeerSet per process: a
        client opened again (the watcher's, after an outage) starts on the peer the
        last one moved to.
        """
        with self._peers_lock:
            if self._peer_set is None:
                self._peer_set = self._load_peers()
            return self._peer_set

    def _load_peers(self) -> tuple[PeerSet, SigningIdentity]:
        from saga.adapters.fabric import SigningIdentity, load_connection_profile
        from saga.adapters.fabric.peers import PeerSet

        s = self.settings
        profile = load_connection_profile(s.fabric_profile)
        identity = SigningIdentity.from_msp_dir(s.fabric_msp_id or profile.msp_id, s.fabric_msp_dir)
        named = profile.gateway_peers(s.fabric_peer_names(), s.fabric_peer or None)
        endpoints = [endpoint for _, endpoint in named]
        client_tls = s.fabric_client_tls()
        if client_tls is not None:
            endpoints = [_with_client_tls(s, e, *client_tls) for e in endpoints]
        return PeerSet(endpoints), identity

    def commit_client_factory(self, max_in_flight: int) -> Callable[[], AsyncGatewayClient]:
        """Opens the watcher's asyncio client; called inside the watcher's event loop."""
        from saga.adapters.fabric import AsyncGatewayClient

        peers, identity = self.fabric_peers()
        return lambda: AsyncGatewayClient.connect(peers, identity, max_in_flight=max_in_flight)

    def query_client(self, peer: GatewayEndpoint | None = None) -> GatewayClient:
        """A blocking client for qscc block reads (audit); the caller closes it.

        `peer`: that peer alone, for a command that reports on it by name (`saga
        ledger ping`): an answer from another peer would say the named one is up.
        """
        from saga.adapters.fabric import GatewayClient

        peers, identity = self.fabric_peers()
        return GatewayClient.connect(peer or peers, identity, deadlines=self._deadlines())

    def scan_ledger(
        self, chaincode: str = "sagafacts", *, progress: Callable[[int, int], None] | None = None
    ) -> LedgerScan:
        """The audit's ledger scan port: the channel's blocks read now, through qscc."""
        from saga.adapters.fabric.ledger_scan import scan_ledger

        with self.query_client() as client:
            return scan_ledger(client, self.settings.fabric_channel, chaincode, progress=progress)


def _with_client_tls(
    s: Settings, endpoint: GatewayEndpoint, cert_pem: bytes, key_pem: bytes
) -> GatewayEndpoint:
    """The endpoint with the SAGA_FABRIC_TLS_* pair; a ConfigError naming the bad setting."""
    from saga.adapters.fabric.connection import ClientTlsError

    both = "SAGA_FABRIC_TLS_CERT and SAGA_FABRIC_TLS_KEY"
    if endpoint.tls_root_certs is None:
        raise ConfigError(
            f"{both} are set but the peer at {endpoint.address} is plaintext (grpc:// in "
            "SAGA_FABRIC_PROFILE): mutual TLS needs a grpcs:// url with tlsCACerts; fix the "
            "profile, or unset both"
        )
    try:
        return endpoint.with_client_tls(cert_pem, key_pem)
    except ClientTlsError as exc:
        shown = s.redacted()
        cert, key = (
            f"{var}={shown[var]}" for var in ("SAGA_FABRIC_TLS_CERT", "SAGA_FABRIC_TLS_KEY")
        )
        setting = {"certificate": cert, "key": key, "pair": f"{cert} and {key}"}[exc.part]
        raise ConfigError(
            f"{setting}: {exc}; {both} must be the client TLS certificate and its key (PEM)"
        ) from None
