"""`saga watcher` as a real process: hundreds of commits pending at once, and SIGKILL.

Commits are held back with the devnet's `stall_commits` (Submit still accepts,
no block is cut), so every txid is pending when the watcher follows it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from saga.adapters.sql import SqlUnitOfWorkFactory
from saga.app.watcher import commit_message_id
from saga.ports.ledger import VALID
from tests.support.devnet import Devnet
from tests.support.waiting import wait_for
from tests.support.watcher import (
    WatcherProcess,
    attempts,
    gateway,
    outbox_bodies,
    prepared_sagas,
    sagafacts_net,
    unsettled_count,
)


@pytest.fixture(scope="module")
def net(module_devnet_factory: Callable[..., Devnet], chaincode_address: str) -> Devnet:
    # Bigger blocks: hundreds of transactions commit in a few blocks once released.
    return sagafacts_net(
        module_devnet_factory, chaincode_address, batch_timeout=0.5, max_message_count=200
    )


def _status_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("msg") == "watcher status":
            lines.append(entry)
    return lines


def _one_message_per_commit(db: Engine, txids: set[str]) -> None:
    ids = [m for m, _ in outbox_bodies(db)]
    assert len(ids) == len(set(ids)) == len(txids)
    assert set(ids) == {commit_message_id(t) for t in txids}


def test_one_watcher_follows_600_pending_commits(
    net: Devnet,
    engine: Engine,
    uow_factory: SqlUnitOfWorkFactory,
    pg_url: str,
    tmp_path: Path,
) -> None:
    channel = net.config["channel"]
    count = 600
    net.set_faults(stall_commits=True)
    client = gateway(net)
    try:
        started = time.monotonic()
        sagas = prepared_sagas(uow_factory, client, channel, count, threads=6)
        prepare_seconds = time.monotonic() - started
    finally:
        client.close()
    log = tmp_path / "watcher.log"
    watcher = WatcherProcess(
        net,
        pg_url,
        log,
        "--max-in-flight",
        "400",
        "--wait-timeout",
        "120",
        "--status-interval",
        "0.5",
    )
    try:
        wait_for(
            lambda: any(
                s["tracked"] == count and s["in_flight"] == 400 for s in _status_lines(log)
            ),
            60,
            "600 followed, 400 CommitStatus calls on the wire",
        )
        assert unsettled_count(engine) == count
        released = time.monotonic()
        net.set_faults(stall_commits=False)
        wait_for(lambda: unsettled_count(engine) == 0, 120, "all 600 settled")
        settle_seconds = time.monotonic() - released
    finally:
        net.reset_faults()
        stats = watcher.stop() if watcher.proc.poll() is None else {}
    rows = attempts(engine)
    assert all(r.code == VALID for r in rows.values())
    _one_message_per_commit(engine, {s.txid for s in sagas})
    assert stats["settled"] == count and stats["redriven_commit"] == count
    assert stats["max_in_flight_seen"] == 400
    assert stats["deadlines"] == 0 and stats["store_errors"] == 0
    print(
        f"\n600 pending commits: prepared+submitted in {prepare_seconds:.1f}s, "
        f"settled {settle_seconds:.1f}s after release; stats={stats}"
    )


def test_a_watcher_killed_with_commits_pending_loses_nothing_on_restart(
    net: Devnet,
    engine: Engine,
    uow_factory: SqlUnitOfWorkFactory,
    pg_url: str,
    tmp_path: Path,
) -> None:
    channel = net.config["channel"]
    count = 150
    net.set_faults(stall_commits=True)
    client = gateway(net)
    try:
        sagas = prepared_sagas(uow_factory, client, channel, count, threads=6)
        log = tmp_path / "watcher-1.log"
        first = WatcherProcess(net, pg_url, log, "--status-interval", "0.3")
        wait_for(
            lambda: any(s["tracked"] == count for s in _status_lines(log)),
            60,
            "the first watcher following all 150",
        )
        # Release the blocks and kill the watcher while it records them: some
        # commits are recorded, the rest happen while no watcher runs.
        net.set_faults(stall_commits=False)
        wait_for(lambda: unsettled_count(engine) < count, 30, "the first commit recorded")
        first.kill()
        settled_before_kill = count - unsettled_count(engine)
        # Every commit lands on the ledger while no watcher runs.
        for saga in sagas:
            assert client.commit_status(channel, saga.txid).code == VALID
        assert unsettled_count(engine) == count - settled_before_kill
    finally:
        net.reset_faults()
        client.close()

    second = WatcherProcess(net, pg_url, tmp_path / "watcher-2.log")
    try:
        wait_for(lambda: unsettled_count(engine) == 0, 60, "the restarted watcher settling all")
    finally:
        stats = second.stop()
    _one_message_per_commit(engine, {s.txid for s in sagas})
    assert stats["settled"] == count - settled_before_kill
    print(
        f"\nkilled with {count - settled_before_kill} of {count} commits unrecorded; "
        f"the restarted watcher recorded them: {stats['settled']}"
    )
