"""Run the saga-facts chaincode as a service (the peer dials it).

    python -m sagafacts_chaincode --id sagafacts_1.0:<hash> --address 0.0.0.0:9999

Every option falls back to an environment variable, so the same image runs
under a real peer's ``ccaas`` external builder and under the devnet:

    --id         CHAINCODE_ID               package id the peer installed (label:hash)
    --address    CHAINCODE_SERVER_ADDRESS   host:port to listen on
    --tls-cert   CHAINCODE_TLS_CERT         server certificate (PEM file); TLS when given
    --tls-key    CHAINCODE_TLS_KEY          its private key (PEM file)
    --client-ca  CHAINCODE_CLIENT_CA_CERT   CA of the peer's client cert; mutual TLS when given
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path


class _DropShimChatter(logging.Filter):
    # fabric-chaincode-python logs this at WARNING for every message it receives.
    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "-->> Look out!"


def _read(path: str | None, what: str) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SystemExit(f"cannot read {what} {path!r}: {exc}") from None


def main(argv: Sequence[str] | None = None) -> int:
    env = os.environ
    parser = argparse.ArgumentParser(
        prog="python -m sagafacts_chaincode", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--id", default=env.get("CHAINCODE_ID"), help="chaincode package id")
    parser.add_argument("--address", default=env.get("CHAINCODE_SERVER_ADDRESS"))
    parser.add_argument("--tls-cert", default=env.get("CHAINCODE_TLS_CERT"))
    parser.add_argument("--tls-key", default=env.get("CHAINCODE_TLS_KEY"))
    parser.add_argument("--client-ca", default=env.get("CHAINCODE_CLIENT_CA_CERT"))
    parser.add_argument("--log-level", default=env.get("CHAINCODE_LOG_LEVEL", "WARNING"))
    opts = parser.parse_args(argv)
    if not opts.id:
        parser.error("--id or CHAINCODE_ID is required")
    if not opts.address:
        parser.error("--address or CHAINCODE_SERVER_ADDRESS is required")
    if bool(opts.tls_cert) != bool(opts.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if opts.client_ca and not opts.tls_cert:
        parser.error("--client-ca needs --tls-cert and --tls-key")
    cert = _read(opts.tls_cert, "TLS certificate")
    key = _read(opts.tls_key, "TLS key")
    client_ca = _read(opts.client_ca, "client CA certificate")

    level = getattr(logging, str(opts.log_level).upper(), logging.WARNING)
    # Importing the shim configures the root logger at DEBUG; set ours afterwards.
    from sagafacts_chaincode.contract import SagaFactsChaincode
    from sagafacts_chaincode.server import serve

    logging.getLogger().setLevel(level)
    shim_log = logging.getLogger("asyncio")
    shim_log.setLevel(level)
    shim_log.addFilter(_DropShimChatter())

    mode = "mutual TLS" if client_ca else "TLS" if cert else "plaintext"
    print(f"chaincode {opts.id} serving on {opts.address} ({mode})", file=sys.stderr, flush=True)
    asyncio.run(
        serve(SagaFactsChaincode(), opts.id, opts.address, key=key, cert=cert, client_ca=client_ca)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
