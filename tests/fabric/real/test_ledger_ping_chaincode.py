"""`saga ledger ping --chaincode` on a real Fabric 2.5 network: the chaincode answers;
stopped, it is named as not reachable; started with another package id than the peer
installed (which a real peer refuses, leaving clients only a deadline), the hint names
CHAINCODE_ID and `peer lifecycle chaincode queryinstalled`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from saga.entrypoints.cli.main import app
from saga_devnet.chaincode_launcher import chaincode_running
from tests.support.fabricnet import RealLedgerNet

runner = CliRunner()


def _ping(net: RealLedgerNet, *args: str, code: int) -> Any:
    env = {
        "SAGA_FABRIC_PROFILE": str(net.profile(1)),
        "SAGA_FABRIC_MSP_DIR": str(net.msp_dir(1)),
        "SAGA_FABRIC_MSP_ID": "",
        "SAGA_FABRIC_PEER": "",
        "SAGA_FABRIC_CHANNEL": net.channel,
        "SAGA_LOG_LEVEL": "WARNING",
    }
    result = runner.invoke(app, ["ledger", "ping", "--chaincode", "sagafacts", *args], env=env)
    assert result.exit_code == code, result.output
    return result


def test_ping_asks_the_chaincode_and_tells_why_it_does_not_answer(
    real_sagafacts_net: RealLedgerNet, tmp_path: Path
) -> None:
    net = real_sagafacts_net.network
    answered = _ping(real_sagafacts_net, "--json", code=0)
    assert '"chaincode": "sagafacts"' in answered.output

    with net.stopped("chaincode", kill=True):
        down = _ping(real_sagafacts_net, code=1)
        assert "not reachable" in down.output and "connection refused" in down.output

        # The same address, another package id: the peer will not accept the connection.
        address = f"127.0.0.1:{net.state.ports.chaincode}"
        with chaincode_running(address, "sagafacts_1.0:" + "0" * 64, tmp_path / "cc.log"):
            wrong = _ping(real_sagafacts_net, "--timeout", "4", code=1)
    text = " ".join(wrong.output.split())
    assert "CHAINCODE_ID" in text and "queryinstalled" in text, wrong.output
    net.wait_ready()
    _ping(real_sagafacts_net, code=0)
