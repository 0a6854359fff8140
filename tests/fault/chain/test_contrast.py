"""What the protocol prevents: the same two faults against a naive chain step and ours.

Faults: the Submit reply lost after the envelope was ordered (devnet
drop_submit_reply), and the process SIGKILLed right after Submit returned (the
`chain.after_submit` failpoint, in both implementations) and its work redelivered.

Counted the same way for both: VALID ledger transactions that record a payment
for the order (the business fact), read from the blocks and the records.
The naive step (naive_step.py) records each payment more than once; ours once.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from saga.adapters.fabric.ledger_scan import scan_ledger
from saga.failpoints import ENV, MARKERS_ENV
from tests.fault.chain.conftest import MakeStack
from tests.fault.chain.sagas import LEDGER_STEP
from tests.fault.chain.stack import ChainLedger, ChainStack
from tests.support.ledger import CHAINCODE
from tests.support.processes import ROOT, saga_env

pytestmark = [pytest.mark.fault, pytest.mark.timeout(300)]


def payments_recorded(net: ChainLedger, since: datetime) -> dict[str, int]:
    """order id -> VALID transactions since `since` that created a payment record for it."""
    client = net.gateway()
    try:
        scan = scan_ledger(client, net.channel)
        found: dict[str, int] = {}
        for tx in scan.txs:
            if not tx.valid or (tx.timestamp is not None and tx.timestamp < since):
                continue
            for key in tx.created:
                raw = client.evaluate(net.channel, CHAINCODE, "GetRecord", [key])
                record = json.loads(raw) if raw.strip() else {}
                order = (record.get("data") or {}).get("order_id")
                if record.get("kind") == "payment" and order:
                    found[order] = found.get(order, 0) + 1
        return found
    finally:
        client.close()


def run_naive(stack: ChainStack, order_id: str, **env: str) -> int:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.fault.chain.naive_step", order_id],
        cwd=ROOT,
        env=saga_env(stack.settings, **env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    print(f"naive {order_id}: exit {proc.returncode}: {proc.stdout.strip()!r}")
    return proc.returncode


def test_naive_step_duplicates_what_the_protocol_records_once(make_stack: MakeStack) -> None:
    stack = make_stack()
    devnet = stack.devnet
    since = datetime.now(UTC) - timedelta(seconds=1)

    # -- naive: a retry loop, a new transaction and key per try -----------------------
    devnet.set_faults(drop_submit_reply=1)
    assert run_naive(stack, "naive-lost-reply") == 0
    devnet.reset_faults()
    kill = {ENV: "chain.after_submit@naive=once*kill", MARKERS_ENV: str(stack.markers / "naive")}
    assert run_naive(stack, "naive-killed", **kill) == -9
    assert run_naive(stack, "naive-killed", **kill) == 0  # the redelivery

    # -- ours: the same faults against the product's chain step ------------------------
    # The cell's audit covers our sagas only; the naive records come after, on their own.
    stack.since = datetime.now(UTC)
    stack.relay()
    stack.watcher()
    for _ in range(2):
        stack.worker(failpoints=f"chain.after_submit@{LEDGER_STEP}@do=once*kill")
    # The lost reply first, alone: its Submit fails, so it never reaches the failpoint.
    devnet.set_faults(drop_submit_reply=1)
    lost = stack.enqueue(["none"])
    stack.wait_terminal(list(lost))
    devnet.reset_faults()
    killed = stack.enqueue(["none"])
    result = stack.verify({**lost, **killed})
    assert result.failpoint_hits == ["chain.after_submit"]

    counts = payments_recorded(stack.net, since)
    ours_lost, ours_killed = (stack.orch.get(s)[0].input["order_id"] for s in (*lost, *killed))
    table = {
        "lost Submit reply": (counts.get("naive-lost-reply", 0), counts.get(ours_lost, 0)),
        "killed after Submit": (counts.get("naive-killed", 0), counts.get(ours_killed, 0)),
    }
    print("\nVALID payment records for one order   naive   ours")
    for fault, (naive, ours) in table.items():
        print(f"  {fault:<34} {naive:>6} {ours:>6}")
    # The audit sees the naive records for what they are: keys no saga knows.
    stack.since = since
    whole = stack.audit(stack.scan()).counts()
    naive_total = sum(naive for naive, _ in table.values())
    print(f"  audit over both runs: {whole}")
    assert whole["unknown_keys"] == naive_total and whole["duplicate_keys"] == 0
    for fault, (naive, ours) in table.items():
        assert naive > 1, f"{fault}: the naive step should have duplicated the payment"
        assert ours == 1, f"{fault}: ours recorded {ours}"
