"""Python clients for services that start sagas.

`SagaClient` talks to the HTTP enqueue API; `LocalSagaClient` calls an
`Orchestrator` in the same process. Both have the same methods and raise the
same errors, so a service can switch between them with its configuration.

The idempotency key is the caller's and is required: it is what makes a retry
safe. `SagaClient.enqueue` retries a dropped connection, a timeout or a 5xx with
the *same* key, so when a load balancer sends the retry to another API instance
that instance answers with the saga the first attempt started. Keep the key
with the business request (an order id, a message id) and a retry after a crash
of the calling service is just as safe.

    client = SagaClient("http://sagas.internal:8080", token=os.environ["SAGA_API_TOKEN"])
    saga_id = client.enqueue("order-payment", payload, idempotency_key=f"order-{order.id}")
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from saga.app.errors import IdempotencyConflict, InvalidIdempotencyKey, InvalidInput, SagaNotFound
from saga.app.starting import MAX_IDEMPOTENCY_KEY
from saga.config import Settings
from saga.core.errors import SagaError, UnknownSaga
from saga.entrypoints.http.limits import BodyRejected, PayloadLimits, check_value
from saga.entrypoints.http.schemas import Enqueued, SagaView, field_errors
from saga.entrypoints.saga_view import step_kinds
from saga.ports.store import StoreUnavailable

if TYPE_CHECKING:
    from saga.app.orchestrator import Orchestrator

__all__ = [
    "BadRequestError",
    "Enqueued",
    "IdempotencyConflictError",
    "InvalidPayloadError",
    "LocalSagaClient",
    "PayloadTooLargeError",
    "SagaClient",
    "SagaClientError",
    "SagaClientProtocol",
    "SagaNotFoundError",
    "SagaView",
    "ServiceUnavailableError",
    "UnauthorizedError",
    "UnknownSagaError",
]

Payload = Mapping[str, Any] | BaseModel


# -- errors -----------------------------------------------------------------------


class SagaClientError(SagaError):
    """A request the service refused or could not serve; `code` is the API's error code."""

    status: int | None = None

    def __init__(
        self,
        message: str,
        *,
        code: str = "error",
        status: int | None = None,
        fields: list[str] | None = None,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        if status is not None:
            self.status = status
        self.fields = fields or []
        self.details = details or []


class BadRequestError(SagaClientError):
    """400/415: the request itself is wrong (JSON, encoding, content type, key)."""

    status = 400


class UnauthorizedError(SagaClientError):
    """401: the API needs a bearer token, or the one given is wrong."""

    status = 401


class UnknownSagaError(SagaClientError):
    """404 on enqueue: no saga definition of that name is registered."""

    status = 404


class SagaNotFoundError(SagaClientError):
    """404 on get: no saga with that id."""

    status = 404


class IdempotencyConflictError(SagaClientError):
    """409: the key already started a saga with a different name or payload."""

    status = 409

    def __init__(self, message: str, *, saga_id: str | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.saga_id = saga_id


class PayloadTooLargeError(SagaClientError):
    """413: the payload is larger, or nested deeper, than the service accepts."""

    status = 413


class InvalidPayloadError(SagaClientError):
    """422: the payload (or the request envelope) fails its schema; see `fields`."""

    status = 422


class ServiceUnavailableError(SagaClientError):
    """The service could not be reached, or answered 5xx, on every attempt.

    The saga may or may not have been started: call `enqueue` again later with
    the same idempotency key to find out, never with a new one.
    """

    status = 503


_BY_STATUS: dict[int, type[SagaClientError]] = {
    400: BadRequestError,
    401: UnauthorizedError,
    409: IdempotencyConflictError,
    413: PayloadTooLargeError,
    415: BadRequestError,
    422: InvalidPayloadError,
}


class SagaClientProtocol(Protocol):
    def enqueue(self, saga: str, payload: Payload, *, idempotency_key: str) -> str: ...

    def start(self, saga: str, payload: Payload, *, idempotency_key: str) -> Enqueued: ...

    def get(self, saga_id: str) -> SagaView: ...


def _as_dict(payload: Payload) -> Any:
    if isinstance(payload, BaseModel):
        return payload.model_dump(mode="json")
    return payload


def _check_key(idempotency_key: str) -> None:
    if not isinstance(idempotency_key, str) or not idempotency_key.strip():
        raise BadRequestError(
            "idempotency_key is required: a key you choose for this request and reuse on "
            "every retry of it",
            code="missing_idempotency_key",
            fields=["Idempotency-Key"],
        )
    # Checked here as well as by the service: a control character would otherwise
    # fail inside the HTTP library as a protocol error, which looks retryable.
    if len(idempotency_key) > MAX_IDEMPOTENCY_KEY or not idempotency_key.isprintable():
        raise BadRequestError(
            f"idempotency key must be 1-{MAX_IDEMPOTENCY_KEY} printable characters",
            code="invalid_idempotency_key",
            fields=["Idempotency-Key"],
        )
    try:
        idempotency_key.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequestError(
            "idempotency key is not valid Unicode text (lone surrogate)",
            code="invalid_idempotency_key",
            fields=["Idempotency-Key"],
        ) from None


# -- over HTTP --------------------------------------------------------------------


class SagaClient:
    """Client of the HTTP enqueue API.

    `retries` is how many times a request is sent again after a connection error,
    a timeout or a 5xx/429 answer; waits grow from `backoff` seconds, doubling, up
    to `max_backoff`, with jitter (a `Retry-After` header is honoured up to
    `max_backoff`).
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = 10.0,
        retries: int = 4,
        backoff: float = 0.2,
        max_backoff: float = 5.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        headers = {"Accept": "application/json", "User-Agent": "saga-client"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=timeout,
            transport=transport,
        )
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._sleep = sleep
        # How many HTTP requests were sent in all (retries included); for tests
        # and for callers that export it as a metric.
        self.attempts = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def enqueue(self, saga: str, payload: Payload, *, idempotency_key: str) -> str:
        """Start the saga (or find the one this key started); return its id."""
        return self.start(saga, payload, idempotency_key=idempotency_key).saga_id

    def start(self, saga: str, payload: Payload, *, idempotency_key: str) -> Enqueued:
        """Like enqueue, and also says whether this call created the saga."""
        _check_key(idempotency_key)
        try:
            body = json.dumps(
                {"saga": saga, "payload": _as_dict(payload)},
                separators=(",", ":"),
                ensure_ascii=False,
                allow_nan=False,
            ).encode("utf-8")
        except (TypeError, ValueError, UnicodeEncodeError) as exc:
            raise InvalidPayloadError(
                f"payload cannot be sent as JSON: {exc}", code="invalid_payload", fields=["payload"]
            ) from None
        response = self._send(
            "POST",
            "/sagas",
            content=body,
            headers={
                "Content-Type": "application/json",
                # Bytes: httpx refuses non-ASCII str header values; the API reads UTF-8.
                "Idempotency-Key": idempotency_key.encode("utf-8"),
            },
        )
        if response.status_code in (200, 201):
            return Enqueued.model_validate(response.json())
        raise self._error(response, not_found=UnknownSagaError)

    def get(self, saga_id: str) -> SagaView:
        response = self._send("GET", f"/sagas/{quote(saga_id, safe='')}")
        if response.status_code == 200:
            return SagaView.model_validate(response.json())
        raise self._error(response, not_found=SagaNotFoundError)

    def health(self) -> bool:
        try:
            return self._http.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    def _send(self, method: str, url: str, **kw: Any) -> httpx.Response:
        last = ""
        retry_after: float | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                self._sleep(self._delay(attempt, retry_after))
            retry_after = None
            self.attempts += 1
            try:
                response = self._http.request(method, url, **kw)
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                continue
            if response.status_code >= 500 or response.status_code == 429:
                last = f"HTTP {response.status_code}: {_message(response)}"
                retry_after = _retry_after(response)
                continue
            return response
        raise ServiceUnavailableError(
            f"{method} {url} failed after {self.retries + 1} attempt(s); last: {last}. "
            "If this was an enqueue, the saga may exist: retry with the same idempotency key",
            code="unavailable",
        )

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_backoff)
        base = min(self.backoff * 2 ** (attempt - 1), self.max_backoff)
        # Full jitter spreads the retries of many clients hit by the same outage.
        return random.uniform(base / 2, base)

    @staticmethod
    def _error(response: httpx.Response, *, not_found: type[SagaClientError]) -> SagaClientError:
        body = _json(response)
        message = _message(response)
        kw: dict[str, Any] = {
            "code": str(body.get("error", "error")),
            "status": response.status_code,
            "fields": list(body.get("fields") or []),
            "details": list(body.get("details") or []),
        }
        status = response.status_code
        if status == 404:
            code = kw["code"]
            cls = {"unknown_saga": UnknownSagaError, "saga_not_found": SagaNotFoundError}.get(
                code, not_found
            )
            return cls(message, **kw)
        if status == 409:
            return IdempotencyConflictError(message, saga_id=body.get("saga_id"), **kw)
        cls = _BY_STATUS.get(status, SagaClientError)
        return cls(message, **kw)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _message(response: httpx.Response) -> str:
    body = _json(response)
    if "message" in body:
        return str(body["message"])
    text = response.text.strip()
    return text[:200] or response.reason_phrase


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare from our API; fall back to backoff


# -- in process -------------------------------------------------------------------


class LocalSagaClient:
    """The same interface, calling an Orchestrator in this process.

    The payload goes through the same limits and a JSON round trip, so it is
    accepted or refused exactly as the HTTP API would accept or refuse it.
    """

    def __init__(self, orchestrator: Orchestrator, settings: Settings | None = None) -> None:
        settings = settings or Settings()
        self._orchestrator = orchestrator
        self._limits = PayloadLimits(settings.max_payload_bytes, settings.max_payload_depth)

    def enqueue(self, saga: str, payload: Payload, *, idempotency_key: str) -> str:
        return self.start(saga, payload, idempotency_key=idempotency_key).saga_id

    def start(self, saga: str, payload: Payload, *, idempotency_key: str) -> Enqueued:
        _check_key(idempotency_key)
        value = _as_dict(payload)
        if not isinstance(value, Mapping):
            raise InvalidPayloadError(
                f"payload must be a JSON object (a mapping), got {type(value).__name__}",
                code="invalid_request",
                status=422,
                fields=["payload"],
            )
        try:
            data = check_value(dict(value), self._limits, field_prefix="payload")
        except BodyRejected as exc:
            cls = PayloadTooLargeError if exc.status == 413 else InvalidPayloadError
            raise cls(
                exc.message, code=exc.code, status=exc.status, fields=list(exc.fields)
            ) from None
        try:
            result = self._orchestrator.enqueue(
                saga, json.loads(data), idempotency_key=idempotency_key
            )
        except UnknownSaga as exc:
            raise UnknownSagaError(str(exc), code="unknown_saga", fields=["saga"]) from exc
        except InvalidInput as exc:
            details = field_errors(exc.errors, prefix="payload")
            raise InvalidPayloadError(
                str(exc),
                code="invalid_payload",
                fields=list(dict.fromkeys(d["field"] for d in details)) or ["payload"],
                details=details,
            ) from exc
        except IdempotencyConflict as exc:
            raise IdempotencyConflictError(
                str(exc), saga_id=exc.saga_id, code="idempotency_conflict"
            ) from exc
        except InvalidIdempotencyKey as exc:
            raise BadRequestError(
                str(exc), code="invalid_idempotency_key", fields=["Idempotency-Key"]
            ) from exc
        except StoreUnavailable as exc:
            raise ServiceUnavailableError(
                f"the saga store cannot be reached ({exc}); retry with the same idempotency key",
                code="store_unavailable",
            ) from exc
        return Enqueued(
            saga_id=result.saga_id,
            saga=saga,
            created=result.created,
            status_url=f"/sagas/{result.saga_id}",
        )

    def get(self, saga_id: str) -> SagaView:
        try:
            record, history = self._orchestrator.get(saga_id)
        except SagaNotFound as exc:
            raise SagaNotFoundError(str(exc), code="saga_not_found") from exc
        except StoreUnavailable as exc:
            raise ServiceUnavailableError(
                f"the saga store cannot be reached ({exc})", code="store_unavailable"
            ) from exc
        return SagaView.from_record(
            record,
            history,
            self._orchestrator.reader.ledger_attempts(saga_id),
            step_kinds(self._orchestrator.registry, record.state),
        )
