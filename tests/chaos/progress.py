"""How far a chaos run's workload has got (sagas accepted, terminal): what the
fault plan's triggers read."""

from __future__ import annotations

import threading
import time
from collections import Counter

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from saga.adapters.sql.tables import sagas
from tests.chaos.plan import TERMINAL


class Progress:
    """Saga counts by status, polled from the database (the last good answer is kept
    while PostgreSQL is down)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.statuses: Counter[str] = Counter()
        self.read_at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.poll()

    def poll(self) -> bool:
        try:
            with self.engine.connect() as c:
                rows = c.execute(select(sagas.c.status, func.count()).group_by(sagas.c.status))
                self.statuses = Counter({str(s): int(n) for s, n in rows})
            self.read_at = time.monotonic()
            return True
        except Exception:
            return False

    @property
    def terminal(self) -> int:
        return sum(self.statuses[s] for s in TERMINAL)

    @property
    def total(self) -> int:
        return sum(self.statuses.values())
