"""A relay in a process of its own, for tests that kill or stop it.

    python -m tests.support.relay_process

Configured by the SAGA_ variables (database, broker, queues, batch size). With
SAGA_TEST_RELAY_PAUSE_FILE set, after the first batch is confirmed and before it
is marked, the relay writes the batch's ids to that file and hangs, so a test
can SIGKILL it at exactly that point. SIGTERM stops it cleanly (exit code 0).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from saga.adapters.rabbitmq import create_publisher
from saga.adapters.sql import SqlOutboxReader, create_engine
from saga.app.relay import install_stop_signals, run_relay
from saga.config import Settings
from saga.ports.broker import PendingMessage


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    settings = Settings.from_env()
    pause_file = os.environ.get("SAGA_TEST_RELAY_PAUSE_FILE")

    def pause(rows: Sequence[PendingMessage]) -> None:
        assert pause_file
        Path(pause_file).write_text(json.dumps([r.id for r in rows]))
        while True:
            time.sleep(60)

    stop = threading.Event()
    install_stop_signals(stop)
    engine = create_engine(settings)
    try:
        stats = run_relay(
            settings,
            SqlOutboxReader(engine),
            create_publisher(settings),
            stop,
            after_publish=pause if pause_file else None,
        )
    finally:
        engine.dispose()
    print(json.dumps({"published": stats.published, "batches": stats.batches}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
