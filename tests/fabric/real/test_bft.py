"""Fabric 3.1 with four BFT (SmartBFT) orderers: the network comes up, a submit
commits VALID, and ordering survives one orderer down (f = 1)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from saga_fabricnet import NetworkOptions
from tests.support.fabricnet import (
    TEST_BATCH_TIMEOUT,
    RealLedgerNet,
    fabric_31_release,
    real_network,
)


@pytest.fixture(scope="module", name="bft")
def bft_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealLedgerNet]:
    options = NetworkOptions(consensus="BFT", orderers=4, batch_timeout=TEST_BATCH_TIMEOUT)
    with real_network(tmp_path_factory.mktemp("bft"), fabric_31_release(), options) as net:
        yield net


def submit(net: RealLedgerNet) -> None:
    key = f"bft-{uuid.uuid4()}"
    client = net.gateway(1)
    client.submit_transaction(net.channel, "sagafacts", "RecordFact", [key, "t", "{}"])
    # submit_transaction raised unless the transaction committed VALID; the fact reads back
    assert client.evaluate(net.channel, "sagafacts", "GetRecord", [key]), f"no record under {key}"


def test_bft_network_commits(bft: RealLedgerNet) -> None:
    assert bft.network.orderers == ["orderer0", "orderer1", "orderer2", "orderer3"]
    assert bft.network.leader() in bft.network.orderers
    submit(bft)


def test_bft_orders_with_one_follower_down(bft: RealLedgerNet) -> None:
    network = bft.network
    follower = next(o for o in network.orderers if o != network.leader())
    with network.stopped(follower, kill=True):
        submit(bft)
    network.wait_ready(timeout=60)
    submit(bft)
