"""The commit watcher against real PostgreSQL and a real devnet running sagafacts.

The watcher runs in this process (its own event loop in a thread, as
`run_watcher` does for the CLI); the processes variant is
test_watcher_processes.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from saga.adapters.fabric import AsyncGatewayClient, load_connection_profile
from saga.adapters.prometheus.telemetry import PrometheusTelemetry
from saga.adapters.sql import SqlUnitOfWorkFactory
from saga.app.watcher import WatcherConfig, WatcherStats, commit_message_id, run_watcher
from saga.core.state import StepStatus
from saga.entrypoints.metrics import watcher_metrics
from saga.ports.ledger import MVCC_READ_CONFLICT, VALID
from tests.support.devnet import Devnet
from tests.support.ports import free_port
from tests.support.prometheus import at_least, metric
from tests.support.waiting import wait_for
from tests.support.watcher import (
    attempts,
    gateway,
    identity_of,
    outbox_bodies,
    prepared_sagas,
    set_saga,
    submit_stored,
    unsettled_count,
)


@pytest.fixture(scope="module")
def net(module_devnet_factory: Callable[..., Devnet], chaincode_address: str) -> Devnet:
    from tests.support.watcher import sagafacts_net

    return sagafacts_net(module_devnet_factory, chaincode_address, batch_timeout=0.3)


class InProcessWatcher:
    """`run_watcher` in a thread, its counters readable while it runs on its metrics port
    (served and counted as `saga watcher` does: the endpoint around it, Prometheus
    telemetry handed in)."""

    def __init__(self, uow: SqlUnitOfWorkFactory, net: Devnet, config: WatcherConfig) -> None:
        endpoint = load_connection_profile(net.profile(1)).endpoint()
        identity = identity_of(net)
        self.metrics_port = free_port()
        self.stop_event = threading.Event()
        self.stats: WatcherStats | None = None
        self.error: BaseException | None = None

        def main() -> None:
            try:
                stats = WatcherStats()
                with watcher_metrics(self.metrics_port, stats):
                    self.stats = run_watcher(
                        uow,
                        lambda: AsyncGatewayClient.connect(
                            endpoint, identity, max_in_flight=config.max_in_flight
                        ),
                        self.stop_event,
                        config,
                        telemetry=PrometheusTelemetry(),
                        stats=stats,
                    )
            except BaseException as exc:
                self.error = exc

        self.thread = threading.Thread(target=main, name="watcher-under-test")
        self.thread.start()

    def wait_for(self, counter: str, floor: float, timeout: float = 20) -> None:
        """Until the watcher's own `saga_watcher_<counter>` reaches `floor`."""
        name = f"saga_watcher_{counter}"
        wait_for(
            lambda: self.error is None and at_least(self.metrics_port, name, floor),
            timeout,
            f"{name} >= {floor} (error: {self.error!r})",
            interval=0.05,
        )

    def counter(self, counter: str) -> float:
        value = metric(self.metrics_port, f"saga_watcher_{counter}")
        assert value is not None, f"the watcher's metrics port lists no {counter}"
        return value

    def stop(self) -> WatcherStats:
        self.stop_event.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "watcher did not stop within 30s"
        assert self.error is None, self.error
        assert self.stats is not None
        return self.stats


def _messages_by_saga(db: Engine) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    found: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for message_id, body in outbox_bodies(db):
        found.setdefault(body["saga_id"], []).append((message_id, body))
    return found


