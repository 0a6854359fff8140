"""`saga demo --ledger` end to end on REAL Fabric 2.5.16 and 3.1.5.

The demo runs as users run it (`python -m saga demo ...` in a child process), on the
real PostgreSQL and RabbitMQ, against a network the launcher (`saga_fabricnet`) started
beforehand: on 2.5.16 named by `--fabric-dir` (the launcher's folder), on 3.1.5 with
peers that require client certificates, named by `--profile`/`--msp-dir` and the
SAGA_FABRIC_TLS_* pair. Every payment is recorded once, the rejected order's payment is
reversed once, and the demo's own audit (database against ledger) must come out clean.
Then a network that is away is refused before anything starts, with what to do.

The binaries come from `.fabric/` (or FABRIC_BIN / FABRIC_31_BIN): a missing binary
FAILS, never skips.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from saga.config import Settings
from saga_fabricnet import FabricNetwork, NetworkOptions
from tests.support.fabricnet import (
    TEST_BATCH_TIMEOUT,
    fabric_31_release,
    fabric_release,
    real_network,
)

SAGAS = 20


def _env(pg_url: str, broker: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGA_")}
    env.update(
        SAGA_LOG_LEVEL="WARNING",
        SAGA_DATABASE_URL=pg_url,
        SAGA_BROKER_URL=broker.broker_url,
        SAGA_STEP_QUEUE=broker.step_queue,
        SAGA_DEAD_LETTER_QUEUE=broker.dead_letter_queue,
        **extra,
    )
    return env


def _demo(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "saga", "demo", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(
    params=[("2.5.16", False), ("3.1.5", True)], ids=["fabric-2.5.16", "fabric-3.1.5-mutual-tls"]
)
def network(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FabricNetwork]:
    version, client_auth = request.param
    release = fabric_release() if version == "2.5.16" else fabric_31_release()
    options = NetworkOptions(batch_timeout=TEST_BATCH_TIMEOUT, client_auth_required=client_auth)
    # No space in the folder's name: the peer's client root CA list is space separated.
    with real_network(tmp_path_factory.mktemp(f"fabric-{version}"), release, options) as net:
        assert net.version == version, net.version
        yield net.network


def test_demo_ledger_on_a_running_real_network_completes_and_audits_clean(
    network: FabricNetwork, pg_url: str, broker_settings: Settings, tmp_path: Path
) -> None:
    if network.options.client_auth_required:
        # A network given piece by piece, as any network is: profile, MSP dir, TLS pair.
        cert, key = network.client_tls(1)
        env = _env(pg_url, broker_settings, SAGA_FABRIC_TLS_CERT=str(cert))
        env["SAGA_FABRIC_TLS_KEY"] = str(key)
        env["SAGA_FABRIC_CHANNEL"] = network.channel
        where = ["--profile", str(network.profile(1)), "--msp-dir", str(network.msp_dir(1))]
    else:
        env = _env(pg_url, broker_settings)
        where = ["--fabric-dir", str(network.dir)]

    started = time.monotonic()
    done = _demo([*where, "-n", str(SAGAS), "--timeout", "200"], env, tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"saga demo failed:\n{output}"
    row = [line for line in done.stdout.splitlines() if line.strip().startswith(f"│ {SAGAS}")]
    assert row, output
    cells = [c.strip() for c in row[0].strip("│ ").split("│")]
    # One declined (compensated before the ledger step), one rejected (its payment
    # reversed on the ledger), the rest completed.
    assert cells[:5] == [str(SAGAS), str(SAGAS - 2), "2", "0", "0"], output
    # 19 payments and 1 reversal, each exactly once: the audit counts duplicates and
    # steps without a VALID transaction, and the demo fails unless it is clean.
    assert f"ledger: {SAGAS} transactions" in done.stdout, output
    assert "audit clean" in done.stdout, output
    assert f"channel {network.channel}" in output, output
    # The demo used the network it was given and started no devnet of its own.
    assert not (tmp_path / ".saga-demo").exists()
    seconds = time.monotonic() - started
    print(f"demo of {SAGAS} sagas on Fabric {network.state.version}: {seconds:.1f} s")

    # The chaincode away: refused at once with what to do, no saga enqueued.
    network.stop("chaincode")
    try:
        refused = _demo([*where, "-n", "5", "--timeout", "60"], env, tmp_path)
    finally:
        network.start("chaincode")
    said = refused.stdout + refused.stderr
    assert refused.returncode == 2, said
    if "--fabric-dir" in where:
        assert "not running (chaincode down)" in said and "saga_fabricnet up --dir" in said, said
    else:
        assert "did not answer" in said and "saga ledger ping --chaincode sagafacts" in said, said


def test_demo_fabric_dir_without_a_network_says_how_to_start_one(
    pg_url: str, broker_settings: Settings, tmp_path: Path
) -> None:
    done = _demo(
        ["--fabric-dir", str(tmp_path / "net"), "-n", "1"], _env(pg_url, broker_settings), tmp_path
    )
    said = done.stdout + done.stderr
    assert done.returncode == 2, said
    assert "no fabricnet.json" in said and "python -m saga_fabricnet up --dir" in said, said
    both = _demo(
        ["--fabric-dir", str(tmp_path), "--profile", "p.json", "-n", "1"],
        _env(pg_url, broker_settings),
        tmp_path,
    )
    assert both.returncode == 2 and "not both" in both.stdout + both.stderr
