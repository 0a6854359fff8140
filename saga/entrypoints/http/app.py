"""The enqueue API: an HTTP door in front of Orchestrator.enqueue / get.

Everything a request can be refused for (auth, content type, size, nesting,
encoding, JSON, envelope, the saga's own schema, unknown saga) is decided before
the orchestrator opens a transaction, so a refused request stores nothing and
publishes nothing. The body is read here, not by FastAPI's model binding: the
size limit has to stop reading, and the depth limit has to run before parsing.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from saga.adapters.prometheus import exposition
from saga.app.errors import IdempotencyConflict, InvalidIdempotencyKey, InvalidInput, SagaNotFound
from saga.app.orchestrator import Orchestrator
from saga.app.starting import MAX_IDEMPOTENCY_KEY
from saga.config import Settings
from saga.core.errors import UnknownSaga
from saga.entrypoints.http.limits import BodyRejected, PayloadLimits, parse_body, too_large
from saga.entrypoints.http.schemas import (
    Enqueued,
    EnqueueRequest,
    ErrorBody,
    Health,
    SagaView,
    field_errors,
)
from saga.entrypoints.saga_view import step_kinds
from saga.ports.store import StoreUnavailable

if TYPE_CHECKING:
    from saga.entrypoints.http.ui.services import ConsoleServices

log = logging.getLogger("saga.api")

# Ids are looked up, never parsed; this only keeps absurd path segments (NUL,
# megabytes) away from the database driver, which would fail on them with a 500.
_MAX_ID = 200
# A syntactically valid saga id that is never issued (ids are random UUIDs), so
# the health probe reads through the same path as GET /sagas/{id}.
_PROBE_ID = "00000000-0000-0000-0000-000000000000"
OPEN_PATHS = frozenset({"/healthz"})

DESCRIPTION = f"""
Starts sagas and reports on them. Every saga is started idempotently on a key
chosen by the **caller**, so a request retried after a timeout, a dropped
connection or a 5xx (even through a load balancer onto another instance of this
service) returns the saga the first attempt started instead of a second one.

**Starting a saga:** `POST /sagas` with the header `Idempotency-Key: <1-{MAX_IDEMPOTENCY_KEY}
printable characters, UTF-8>` and the JSON body `{{"saga": "<name>", "payload": {{...}}}}`
(`Content-Type: application/json`, UTF-8). The latest registered version of the
saga is started.

| status | meaning |
| --- | --- |
| 201 | saga created; `Location` names it |
| 200 | this key already started this saga with this payload: the same saga |
| 400 | malformed JSON, invalid UTF-8, missing or invalid `Idempotency-Key` |
| 401 | a bearer token is configured and the request lacks it |
| 404 | no saga definition of that name |
| 409 | this key already started a saga with a *different* saga or payload |
| 413 | body larger than `SAGA_MAX_PAYLOAD_BYTES`, or nested deeper than `SAGA_MAX_PAYLOAD_DEPTH` |
| 415 | `Content-Type` is not `application/json` (charset, if given, must be UTF-8) |
| 422 | the envelope or the payload fails its schema; `fields` names each field |
| 503 | the store is unreachable; retry with the same key |

Every error has the body `{{"error": code, "message": text, "fields": [...]}}`.
A refused request stores nothing and publishes nothing.

**Limits:** the size limit applies to the request body as sent; the depth limit
to the payload's own nesting (the envelope's object is not counted).

