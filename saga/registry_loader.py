"""Find the application's saga definitions from the modules named in settings."""

from __future__ import annotations

import importlib

from saga.config import ConfigError
from saga.core.definitions import Registry, SagaDefinition


def load_registry(modules: str) -> Registry:
    """Import each comma-separated module; take its `register(registry)` or `definition`."""
    registry = Registry()
    for name in (m.strip() for m in modules.split(",")):
        if not name:
            continue
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(
                f"SAGA_DEFINITIONS names module {name!r}, which cannot be imported: {exc}"
            ) from exc
        register = getattr(module, "register", None)
        definition = getattr(module, "definition", None)
        if callable(register):
            register(registry)
        elif isinstance(definition, SagaDefinition):
            registry.add(definition)
        else:
            raise ConfigError(
                f"module {name!r} has neither register(registry) nor a SagaDefinition "
                "named `definition`"
            )
    if not len(registry):
        raise ConfigError("no saga definitions: set SAGA_DEFINITIONS to your modules")
    return registry
