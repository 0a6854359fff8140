"""A tiny HTTP/1.1 admin endpoint on loopback for tests: health and fault knobs.

GET /health            -> {"height": H, "pending": P}
GET /faults            -> current knobs
POST /faults  {json}   -> merge knobs, returns them
POST /faults/reset     -> all knobs off
POST /crash            -> os._exit(137) right after replying
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from typing import Any

from saga_devnet.faults import Faults

log = logging.getLogger(__name__)


class AdminApi:
    def __init__(self, faults: Faults, health: Callable[[], dict[str, Any]]) -> None:
        self._faults = faults
        self._health = health

    async def serve(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.start_server(self._handle, host, port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        crash = False
        try:
            request_line = (await reader.readline()).decode("latin-1").split()
            headers: dict[str, str] = {}
            while True:
                line = (await reader.readline()).decode("latin-1").strip()
                if not line:
                    break
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
            method, path = ([*request_line, "", ""])[:2]
            status, payload, crash = self._route(method, path, body)
        except Exception as exc:  # a bad request must not take the devnet down
            status, payload = 400, {"error": str(exc)}
        data = json.dumps(payload).encode()
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}.get(status, "OK")
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
            + data
        )
        await writer.drain()
        writer.close()
        if crash:
            log.warning("admin API: crashing on request")
            os._exit(137)

    def _route(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any], bool]:
        if method == "GET" and path == "/health":
            return 200, self._health(), False
        if method == "GET" and path == "/faults":
            return 200, json.loads(self._faults.as_json()), False
        if method == "POST" and path == "/faults":
            try:
                self._faults.update(json.loads(body or b"{}"))
            except ValueError as exc:
                return 400, {"error": str(exc)}, False
            return 200, json.loads(self._faults.as_json()), False
        if method == "POST" and path == "/faults/reset":
            fresh = Faults()
            self._faults.__dict__.update(fresh.__dict__)
            return 200, json.loads(self._faults.as_json()), False
        if method == "POST" and path == "/crash":
            return 200, {"crashing": True}, True
        return 404, {"error": f"no route {method} {path}"}, False