**Auth:** when `SAGA_API_TOKEN` is set, every route except `/healthz` (including
this document) needs `Authorization: Bearer <token>`.
"""


def _version() -> str:
    try:
        return package_version("saga-orchestrator")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0"


def _error(
    status: int,
    code: str,
    message: str,
    *,
    fields: Sequence[str] = (),
    details: Sequence[Mapping[str, Any]] = (),
    saga_id: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = ErrorBody(
        error=code,
        message=message,
        fields=list(fields),
        details=[dict(d) for d in details],
        saga_id=saga_id,
    )
    return JSONResponse(
        body.model_dump(exclude_none=True), status_code=status, headers=dict(headers or {})
    )


def _unique(items: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(items))


class BearerAuth:
    """Requires `Authorization: Bearer <token>` on every path but the open ones.

    Plain ASGI rather than a dependency so it also guards /openapi.json, /docs
    and unknown paths, and so it answers before any body is read.
    """

    def __init__(self, app: ASGIApp, token: str, open_paths: frozenset[str]) -> None:
        self.app = app
        # Hashing both sides makes the comparison constant-time in the token's
        # length too, not only in its content.
        self._digest = hashlib.sha256(token.encode()).digest()
        self._open = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self._open or _console_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        supplied = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, credentials = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    supplied = credentials.strip()
                break
        if not hmac.compare_digest(hashlib.sha256(supplied).digest(), self._digest):
            response = _error(
                401,
                "unauthorized",
                "this service needs the header 'Authorization: Bearer <token>' (SAGA_API_TOKEN)"
                if not supplied
                else "the bearer token is not valid",
                headers={"WWW-Authenticate": 'Bearer realm="saga"'},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _console_path(path: str) -> bool:
    # The console has its own login (the same token, or a user) and session cookie:
    # a browser cannot send a bearer header.
    return path == "/ui" or path.startswith("/ui/")


def _json_media_type(content_type: str | None) -> str | None:
    """None if the content type is JSON in UTF-8, else why it is refused."""
    if not content_type:
        return "request needs 'Content-Type: application/json'"
    media, *params = (p.strip() for p in content_type.split(";"))
    media = media.lower()
    if media != "application/json" and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        return f"content type {media!r} is not supported; send application/json"
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip().strip('"').lower() not in (
            "utf-8",
            "utf8",
        ):
            return f"charset {value.strip()!r} is not supported; JSON is sent in UTF-8"
    return None


async def _read_body(request: Request, limits: PayloadLimits) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise BodyRejected(400, "bad_request", "Content-Length is not a number") from None
        # Refused before a byte of the body is read.
        if size > limits.max_bytes:
            raise too_large(size, limits)
    body = bytearray()
    # Counted as it arrives, for chunked bodies and for a Content-Length that lies.
    async for chunk in request.stream():
        body += chunk
        if len(body) > limits.max_bytes:
            raise too_large(len(body), limits)
    return bytes(body)


_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in {
        400: "Malformed JSON, invalid UTF-8, or a missing/invalid Idempotency-Key",
        401: "Missing or wrong bearer token",
        404: "No saga definition of that name",
        409: "The Idempotency-Key already started a different request",
        413: "Body too large or nested too deep",
        415: "Content-Type is not application/json",
        422: "Envelope or payload fails its schema",
        503: "Store unreachable; retry with the same Idempotency-Key",
    }.items()
}


def create_app(
    orchestrator: Orchestrator,
    settings: Settings,
    *,
    metrics: exposition.ApiScrape | None = None,
    console: ConsoleServices | None = None,
) -> FastAPI:
    """The ASGI app for one orchestrator; makes no connection until a request needs one.

    `metrics` answers GET /metrics (the composition root's, Container.api_metrics);
    without one, the same is built here from `settings` and the orchestrator.
    `console`: the operator console's parts (saga.entrypoints.http.ui), served
    under /ui; without them there is no console."""
    limits = PayloadLimits(settings.max_payload_bytes, settings.max_payload_depth)
    app = FastAPI(
        title="Saga orchestrator",
        version=_version(),
        description=DESCRIPTION,
    )
    if settings.api_token:
        app.add_middleware(BearerAuth, token=settings.api_token, open_paths=OPEN_PATHS)

    @app.exception_handler(BodyRejected)
    async def _rejected(request: Request, exc: BodyRejected) -> JSONResponse:
        log.info("request refused", extra={"error": exc.code, "path": request.url.path})
        return _error(exc.status, exc.code, exc.message, fields=exc.fields, details=exc.details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = field_errors(exc.errors())
        return _error(
            422,
            "invalid_request",
            "; ".join(f"{d['field']}: {d['message']}" for d in details),
            fields=_unique([d["field"] for d in details]),
            details=details,
        )

    @app.exception_handler(StoreUnavailable)
    async def _store_down(request: Request, exc: StoreUnavailable) -> JSONResponse:
        log.warning("store unavailable", extra={"error": str(exc)})
        return _error(
            503,
            "store_unavailable",
            "the saga store cannot be reached; retry with the same Idempotency-Key",
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request failed", extra={"path": request.url.path})
        return _error(500, "internal_error", "internal error; retry with the same Idempotency-Key")

    enqueue_body_schema = EnqueueRequest.model_json_schema()

    @app.post(
        "/sagas",
        status_code=201,
        response_model=Enqueued,
        summary="Start a saga, idempotently on the caller's key",
        responses={
            200: {"model": Enqueued, "description": "Same key, same request"},
            **_ERROR_RESPONSES,
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": enqueue_body_schema}},
            }
        },
    )
    async def enqueue(
        request: Request,
        idempotency_key: Annotated[
            str | None,
            Header(
                alias="Idempotency-Key",
                description="The caller's key for this request; reuse it on every retry.",
            ),
        ] = None,
    ) -> JSONResponse:
        problem = _json_media_type(request.headers.get("content-type"))
        if problem:
            raise BodyRejected(415, "unsupported_media_type", problem)
        if idempotency_key is None or not idempotency_key.strip():
            raise BodyRejected(
                400,
                "missing_idempotency_key",
                "request needs an 'Idempotency-Key' header: a key the caller chooses for "
                "this request and sends again, unchanged, on every retry",
                ("Idempotency-Key",),
            )
        try:
            # HTTP hands header bytes over as latin-1; keys are sent as UTF-8 so that
            # a non-ASCII key means the same here as in LocalSagaClient.
            idempotency_key = idempotency_key.encode("latin-1").decode("utf-8")
        except UnicodeError:
            raise BodyRejected(
                400,
                "invalid_idempotency_key",
                "the Idempotency-Key header is not valid UTF-8",
                ("Idempotency-Key",),
            ) from None
        raw = await _read_body(request, limits)
        value = parse_body(raw, limits, envelope_levels=1)
        try:
            req = EnqueueRequest.model_validate(value)
        except ValidationError as exc:
            details = field_errors(exc.errors(include_url=False))
            raise BodyRejected(
                422,
                "invalid_request",
                'request body must be {"saga": name, "payload": {...}}: '
                + "; ".join(f"{d['field']}: {d['message']}" for d in details),
                tuple(_unique([d["field"] for d in details])),
                tuple(details),
            ) from None
        try:
            result = await run_in_threadpool(
                orchestrator.enqueue, req.saga, req.payload, idempotency_key=idempotency_key
            )
        except UnknownSaga as exc:
            return _error(404, "unknown_saga", str(exc), fields=["saga"])
        except InvalidInput as exc:
            details = field_errors(exc.errors, prefix="payload")
            return _error(
                422,
                "invalid_payload",
                str(exc),
                fields=_unique([d["field"] for d in details]),
                details=details,
            )
        except IdempotencyConflict as exc:
            return _error(409, "idempotency_conflict", str(exc), saga_id=exc.saga_id)
        except InvalidIdempotencyKey as exc:
            return _error(400, "invalid_idempotency_key", str(exc), fields=["Idempotency-Key"])
        location = f"{request.scope.get('root_path', '')}/sagas/{result.saga_id}"
        body = Enqueued(
            saga_id=result.saga_id, saga=req.saga, created=result.created, status_url=location
        )
        return JSONResponse(
            body.model_dump(),
            status_code=201 if result.created else 200,
            headers={"Location": location},
        )

    @app.get(
        "/sagas/{saga_id}",
        response_model=SagaView,
        summary="A saga with its steps (status, attempts, last error) and history",
        responses={404: {"model": ErrorBody, "description": "No saga with that id"}},
    )
    def get_saga(saga_id: str) -> SagaView | JSONResponse:
        not_found = _error(404, "saga_not_found", f"no saga with id {saga_id!r}")
        if len(saga_id) > _MAX_ID or not saga_id.isprintable():
            return not_found
        try:
            record, history = orchestrator.get(saga_id)
        except SagaNotFound:
            return not_found
        return SagaView.from_record(
            record,
            history,
            orchestrator.reader.ledger_attempts(saga_id),
            step_kinds(orchestrator.registry, record.state),
        )

    @app.get(
        "/healthz",
        response_model=Health,
        summary="Liveness and store reachability (no auth)",
        responses={503: {"model": Health, "description": "The store cannot be reached"}},
    )
    def healthz() -> Health | JSONResponse:
        try:
            orchestrator.get(_PROBE_ID)
        except SagaNotFound:
            return Health(status="ok", store="reachable")
        except Exception as exc:
            log.warning("health check failed", extra={"error": repr(exc)})
            return JSONResponse(
                Health(status="unavailable", store=type(exc).__name__).model_dump(),
                status_code=503,
            )
        return Health(status="ok", store="reachable")

    # Behind the bearer token like every other route: the gauges name every saga
    # type and its volumes; Prometheus sends the token (authorization.credentials_file).
    scrape = metrics or exposition.ApiScrape(
        settings, orchestrator.uow_factory, orchestrator.registry.names()
    )
    app.add_api_route("/metrics", scrape.response, methods=["GET"], include_in_schema=False)
    if console is not None:
        from saga.entrypoints.http.ui import mount_console

        mount_console(app, console)

    return app
