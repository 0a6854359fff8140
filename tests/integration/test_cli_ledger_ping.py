"""`saga ledger ping` against a real devnet: who answered, the channel's height, round
trips; and an error naming the settings to check for each way it can fail."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from saga.adapters.fabric import GatewayClient, SigningIdentity, load_connection_profile
from saga.entrypoints.cli.main import app
from tests.support.devnet import Devnet

runner = CliRunner()
# The environment of the shell running the tests must not leak into a command.
NO_LEDGER = {
    "SAGA_FABRIC_PROFILE": "",
    "SAGA_FABRIC_MSP_DIR": "",
    "SAGA_FABRIC_MSP_ID": "",
    "SAGA_FABRIC_PEER": "",
    "SAGA_FABRIC_CHANNEL": "mychannel",
    "SAGA_LOG_LEVEL": "WARNING",
}


def _msp_dir(net: Devnet, n: int = 1) -> Path:
    return net.org_dir(n) / "users" / f"User1@{net.org(n)['domain']}" / "msp"


def _env(net: Devnet, **more: str) -> dict[str, str]:
    return {
        **NO_LEDGER,
        "SAGA_FABRIC_PROFILE": str(net.profile(1)),
        "SAGA_FABRIC_MSP_DIR": str(_msp_dir(net)),
        "SAGA_FABRIC_CHANNEL": str(net.config["channel"]),
        **more,
    }


def _ping(env: dict[str, str], *args: str, code: int = 0) -> Any:
    result = runner.invoke(app, ["ledger", "ping", *args], env=env)
    assert result.exit_code == code, result.output
    return result


def _profile_pointing_at(net: Devnet, address: str, path: Path) -> Path:
    """A copy of org1's profile whose peer url is `address` (TLS CA and name unchanged)."""
    profile = json.loads(net.profile(1).read_text())
    for peer in profile["peers"].values():
        peer["url"] = f"grpcs://{address}"
    path.write_text(json.dumps(profile))
    return path


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never says a word (a hung peer)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    server.close()


def test_ping_names_the_peer_and_reads_the_channel_height(devnet: Devnet) -> None:
    env = _env(devnet)
    org = devnet.org(1)
    first = json.loads(_ping(env, "--json").stdout)
    assert first["peer"] == f"peer0.{org['domain']}"
    assert first["address"].endswith(f":{org['port']}")
    assert first["tls"] is True and first["mutual_tls"] is False
    assert first["msp_id"] == org["msp_id"]
    assert first["channel"] == devnet.config["channel"]
    assert first["query"] == "qscc GetChainInfo"
    assert first["height"] >= 1 and len(first["current_block_hash"]) == 64
    assert len(first["round_trip_ms"]) == 1 and first["round_trip_ms"][0] > 0

    # A committed transaction makes the height the ping reports grow by one block.
    profile = load_connection_profile(devnet.profile(1))
    identity = SigningIdentity.from_msp_dir(profile.msp_id, _msp_dir(devnet))
    with GatewayClient.connect(profile.endpoint(), identity) as client:
        client.submit_transaction(devnet.config["channel"], "devkv", "put", ["ping-test", "1"])
    after = json.loads(_ping(env, "--json").stdout)
    assert after["height"] == first["height"] + 1
    assert after["current_block_hash"] != first["current_block_hash"]

    # For people: who answered, for which channel, as whom, and each round trip.
    text = _ping(env, "--count", "3").stdout
    assert (
        f"peer0.{org['domain']} at {first['address']} (TLS) answered for channel "
        f"{devnet.config['channel']} as {org['msp_id']}: height {after['height']}"
    ) in text
    assert text.count("round trip") == 3 and "(includes connecting)" in text
    assert "min/avg/max" in text

    # Options override the settings, as for `saga audit` and `saga watcher`.
    by_option = _ping(
        NO_LEDGER,
        "--profile",
        str(devnet.profile(1)),
        "--msp-dir",
        str(_msp_dir(devnet)),
        "--peer",
        f"peer0.{org['domain']}",
        "--json",
    )
    assert json.loads(by_option.stdout)["height"] == after["height"]


