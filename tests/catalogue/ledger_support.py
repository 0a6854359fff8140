"""Helpers for the ledger cases (no tests here): a gRPC server that answers raw bytes,
a scripted gateway with chosen validation codes, certificates with chosen validity,
and a small chain saga run through the real orchestrator on PostgreSQL."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fabric_protos.peer import proposal_response_pb2
from pydantic import BaseModel, ConfigDict
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from saga.adapters.fabric import GatewayClient, GatewayEndpoint, SigningIdentity
from saga.adapters.sql import TRANSIENT_ERRORS, SqlUnitOfWorkFactory
from saga.adapters.sql.tables import ledger_attempts
from saga.app.chain import ChainSettings
from saga.app.chain.errors import ChaincodeRefused
from saga.app.orchestrator import Orchestrator
from saga.core.definitions import ChainCall, Registry, SagaDefinition, Step, StepContext, StepKind
from saga.core.retry import RetryPolicy
from tests.fabric.client_fixtures import CertAuthority, ScriptedGateway, _parse_proposal

GATEWAY_SERVICE = "gateway.Gateway"


@contextmanager
def raw_gateway(answers: dict[str, bytes]) -> Iterator[str]:
    """A real gRPC server whose Gateway methods answer the given bytes, unparsed.

    No serializer is registered, so the bytes go on the wire exactly as given and
    the client's protobuf decoder is the first thing to look at them.
    """

    def handler(name: str) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(lambda request, context: answers[name])

    generic = grpc.method_handlers_generic_handler(
        GATEWAY_SERVICE, {name: handler(name) for name in answers}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((generic,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


@dataclass
class CodedGateway(ScriptedGateway):
    """Commits each submitted transaction with the next code of `codes` (then VALID), and
    answers the sagafacts GetRecord query with "no record" (an empty payload)."""

    codes: list[int] = field(default_factory=list)

    async def Submit(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.commit_code = self.codes.pop(0) if self.codes else 0
        return await super().Submit(request, context)

    async def Evaluate(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        _, _, _, args = _parse_proposal(request.proposed_transaction)
        if args and args[0] == b"GetRecord":
            self.calls.append(("Evaluate", request))
            from fabric_protos.gateway import gateway_pb2

            return gateway_pb2.EvaluateResponse(
                result=proposal_response_pb2.Response(status=200, payload=b"")
            )
        return await super().Evaluate(request, context)


def issue(
    ca: CertAuthority,
    common_name: str,
    *,
    dns_names: tuple[str, ...] = (),
    days: tuple[int, int] = (-1, 1),
) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) valid from/until `days` relative to now (negative: past).

    CertAuthority.issue always makes a certificate valid now; the expired cases need
    one whose validity ended, signed by the same CA.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(days=days[0]))
        .not_valid_after(now + datetime.timedelta(days=days[1]))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if dns_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False
        )
    cert = builder.sign(ca.key, hashes.SHA256())
    pem_key = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), pem_key


# -- a two-step saga with one chain step --------------------------------------------


class Fact(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ref: str


def _hold(ctx: StepContext) -> None:
    return None


def _args(ctx: StepContext) -> list[str]:
    return [ctx.input.ref]  # type: ignore[attr-defined]


CHAIN_SAGA = SagaDefinition(
    name="catalogue-fact",
    version=1,
    input_model=Fact,
    errors=(ChaincodeRefused,),
    steps=(
        Step("hold", _hold, compensation=_hold),
        Step(
            "record",
            kind=StepKind.CHAIN,
            chain=ChainCall("sagafacts", "RecordFact", _args, undo_function="ReverseFact"),
            retry=RetryPolicy(
                max_attempts=2, initial_backoff=0.01, non_retryable=("ChaincodeRefused",)
            ),
            timeout=5.0,
        ),
    ),
)


def chain_orchestrator(engine: Engine, ledger: Callable[[], GatewayClient]) -> Orchestrator:
    return Orchestrator(
        Registry([CHAIN_SAGA]),
        SqlUnitOfWorkFactory(engine),
        transient_errors=TRANSIENT_ERRORS,
        ledger=ledger,
        chain_settings=ChainSettings(channel="mychannel", status_timeout=2.0, recheck_delay=0.05),
    )


def connect(address: str, identity: SigningIdentity) -> GatewayClient:
    return GatewayClient.connect(GatewayEndpoint(address), identity)


def attempt_rows(engine: Engine) -> list[Any]:
    with engine.connect() as c:
        return list(c.execute(select(ledger_attempts).order_by(ledger_attempts.c.id)))


def attempt_count(engine: Engine) -> int:
    with engine.connect() as c:
        return int(c.execute(select(func.count()).select_from(ledger_attempts)).scalar_one())
