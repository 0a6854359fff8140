"""Command line and environment of each member: orderers, peers, the chaincode.

Fabric reads every scalar setting of core.yaml / orderer.yaml from ``CORE_…`` /
``ORDERER_…`` variables, so one config folder serves all nodes and each node's
identity, ports and data folder come from here.
"""

from __future__ import annotations

import os

from saga_devnet.chaincode_launcher import start_chaincode
from saga_fabricnet.material import ORDERER_MSP, Layout, Org
from saga_fabricnet.processes import MemberSpec
from saga_fabricnet.release import FabricRelease
from saga_fabricnet.state import NetworkState

CHAINCODE = "chaincode"

# Gossip timing (core.yaml defaults in brackets). A restarted peer is endorsable again
# only once the other org's gateway sees it alive and knows its chaincodes:
# - aliveTimeInterval [5s] / aliveExpirationTimeout [25s]: how often a peer says it is
#   alive and how long silence means dead; shorter = a dead peer is noticed sooner.
# - reconnectInterval [25s]: how often a peer redials members it considers dead; this
#   is what otherwise keeps a restarted peer out of the other org's view for ~25 s.
# - publishStateInfoInterval / requestStateInfoInterval [4s]: ledger height and
#   installed chaincodes, which the gateway's endorsement plan needs.
# - membershipTrackerInterval [5s]: how soon "Membership view has changed" is logged.
GOSSIP_TIMING = {
    "CORE_PEER_GOSSIP_ALIVETIMEINTERVAL": "1s",
    "CORE_PEER_GOSSIP_ALIVEEXPIRATIONTIMEOUT": "5s",
    "CORE_PEER_GOSSIP_RECONNECTINTERVAL": "2s",
    "CORE_PEER_GOSSIP_PUBLISHSTATEINFOINTERVAL": "1s",
    "CORE_PEER_GOSSIP_REQUESTSTATEINFOINTERVAL": "1s",
    "CORE_PEER_GOSSIP_MEMBERSHIPTRACKERINTERVAL": "1s",
}


def orderer_name(n: int) -> str:
    return f"orderer{n}"


def peer_name(org: Org, n: int = 0) -> str:
    return f"peer{n}.org{org.index}"


def peer_count(state: NetworkState, org: Org) -> int:
    return 1 + len(state.ports.more_peers.get(org.index, ()))


def _base_env(layout: Layout) -> dict[str, str]:
    # PATH and HOME only: a developer's own CORE_/ORDERER_ variables must not leak in.
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TZ")}
    return {**keep, "FABRIC_CFG_PATH": str(layout.config), "FABRIC_LOGGING_SPEC": "INFO"}


def orderer_spec(release: FabricRelease, layout: Layout, state: NetworkState, n: int) -> MemberSpec:
    ports = state.ports.orderers[n]
    node = layout.orderer_dir(n)
    tls = node / "tls"
    data = layout.data / orderer_name(n)
    tls_ca = f"[{tls / 'ca.crt'}]"
    env = {
        **_base_env(layout),
        "ORDERER_GENERAL_LISTENADDRESS": "127.0.0.1",
        "ORDERER_GENERAL_LISTENPORT": str(ports.listen),
        "ORDERER_GENERAL_LOCALMSPID": ORDERER_MSP,
        "ORDERER_GENERAL_LOCALMSPDIR": str(node / "msp"),
        "ORDERER_GENERAL_TLS_ENABLED": "true",
        "ORDERER_GENERAL_TLS_PRIVATEKEY": str(tls / "server.key"),
        "ORDERER_GENERAL_TLS_CERTIFICATE": str(tls / "server.crt"),
        "ORDERER_GENERAL_TLS_ROOTCAS": tls_ca,
        # Raft traffic shares the main listener, authenticated by the same TLS pair.
        "ORDERER_GENERAL_CLUSTER_CLIENTCERTIFICATE": str(tls / "server.crt"),
        "ORDERER_GENERAL_CLUSTER_CLIENTPRIVATEKEY": str(tls / "server.key"),
        "ORDERER_GENERAL_CLUSTER_ROOTCAS": tls_ca,
        "ORDERER_CHANNELPARTICIPATION_ENABLED": "true",
        "ORDERER_ADMIN_LISTENADDRESS": f"127.0.0.1:{ports.admin}",
        "ORDERER_ADMIN_TLS_ENABLED": "true",
        "ORDERER_ADMIN_TLS_PRIVATEKEY": str(tls / "server.key"),
        "ORDERER_ADMIN_TLS_CERTIFICATE": str(tls / "server.crt"),
        "ORDERER_ADMIN_TLS_ROOTCAS": tls_ca,
        "ORDERER_ADMIN_TLS_CLIENTAUTHREQUIRED": "true",
        "ORDERER_ADMIN_TLS_CLIENTROOTCAS": tls_ca,
        "ORDERER_OPERATIONS_LISTENADDRESS": f"127.0.0.1:{ports.operations}",
        "ORDERER_METRICS_PROVIDER": "prometheus",
        "ORDERER_FILELEDGER_LOCATION": str(data / "ledger"),
        "ORDERER_CONSENSUS_WALDIR": str(data / "etcdraft" / "wal"),
        "ORDERER_CONSENSUS_SNAPDIR": str(data / "etcdraft" / "snapshot"),
    }
    if release.major < 3:
        # 2.x still defaults to bootstrapping a system channel from a genesis file.
        env["ORDERER_GENERAL_BOOTSTRAPMETHOD"] = "none"
    return MemberSpec(
        name=orderer_name(n),
        argv=[str(release.binary("orderer"))],
        env=env,
        log=layout.logs / f"{orderer_name(n)}.log",
        ready_port=ports.admin,
        cwd=layout.root,
    )