def test_watcher_settles_commits_and_writes_one_redrive_per_commit(
    net: Devnet,
    engine: Engine,
    uow_factory: SqlUnitOfWorkFactory,
) -> None:
    channel = net.config["channel"]
    client = gateway(net)
    try:
        waiting = prepared_sagas(uow_factory, client, channel, 20)
        # A saga that stopped waiting (an operator failed it): settled, not re-driven.
        [gone] = prepared_sagas(uow_factory, client, channel, 1)
        set_saga(uow_factory, gone.saga_id, status=StepStatus.FAILED)
        # A transaction that commits INVALID is re-driven too: the verify path
        # decides what follows an invalid code. (The fault takes the next VALID
        # transaction, so the others must have committed first.)
        for saga in [*waiting, gone]:
            assert client.commit_status(channel, saga.txid).code == VALID
        net.set_faults(force_mvcc_conflict=1)
        [conflicted] = prepared_sagas(uow_factory, client, channel, 1, submit=False)
        submit_stored(uow_factory, client, conflicted)
        assert client.commit_status(channel, conflicted.txid).code == MVCC_READ_CONFLICT
        net.reset_faults()
    finally:
        client.close()

    watcher = InProcessWatcher(uow_factory, net, WatcherConfig(poll_interval=0.2))
    try:
        wait_for(lambda: unsettled_count(engine) == 0, 60, "every attempt settled")
    finally:
        stats = watcher.stop()

    rows = attempts(engine)
    assert len(rows) == 22
    for saga in [*waiting, gone]:
        row = rows[saga.txid]
        assert (row.state, row.code) == ("committed", VALID)
        assert row.block is not None and row.block > 0
    assert (rows[conflicted.txid].state, rows[conflicted.txid].code) == (
        "committed",
        MVCC_READ_CONFLICT,
    )

    by_saga = _messages_by_saga(engine)
    assert gone.saga_id not in by_saga
    for saga in [*waiting, conflicted]:
        [(message_id, body)] = by_saga[saga.saga_id]
        assert message_id == commit_message_id(saga.txid)
        assert body == {
            "message_id": message_id,
            "saga_id": saga.saga_id,
            "saga": "ledger-test",
            "version": 1,
            "step": "record",
            "attempt": 1,
            "phase": "do",
        }
    assert sum(len(v) for v in by_saga.values()) == 21
    assert stats.settled == 22 and stats.settled_valid == 21 and stats.settled_invalid == 1
    assert stats.redriven_commit == 21 and stats.redriven_deadline == 0

    # A second watcher (a restart) finds nothing to do and writes nothing.
    again = InProcessWatcher(uow_factory, net, WatcherConfig(poll_interval=0.2))
    try:
        # Evidence it looked: two whole polls of the store, each finding nothing.
        again.wait_for("polls_total", 2)
    finally:
        stats_again = again.stop()
    assert stats_again.polls >= 2
    assert stats_again.settled == 0 and stats_again.followed == 0
    assert len(outbox_bodies(engine)) == 21


def test_a_wait_past_its_deadline_redrives_the_step_once_then_the_commit_does(
    net: Devnet,
    engine: Engine,
    uow_factory: SqlUnitOfWorkFactory,
) -> None:
    """A PREPARED envelope that never reached the orderer (the worker died before
    Submit): the watcher re-drives the step so the verify path resubmits it."""
    channel = net.config["channel"]
    client = gateway(net)
    try:
        [saga] = prepared_sagas(uow_factory, client, channel, 1, submit=False)
        config = WatcherConfig(
            poll_interval=0.1, wait_timeout=0.7, rewait_after=0.1, redrive_interval=60
        )
        watcher = InProcessWatcher(uow_factory, net, config)
        try:
            wait_for(lambda: len(outbox_bodies(engine)) == 1, 20, "a deadline re-drive")
            # Three more deadlines pass (the watcher's count): still one message.
            watcher.wait_for("deadlines_total", watcher.counter("deadlines_total") + 3)
            [(first_id, body)] = outbox_bodies(engine)
            assert body["saga_id"] == saga.saga_id and body["attempt"] == 1
            assert first_id != commit_message_id(saga.txid)
            # What the verify path would do: resubmit the same stored envelope.
            submit_stored(uow_factory, client, saga)
            wait_for(lambda: unsettled_count(engine) == 0, 20, "the commit")
        finally:
            stats = watcher.stop()
    finally:
        client.close()
    ids = [m for m, _ in outbox_bodies(engine)]
    assert ids == [first_id, commit_message_id(saga.txid)]
    assert stats.deadlines >= 4
    assert stats.redriven_deadline == 1 and stats.redriven_commit == 1


def test_the_watcher_rides_out_a_peer_crash_and_reconnects(
    net: Devnet,
    engine: Engine,
    uow_factory: SqlUnitOfWorkFactory,
) -> None:
    """Last in the module: it SIGKILLs the module's devnet (and starts it again)."""
    channel = net.config["channel"]
    net.set_faults(stall_commits=True)
    client = gateway(net)
    try:
        sagas = prepared_sagas(uow_factory, client, channel, 10)
    finally:
        client.close()
    config = WatcherConfig(poll_interval=0.2, backoff_initial=0.2, backoff_max=1.0)
    watcher = InProcessWatcher(uow_factory, net, config)
    try:
        watcher.wait_for("in_flight", 10)  # every wait on the wire
        net.kill()
        watcher.wait_for("peer_errors_total", 1)  # the watcher saw the crash
        # The envelopes were durably queued; the restarted devnet (faults reset)
        # orders and commits them.
        net.start()
        wait_for(lambda: unsettled_count(engine) == 0, 60, "all settled after the crash")
    finally:
        stats = watcher.stop()
    assert {m for m, _ in outbox_bodies(engine)} == {commit_message_id(s.txid) for s in sagas}
    assert stats.peer_errors >= 1 and stats.reconnects >= 1
    assert stats.settled == 10
