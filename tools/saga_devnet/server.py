"""Composition root: material, ledger, endorsers, orderer and one Gateway server per org."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import Any

import grpc

from saga_devnet import cryptogen, profiles
from saga_devnet.admin_api import AdminApi
from saga_devnet.chaincodes import Chaincode, make_chaincode
from saga_devnet.channel_config import channel_config
from saga_devnet.commit_notifier import CommitNotifier
from saga_devnet.config import ChaincodeConfig, DevnetConfig, OrgConfig
from saga_devnet.endorser import Endorser
from saga_devnet.faults import Faults
from saga_devnet.gateway_service import GatewayService
from saga_devnet.ledger_store import LedgerStore
from saga_devnet.msp import MembershipRegistry, load_signer
from saga_devnet.orderer import Orderer
from saga_devnet.policy import Rule, parse_policy
from saga_devnet.protos import gateway_pb2_grpc
from saga_devnet.rwlock import RWLock
from saga_devnet.validator import Validator

log = logging.getLogger("saga_devnet")


def prepare(directory: Path, cfg: DevnetConfig) -> None:
    """Crypto material and connection profiles; idempotent."""
    cryptogen.generate(directory, cfg)
    profiles.write_profiles(directory, cfg)


def _server_credentials(
    directory: Path, cfg: DevnetConfig, org: OrgConfig
) -> grpc.ServerCredentials:
    tls = cryptogen.org_root(directory, org) / "peers" / org.peer_host / "tls"
    pair = [((tls / "server.key").read_bytes(), (tls / "server.crt").read_bytes())]
    if not cfg.mutual_tls:
        return grpc.ssl_server_credentials(pair)
    # Clients of any org may connect, as on a channel peer: trust every org's TLS CA.
    roots = b"".join(
        (cryptogen.org_root(directory, o) / "tlsca" / f"tlsca.{o.domain}-cert.pem").read_bytes()
        for o in cfg.orgs
    )
    return grpc.ssl_server_credentials(pair, root_certificates=roots, require_client_auth=True)


class Devnet:
    def __init__(self, directory: Path, cfg: DevnetConfig, faults: Faults) -> None:
        self.directory = directory
        self.cfg = cfg
        self.faults = faults
        prepare(directory, cfg)
        self.registry = MembershipRegistry.load(directory, cfg)
        self.store = LedgerStore(directory / "ledger" / cfg.channel)
        self.store.ensure_lifecycle(cfg.chaincodes)
        self.lock = RWLock()
        self.notifier = CommitNotifier()
        msp_ids = [o.msp_id for o in cfg.orgs]
        self.policies: dict[str, Rule] = {
            name: parse_policy(cc.policy, msp_ids) for name, cc in cfg.chaincodes.items()
        }
        self.chaincodes: dict[str, tuple[Chaincode, ChaincodeConfig]] = {
            name: (make_chaincode(directory, name, cc), cc) for name, cc in cfg.chaincodes.items()
        }
        orderer_root = cryptogen.org_root(directory, cfg.orderer, orderer=True)
        orderer_signer = load_signer(
            orderer_root / "orderers" / f"orderer.{cfg.orderer.domain}" / "msp",
            cfg.orderer.msp_id,
        )
        self.validator = Validator(
            cfg.channel, self.registry, self.policies.get, self.store, faults
        )
        self.orderer = Orderer(
            channel=cfg.channel,
            store=self.store,
            validator=self.validator,
            signer=orderer_signer,
            notifier=self.notifier,
            lock=self.lock,
            faults=faults,
            batch_timeout=cfg.batch_timeout,
            max_message_count=cfg.max_message_count,
            genesis_config=lambda: channel_config(directory, cfg),
        )
        self.endorsers: dict[str, Endorser] = {}
        for org in cfg.orgs:
            peer_msp = cryptogen.org_root(directory, org) / "peers" / org.peer_host / "msp"
            self.endorsers[org.msp_id] = Endorser(
                org=org,
                address=f"{org.peer_host}:{org.port}",
                listen_address=f"{cfg.host}:{org.port}",
                signer=load_signer(peer_msp, org.msp_id),
                channel=cfg.channel,
                registry=self.registry,
                store=self.store,
                chaincodes=self.chaincodes.get,
                lock=self.lock,
                faults=faults,
            )
        self._servers: dict[str, grpc.aio.Server] = {}

    def health(self) -> dict[str, Any]:
        return {"height": self.store.height, "pending": self.store.pending_count()}

    async def _start_gateway(self, org: OrgConfig) -> grpc.aio.Server:
        server = grpc.aio.server()
        service = GatewayService(
            local=self.endorsers[org.msp_id],
            endorsers=self.endorsers,
            channel=self.cfg.channel,
            policy_of=self.policies,
            registry=self.registry,
            store=self.store,
            orderer=self.orderer,
            notifier=self.notifier,
            faults=self.faults,
            orderer_endpoint=f"{self.cfg.host}:{self.cfg.orderer.port}",
            orderer_msp_id=self.cfg.orderer.msp_id,
        )
        gateway_pb2_grpc.add_GatewayServicer_to_server(service, server)
        address = f"{self.cfg.host}:{org.port}"
        server.add_secure_port(address, _server_credentials(self.directory, self.cfg, org))
        await server.start()
        log.info("gateway for %s listening on %s", org.msp_id, address)
        return server

    async def _follow_org_down(self) -> None:
        """A peer that is down (fault org_down) takes its gateway port with it: callers of
        that org's gateway see connection refused, as they would from a stopped peer."""
        while True:
            await asyncio.sleep(0.1)
            for org in self.cfg.orgs:
                down = org.msp_id in self.faults.org_down
                server = self._servers.get(org.msp_id)
                if down and server is not None:
                    del self._servers[org.msp_id]
                    await server.stop(grace=None)
                    log.warning("fault: %s's peer is down", org.msp_id)
                elif not down and server is None:
                    self._servers[org.msp_id] = await self._start_gateway(org)

    async def run(self, stop: asyncio.Event) -> None:
        self.orderer.ensure_genesis()
        for org in self.cfg.orgs:
            if org.msp_id not in self.faults.org_down:
                self._servers[org.msp_id] = await self._start_gateway(org)
        admin = await AdminApi(self.faults, self.health).serve("127.0.0.1", self.cfg.admin_port)
        log.info("admin API on http://127.0.0.1:%d", self.cfg.admin_port)
        orderer_task = asyncio.create_task(self.orderer.run(), name="orderer")
        follower = asyncio.create_task(self._follow_org_down(), name="org-down")
        # Tests wait for this line on stdout before connecting.
        print(f"devnet ready: height={self.store.height} dir={self.directory}", flush=True)
        await stop.wait()
        log.info("stopping")
        for task in (follower, orderer_task):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        admin.close()
        await asyncio.gather(*(s.stop(grace=1.0) for s in self._servers.values()))
        for chaincode, _cfg in self.chaincodes.values():
            with contextlib.suppress(Exception):
                await chaincode.close()
        self.store.close()


async def serve(directory: Path, cfg: DevnetConfig, faults: Faults) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await Devnet(directory, cfg, faults).run(stop)