def test_ping_failures_name_the_settings_to_check(
    devnet: Devnet,
    tmp_path: Path,
    silent_port: int,
) -> None:
    env = _env(devnet)

    # No ledger configured: a configuration error (2) saying what to set.
    none = _ping(NO_LEDGER, code=2)
    assert "no ledger configured" in none.output
    assert "SAGA_FABRIC_PROFILE" in none.output and "SAGA_FABRIC_MSP_DIR" in none.output

    # Files that do not load: 2, naming the settings and what they are now.
    missing = _ping({**env, "SAGA_FABRIC_MSP_DIR": str(tmp_path / "nothing")}, code=2)
    assert "do not load" in missing.output
    assert f"SAGA_FABRIC_MSP_DIR (now {tmp_path / 'nothing'})" in missing.output
    unknown_peer = _ping(env, "--peer", "peer9.nowhere", code=2)
    assert "no peer 'peer9.nowhere'" in unknown_peer.output
    assert "SAGA_FABRIC_PEER (now peer9.nowhere)" in unknown_peer.output

    # Options that contradict each other: 2, before any connection.
    both = _ping(env, "--gateway-only", "--chaincode", "devkv", code=2)
    assert "--gateway-only asks no chaincode" in both.output

    # Nothing listens at the profile's address: 1, UNAVAILABLE, check the profile.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    down = _profile_pointing_at(devnet, f"127.0.0.1:{closed}", tmp_path / "down.json")
    refused = _ping({**env, "SAGA_FABRIC_PROFILE": str(down)}, "--timeout", "5", code=1)
    assert f"no answer from peer0.{devnet.org(1)['domain']} at 127.0.0.1:{closed}" in (
        refused.output
    )
    assert "UNAVAILABLE" in refused.output
    assert f"SAGA_FABRIC_PROFILE (now {down})" in refused.output
    assert "peer runs" in refused.output

    # A peer that accepts and never answers: 1 after --timeout, naming the timeout too.
    hung = _profile_pointing_at(devnet, f"127.0.0.1:{silent_port}", tmp_path / "hung.json")
    slow = _ping({**env, "SAGA_FABRIC_PROFILE": str(hung)}, "--timeout", "1", code=1)
    assert "within 1s" in slow.output
    assert "--timeout" in slow.output and "SAGA_FABRIC_EVALUATE_TIMEOUT" in slow.output

    # The peer answers but refuses: an unknown channel, an identity it does not know.
    channel = _ping(env, "--channel", "nochannel", code=1)
    assert "refused the query on channel nochannel" in channel.output
    # UNAVAILABLE, as a real Fabric 2.5 peer answers it, yet not "no answer".
    assert "it has no such channel" in channel.output and "no answer" not in channel.output
    assert "SAGA_FABRIC_CHANNEL (now nochannel)" in channel.output
    stranger = _ping({**env, "SAGA_FABRIC_MSP_ID": "NoSuchMSP"}, code=1)
    assert "access denied" in stranger.output
    assert "SAGA_FABRIC_MSP_ID (now NoSuchMSP)" in stranger.output


def test_ping_with_mutual_tls_needs_the_client_pair_and_says_so(
    devnet_factory: Callable[..., Devnet],
    tmp_path: Path,
) -> None:
    net = devnet_factory(mutual_tls=True)
    tls = net.org_dir(1) / "users" / f"User1@{net.org(1)['domain']}" / "tls"
    pair = {
        "SAGA_FABRIC_TLS_CERT": str(tls / "client.crt"),
        "SAGA_FABRIC_TLS_KEY": str(tls / "client.key"),
    }

    # With the user's TLS pair: answered, over mutual TLS.
    answered = json.loads(_ping(_env(net, **pair), "--json").stdout)
    assert answered["mutual_tls"] is True and answered["height"] >= 1
    text = _ping(_env(net, **pair)).stdout
    assert "(mutual TLS) answered" in text

    # The key as a *_FILE secret: the file's PEM becomes the setting, as for any secret.
    secret = {"SAGA_FABRIC_TLS_CERT": pair["SAGA_FABRIC_TLS_CERT"]}
    secret["SAGA_FABRIC_TLS_KEY_FILE"] = pair["SAGA_FABRIC_TLS_KEY"]
    assert json.loads(_ping(_env(net, **secret), "--json").stdout)["mutual_tls"] is True

    # Without it: 1, and the hint says what is missing.
    refused = _ping(_env(net), "--timeout", "5", code=1)
    assert "UNAVAILABLE" in refused.output
    assert "may require a client TLS certificate" in refused.output
    assert "set SAGA_FABRIC_TLS_CERT and SAGA_FABRIC_TLS_KEY" in refused.output

    # Half a pair: a configuration error (2) naming both settings, before any connection.
    half = _ping(_env(net, SAGA_FABRIC_TLS_CERT=pair["SAGA_FABRIC_TLS_CERT"]), code=2)
    assert "SAGA_FABRIC_TLS_CERT is set but SAGA_FABRIC_TLS_KEY is not" in half.output

    # A pair that does not belong together (org2's key): 2, naming both.
    org2_key = net.org_dir(2) / "users" / f"User1@{net.org(2)['domain']}" / "tls" / "client.key"
    mismatched = _ping(_env(net, **{**pair, "SAGA_FABRIC_TLS_KEY": str(org2_key)}), code=2)
    assert "does not belong to the certificate" in mismatched.output
    assert f"SAGA_FABRIC_TLS_KEY={org2_key}" in mismatched.output

    # An unreadable key: 2, naming the setting and the file.
    gone = tmp_path / "gone.key"
    unreadable = _ping(_env(net, **{**pair, "SAGA_FABRIC_TLS_KEY": str(gone)}), code=2)
    assert f"SAGA_FABRIC_TLS_KEY={str(gone)!r} cannot be read" in unreadable.output
