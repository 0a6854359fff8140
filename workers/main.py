"""`celery -A workers.main worker` (and Flower, `celery -A workers.main inspect ...`).

Importing this module creates nothing: Celery looks up `workers.main.app`, and
the module-level `__getattr__` builds the app then, from SAGA_ environment
variables, once. The `saga worker` command does not come through here; it calls
`workers.app.run_worker` with the composition root's orchestrator factory.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, cast

from saga.config import Settings
from workers.app import SagaCelery, StepHandler, create_celery_app

if TYPE_CHECKING:
    from saga.ports import UnitOfWorkFactory

_lock = threading.Lock()
_app: SagaCelery | None = None


def orchestrator_factory(settings: Settings) -> StepHandler:
    """The production orchestrator: registry from SAGA_DEFINITIONS, SQL store."""
    from saga.orchestrator import Orchestrator
    from saga.registry_loader import load_registry
    from saga.store import TRANSIENT_ERRORS, SqlUnitOfWorkFactory, create_engine

    # cast: SqlUnitOfWork's __enter__/__exit__ signatures do not match the
    # UnitOfWork protocol structurally yet (a store/port typing issue, not runtime).
    uow_factory = cast("UnitOfWorkFactory", SqlUnitOfWorkFactory(create_engine(settings)))
    return Orchestrator(
        load_registry(settings.definitions), uow_factory, transient_errors=TRANSIENT_ERRORS
    )


def build_app(settings: Settings | None = None) -> SagaCelery:
    from saga.store import TRANSIENT_ERRORS

    settings = settings or Settings.from_env()
    return create_celery_app(
        settings, lambda: orchestrator_factory(settings), transient_errors=TRANSIENT_ERRORS
    )


def __getattr__(name: str) -> Any:
    global _app
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with _lock:
        if _app is None:
            _app = build_app()
    return _app
