"""The HTTP enqueue API (FastAPI).

`create_app(orchestrator, settings)` builds the ASGI app; the composition root
(`saga api`) makes the orchestrator and runs it under uvicorn. FastAPI is
imported only when an app is built, so `saga.entrypoints.http.schemas` and
`saga.entrypoints.http.limits` (used by the Python client) stay light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

    from saga.app.orchestrator import Orchestrator
    from saga.config import Settings

__all__ = ["create_app"]


def create_app(orchestrator: Orchestrator, settings: Settings) -> FastAPI:
    from saga.entrypoints.http.app import create_app as build

    return build(orchestrator, settings)
