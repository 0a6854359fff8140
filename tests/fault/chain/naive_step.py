"""A naive chain step, for the contrast test only: what an application without the
protocol does.

    python -m tests.fault.chain.naive_step ORDER_ID   (SAGA_FABRIC_* settings as for a worker)

A Celery-style retry loop around "endorse, submit, wait for the commit": every
try is a NEW transaction with a fresh idempotency key (a uuid per call, as an
application keying its ledger writes by request would), nothing is stored before
Submit, and nothing is asked of the ledger before retrying. It carries the same
failpoint as the real executor (`chain.after_submit`), so a test kills it at the
same instant; the test then runs it again, as the broker would redeliver the
unacked message.
"""

from __future__ import annotations

import sys
import uuid

from saga.adapters.fabric import GatewayClient, SigningIdentity, load_connection_profile
from saga.config import Settings
from saga.failpoints import failpoint
from saga.ports.ledger import LedgerError

MAX_TRIES = 3


def record_payment(client: GatewayClient, channel: str, order_id: str) -> str:
    key = f"naive/{order_id}/{uuid.uuid4()}"
    prepared = client.prepare(
        channel, "sagafacts", "RecordPayment", [key, order_id, "1250", "EUR", "c-1"]
    )
    client.submit(prepared)
    failpoint("chain.after_submit", "naive", "do")
    client.commit_status(channel, prepared.txid, timeout=10)
    return prepared.txid


def main() -> int:
    order_id = sys.argv[1]
    settings = Settings.from_env()
    profile = load_connection_profile(settings.fabric_profile)
    identity = SigningIdentity.from_msp_dir(profile.msp_id, settings.fabric_msp_dir)
    with GatewayClient.connect(profile.endpoint(), identity) as client:
        for attempt in range(1, MAX_TRIES + 1):
            try:
                txid = record_payment(client, settings.fabric_channel, order_id)
            except LedgerError as exc:
                print(f"try {attempt} failed ({type(exc).__name__}); retrying", flush=True)
                continue
            print(f"try {attempt} recorded {txid}", flush=True)
            return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
