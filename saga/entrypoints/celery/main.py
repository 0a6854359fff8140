"""`celery -A saga.entrypoints.celery.main worker` (and Flower, `inspect ...`).

Importing this module creates nothing: Celery looks up `saga.entrypoints.celery.main.app`, and
the module-level `__getattr__` builds the app then, from SAGA_ environment
variables, once. The `saga worker` command does not come through here; it calls
`saga.entrypoints.celery.app.run_worker` with the composition root's orchestrator factory.
"""

from __future__ import annotations

import threading
from typing import Any

from saga.config import Settings
from saga.entrypoints.celery.app import SagaCelery

_lock = threading.Lock()
_app: SagaCelery | None = None


def build_app(settings: Settings | None = None) -> SagaCelery:
    from saga.bootstrap import Container

    app: SagaCelery = Container(settings or Settings.from_env()).celery_app()
    return app


def __getattr__(name: str) -> Any:
    global _app
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with _lock:
        if _app is None:
            _app = build_app()
    return _app