def peer_env(layout: Layout, state: NetworkState, org: Org, n: int = 0) -> dict[str, str]:
    ports = state.ports.peer(org.index, n)
    tls = layout.peer_dir(org, n) / "tls"
    data = layout.data / peer_name(org, n)
    address = f"127.0.0.1:{ports.listen}"
    # One peer in the org: it bootstraps from itself and learns the other org through
    # the anchor peers in the channel config. Several: each bootstraps from the others
    # of its org (gossip needs one live contact to find the rest after a restart).
    others = [
        f"127.0.0.1:{state.ports.peer(org.index, m).listen}"
        for m in range(peer_count(state, org))
        if m != n
    ]
    env = {
        **_base_env(layout),
        "CORE_PEER_ID": org.peer_host(n),
        "CORE_PEER_LOCALMSPID": org.msp_id,
        "CORE_PEER_MSPCONFIGPATH": str(layout.peer_dir(org, n) / "msp"),
        "CORE_PEER_LISTENADDRESS": address,
        "CORE_PEER_ADDRESS": address,
        "CORE_PEER_CHAINCODELISTENADDRESS": f"127.0.0.1:{ports.chaincode}",
        "CORE_PEER_CHAINCODEADDRESS": f"127.0.0.1:{ports.chaincode}",
        "CORE_PEER_GOSSIP_BOOTSTRAP": " ".join(others) or address,
        "CORE_PEER_GOSSIP_EXTERNALENDPOINT": address,
        "CORE_PEER_GOSSIP_ENDPOINT": address,
        "CORE_PEER_TLS_ENABLED": "true",
        "CORE_PEER_TLS_CERT_FILE": str(tls / "server.crt"),
        "CORE_PEER_TLS_KEY_FILE": str(tls / "server.key"),
        "CORE_PEER_TLS_ROOTCERT_FILE": str(tls / "ca.crt"),
        "CORE_PEER_GATEWAY_ENABLED": "true",
        "CORE_PEER_FILESYSTEMPATH": str(data),
        "CORE_LEDGER_SNAPSHOTS_ROOTDIR": str(data / "snapshots"),
        "CORE_LEDGER_STATE_STATEDATABASE": "goleveldb",
        "CORE_OPERATIONS_LISTENADDRESS": f"127.0.0.1:{ports.operations}",
        "CORE_METRICS_PROVIDER": "prometheus",
        "CORE_VM_ENDPOINT": "",
        **GOSSIP_TIMING,
    }
    if state.options.client_auth_required:
        # Peers and clients of both orgs present certificates from their org's TLS CA.
        client_cas = [layout.org_tls_ca(Org(i)) for i in state.ports.peers]
        env["CORE_PEER_TLS_CLIENTAUTHREQUIRED"] = "true"
        env["CORE_PEER_TLS_CLIENTROOTCAS_FILES"] = " ".join(str(p) for p in client_cas)
    return env


def peer_spec(
    release: FabricRelease, layout: Layout, state: NetworkState, org: Org, n: int = 0
) -> MemberSpec:
    return MemberSpec(
        name=peer_name(org, n),
        argv=[str(release.binary("peer")), "node", "start"],
        env=peer_env(layout, state, org, n),
        log=layout.logs / f"{peer_name(org, n)}.log",
        ready_port=state.ports.peer(org.index, n).listen,
        cwd=layout.root,
    )


def chaincode_spec(layout: Layout, state: NetworkState) -> MemberSpec:
    address = f"127.0.0.1:{state.ports.chaincode}"
    log = layout.logs / "chaincode.log"
    # The peers accept the registration only under the installed package id.
    package_id = state.package_id
    return MemberSpec(
        name=CHAINCODE,
        argv=[],
        env={},
        log=log,
        ready_port=state.ports.chaincode,
        cwd=layout.root,
        launch=lambda: start_chaincode(address, package_id, log, new_session=True),
    )
