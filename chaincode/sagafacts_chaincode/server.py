"""The chaincode-as-a-service gRPC server.

fabric-chaincode-python 2.5.4's own ``server.start`` cannot carry concurrent
transactions: its handler answers each peer message in its own task, and those
tasks call ``context.write`` on the one stream at the same time, which grpc.aio
refuses (GRPC_CALL_ERROR_TOO_MANY_OPERATIONS); the COMPLETED message is lost
and the peer times out. The library's service is reused unchanged here, with a
context whose writes take turns, which is what Fabric's Go shim does with its
send lock.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterable
from typing import Any

import grpc
from fabric_chaincode_python.fabric_shim.interfaces import Chaincode
from fabric_chaincode_python.fabric_shim.server import ChaincodeService
from fabric_protos.peer import chaincode_shim_pb2_grpc

log = logging.getLogger(__name__)


class _OneWriterAtATime:
    """The servicer context, with ``write`` serialised; everything else passes through."""

    def __init__(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self._context = context
        self._lock = asyncio.Lock()

    async def write(self, message: Any) -> None:
        async with self._lock:
            await self._context.write(message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class SerialWriteChaincodeService(ChaincodeService):
    async def Connect(
        self, request_iterator: AsyncIterable[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        await super().Connect(request_iterator, _OneWriterAtATime(context))


async def serve(
    chaincode: Chaincode,
    cc_id: str,
    address: str,
    *,
    key: bytes | None = None,
    cert: bytes | None = None,
    client_ca: bytes | None = None,
    grace: float = 3.0,
) -> None:
    """Serve until SIGINT or SIGTERM. TLS when ``cert``/``key``; mutual TLS with ``client_ca``."""
    server = grpc.aio.server()
    chaincode_shim_pb2_grpc.add_ChaincodeServicer_to_server(
        SerialWriteChaincodeService(cc_id, chaincode), server
    )
    if cert is not None and key is not None:
        creds = grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
        )
        port = server.add_secure_port(address, creds)
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    log.info("chaincode %s listening on port %d", cc_id, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace)
