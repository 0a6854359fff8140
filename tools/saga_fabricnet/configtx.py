"""The channel's genesis block: configtx.yaml rendered from the package's template,
then ``configtxgen -outputBlock``. No system channel: orderers join the channel
through their admin endpoint (``osnadmin channel join``) with this block."""

from __future__ import annotations

import os
import subprocess
from importlib import resources
from string import Template

from saga_fabricnet.material import ORDERER_MSP, Layout, Org
from saga_fabricnet.options import ABSOLUTE_MAX_BYTES, NetworkOptions
from saga_fabricnet.release import FabricRelease
from saga_fabricnet.state import Ports

PROFILE = "SagaChannel"


def _duration(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


def _raft(layout: Layout, ports: Ports) -> str:
    lines = ["  OrdererType: etcdraft", "  EtcdRaft:", "    Consenters:"]
    for n, p in enumerate(ports.orderers):
        tls = layout.orderer_dir(n) / "tls" / "server.crt"
        lines += [
            f"      - Host: 127.0.0.1\n        Port: {p.listen}",
            f"        ClientTLSCert: {tls}\n        ServerTLSCert: {tls}",
        ]
    # Fabric's sample timing (500 ms ticks, election after 10): a killed leader is
    # replaced in about 5 s.
    lines += [
        "    Options:",
        "      TickInterval: 500ms",
        "      ElectionTick: 10",
        "      HeartbeatTick: 1",
        "      MaxInflightBlocks: 5",
        "      SnapshotIntervalSize: 16 MB",
    ]
    return "\n".join(lines)


def _bft(layout: Layout, ports: Ports, batch_timeout: str) -> str:
    lines = ["  OrdererType: BFT", "  ConsenterMapping:"]
    for n, p in enumerate(ports.orderers):
        node = layout.orderer_dir(n)
        tls = node / "tls" / "server.crt"
        identity = node / "msp" / "signcerts" / f"{layout.orderer_host(n)}-cert.pem"
        lines += [
            f"    - ID: {n + 1}\n      Host: 127.0.0.1\n      Port: {p.listen}",
            f"      MSPID: {ORDERER_MSP}\n      Identity: {identity}",
            f"      ClientTLSCert: {tls}\n      ServerTLSCert: {tls}",
        ]
    lines += [
        "  SmartBFT:",
        "    RequestBatchMaxCount: 100",
        # BFT cuts a block after this interval, not after BatchTimeout.
        f"    RequestBatchMaxInterval: {batch_timeout}",
        "    RequestForwardTimeout: 2s",
        "    RequestComplainTimeout: 20s",
        "    RequestAutoRemoveTimeout: 3m0s",
        "    ViewChangeResendInterval: 5s",
        "    ViewChangeTimeout: 20s",
        "    LeaderHeartbeatTimeout: 1m0s",
        "    CollectTimeout: 1s",
        "    IncomingMessageBufferSize: 200",
        "    RequestPoolSize: 100000",
        "    LeaderHeartbeatCount: 10",
    ]
    return "\n".join(lines)


def render(layout: Layout, options: NetworkOptions, ports: Ports) -> str:
    template = Template(
        resources.files("saga_fabricnet.templates").joinpath("configtx.yaml.tmpl").read_text()
    )
    bft = options.consensus == "BFT"
    return template.substitute(
        orderer_msp=layout.orderer_org / "msp",
        orderer_endpoints="\n".join(f"      - 127.0.0.1:{p.listen}" for p in ports.orderers),
        org1_msp=layout.org_dir(Org(1)) / "msp",
        org2_msp=layout.org_dir(Org(2)) / "msp",
        org1_peer_port=ports.peers[1].listen,
        org2_peer_port=ports.peers[2].listen,
        # BFT orderers exist from Fabric 3.0 and need the V3_0 channel capability.
        channel_capability="V3_0" if bft else "V2_0",
        consensus=_bft(layout, ports, _duration(options.batch_timeout))
        if bft
        else _raft(layout, ports),
        batch_timeout=_duration(options.batch_timeout),
        max_message_count=options.max_message_count,
        absolute_max_bytes=ABSOLUTE_MAX_BYTES,
        preferred_max_bytes=options.preferred_max_bytes,
    )


def create_channel_block(
    release: FabricRelease, layout: Layout, options: NetworkOptions, ports: Ports
) -> None:
    layout.config.mkdir(parents=True, exist_ok=True)
    (layout.config / "configtx.yaml").write_text(render(layout, options, ports))
    layout.channel_block.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [
            str(release.binary("configtxgen")),
            "-profile",
            PROFILE,
            "-channelID",
            options.channel,
            "-outputBlock",
            str(layout.channel_block),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "FABRIC_CFG_PATH": str(layout.config)},
    )
    if result.returncode != 0:
        raise RuntimeError(f"configtxgen failed: {result.stderr or result.stdout}")
