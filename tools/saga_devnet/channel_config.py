"""The channel's configuration (common.Config), built as `configtxgen` builds it.

Mirrors internal/configtxgen/encoder/encoder.go of Fabric 2.5 for the profile the project's
real network uses (saga_fabricnet/templates/configtx.yaml.tmpl, itself test-network's shape):
an etcdraft orderer org, the peer orgs with their MSPs, anchor peers and Signature policies,
ImplicitMeta policies at the channel, Orderer and Application levels, V2_0 / V2_0 / V2_5
capabilities. Every mod_policy is "Admins", every version 0, as configtxgen leaves them.

The MSP values are read from the same files a `configtxgen -profile` run would read (the org's
msp/ folder), so `configtxlator proto_decode` of the devnet's block 0 and of configtxgen's
block for the same material agree field for field; tests/fabric/test_devnet_blocks_fabric.py
checks that with the real binaries.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import import_module
from pathlib import Path
from typing import Any

import yaml

from saga_devnet import cryptogen
from saga_devnet.config import DevnetConfig, OrgConfig
from saga_devnet.policy import OutOf, Principal, Rule, parse_policy
from saga_devnet.protos import configtx_pb2

configuration_pb2: Any = import_module("fabric_protos.common.configuration_pb2")
policies_pb2: Any = import_module("fabric_protos.common.policies_pb2")
msp_config_pb2: Any = import_module("fabric_protos.msp.msp_config_pb2")
msp_principal_pb2: Any = import_module("fabric_protos.msp.msp_principal_pb2")
peer_configuration_pb2: Any = import_module("fabric_protos.peer.configuration_pb2")
orderer_configuration_pb2: Any = import_module("fabric_protos.orderer.configuration_pb2")
etcdraft_configuration_pb2: Any = import_module("fabric_protos.orderer.etcdraft.configuration_pb2")

ADMINS = "Admins"
MAX_UINT32 = 2**32 - 1
# configtx.yaml's BatchSize: AbsoluteMaxBytes 99 MB, PreferredMaxBytes 512 KB.
ABSOLUTE_MAX_BYTES = 99 * 1024 * 1024
PREFERRED_MAX_BYTES = 512 * 1024
CAPABILITIES = {"channel": "V2_0", "orderer": "V2_0", "application": "V2_5"}
_ROLES = {"member": 0, "admin": 1, "client": 2, "peer": 3, "orderer": 4}  # MSPRole.MSPRoleType
_IMPLICIT = {"ANY": 0, "ALL": 1, "MAJORITY": 2}  # ImplicitMetaPolicy.Rule


# -- policies -----------------------------------------------------------------------------


def _signature_envelope(rule: Rule) -> Any:
    """policydsl.FromString's output: identities in order of first mention, rules by index."""
    identities: list[Principal] = []

    def encode(r: Rule) -> Any:
        if isinstance(r, Principal):
            if r not in identities:
                identities.append(r)
            return policies_pb2.SignaturePolicy(signed_by=identities.index(r))
        return policies_pb2.SignaturePolicy(
            n_out_of=policies_pb2.SignaturePolicy.NOutOf(
                n=r.n, rules=[encode(sub) for sub in r.rules]
            )
        )

    top = encode(rule)
    return policies_pb2.SignaturePolicyEnvelope(
        version=0,
        rule=top,
        identities=[
            msp_principal_pb2.MSPPrincipal(
                principal_classification=msp_principal_pb2.MSPPrincipal.ROLE,
                principal=msp_principal_pb2.MSPRole(
                    msp_identifier=p.msp_id, role=_ROLES[p.role]
                ).SerializeToString(),
            )
            for p in identities
        ],
    )


def _signature(text: str) -> Any:
    rule = parse_policy(text, [])
    if not isinstance(rule, OutOf):  # a bare principal is not valid policydsl
        raise ValueError(f"signature policy must be AND/OR/OutOf: {text!r}")
    return policies_pb2.Policy(
        type=policies_pb2.Policy.SIGNATURE, value=_signature_envelope(rule).SerializeToString()
    )


def _implicit(text: str) -> Any:
    kind, sub = text.split()
    meta = policies_pb2.ImplicitMetaPolicy(sub_policy=sub, rule=_IMPLICIT[kind])
    return policies_pb2.Policy(
        type=policies_pb2.Policy.IMPLICIT_META, value=meta.SerializeToString()
    )


def _add_policies(group: Any, policies: dict[str, Any]) -> None:
    for name, policy in policies.items():
        group.policies[name].mod_policy = ADMINS
        group.policies[name].policy.CopyFrom(policy)


def _add_value(group: Any, name: str, message: Any) -> None:
    group.values[name].mod_policy = ADMINS
    group.values[name].value = message.SerializeToString()


def _meta_policies(*extra: tuple[str, str]) -> dict[str, Any]:
    base = [("Readers", "ANY Readers"), ("Writers", "ANY Writers"), ("Admins", "MAJORITY Admins")]
    return {name: _implicit(rule) for name, rule in [*base, *extra]}


def _capabilities(name: str) -> Any:
    caps = configuration_pb2.Capabilities()
    caps.capabilities[name].SetInParent()
    return caps


# -- MSPs ---------------------------------------------------------------------------------


def _pems(folder: Path) -> list[bytes]:
    """The files of an MSP subfolder in name order, as msp/configbuilder.go reads them."""
    if not folder.is_dir():
        return []
    return [p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()]


def msp_value(msp_dir: Path, msp_id: str) -> Any:
    """msp.GetVerifyingMspConfig: the org's CAs, TLS CAs and NodeOUs, no signing identity."""
    fabric = msp_config_pb2.FabricMSPConfig(
        name=msp_id,
        root_certs=_pems(msp_dir / "cacerts"),
        intermediate_certs=_pems(msp_dir / "intermediatecerts"),
        admins=_pems(msp_dir / "admincerts"),
        tls_root_certs=_pems(msp_dir / "tlscacerts"),
        tls_intermediate_certs=_pems(msp_dir / "tlsintermediatecerts"),
        crypto_config=msp_config_pb2.FabricCryptoConfig(
            signature_hash_family="SHA2", identity_identifier_hash_function="SHA256"
        ),
    )
    config_yaml = msp_dir / "config.yaml"
    if config_yaml.exists():
        node_ous = (yaml.safe_load(config_yaml.read_text()) or {}).get("NodeOUs") or {}
        ous = fabric.fabric_node_ous
        ous.enable = bool(node_ous.get("Enable"))
        for key, field_name in (
            ("ClientOUIdentifier", "client_ou_identifier"),
            ("PeerOUIdentifier", "peer_ou_identifier"),
            ("AdminOUIdentifier", "admin_ou_identifier"),
            ("OrdererOUIdentifier", "orderer_ou_identifier"),
        ):
            ou = node_ous.get(key)
            if ou:
                target = getattr(ous, field_name)
                target.organizational_unit_identifier = ou["OrganizationalUnitIdentifier"]
                if ou.get("Certificate"):
                    target.certificate = (msp_dir / ou["Certificate"]).read_bytes()
    return msp_config_pb2.MSPConfig(type=0, config=fabric.SerializeToString())


def _org_policies(msp: str, *, orderer: bool) -> dict[str, Any]:
    if orderer:
        return {
            "Readers": _signature(f"OR('{msp}.member')"),
            "Writers": _signature(f"OR('{msp}.member')"),
            "Admins": _signature(f"OR('{msp}.admin')"),
        }
    return {
        "Readers": _signature(f"OR('{msp}.admin', '{msp}.peer', '{msp}.client')"),
        "Writers": _signature(f"OR('{msp}.admin', '{msp}.client')"),
        "Admins": _signature(f"OR('{msp}.admin')"),
        "Endorsement": _signature(f"OR('{msp}.peer')"),
    }


# -- groups -------------------------------------------------------------------------------


def go_duration(seconds: float) -> str:
    """Go's time.Duration.String(), which configtxgen writes into BatchTimeout."""
    ns = round(seconds * 1e9)
    if ns == 0:
        return "0s"
    if ns < 1_000_000_000:
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if ns >= size:
                return _trim(ns / size) + unit
    hours, rest = divmod(ns, 3_600 * 1_000_000_000)
    minutes, rest = divmod(rest, 60 * 1_000_000_000)
    out = f"{hours}h" if hours else ""
    out += f"{minutes}m" if hours or minutes else ""
    return out + _trim(rest / 1e9) + "s"


def _trim(value: float) -> str:
    return f"{value:.9f}".rstrip("0").rstrip(".")


def orderer_org_name(cfg: DevnetConfig) -> str:
    name = cfg.orderer.name
    return name if name.endswith("Org") else f"{name}Org"


def _orderer_group(directory: Path, cfg: DevnetConfig) -> Any:
    group = configtx_pb2.ConfigGroup(mod_policy=ADMINS)
    _add_policies(group, _meta_policies(("BlockValidation", "ANY Writers")))
    _add_value(
        group,
        "BatchSize",
        orderer_configuration_pb2.BatchSize(
            max_message_count=cfg.max_message_count,
            absolute_max_bytes=ABSOLUTE_MAX_BYTES,
            preferred_max_bytes=PREFERRED_MAX_BYTES,
        ),
    )
    _add_value(
        group,
        "BatchTimeout",
        orderer_configuration_pb2.BatchTimeout(timeout=go_duration(cfg.batch_timeout)),
    )
    _add_value(group, "ChannelRestrictions", orderer_configuration_pb2.ChannelRestrictions())
    _add_value(group, "Capabilities", _capabilities(CAPABILITIES["orderer"]))
    root = cryptogen.org_root(directory, cfg.orderer, orderer=True)
    tls = (root / "orderers" / f"orderer.{cfg.orderer.domain}" / "tls" / "server.crt").read_bytes()
    raft = etcdraft_configuration_pb2.ConfigMetadata(
        consenters=[
            etcdraft_configuration_pb2.Consenter(
                host=cfg.host, port=cfg.orderer.port, client_tls_cert=tls, server_tls_cert=tls
            )
        ],
        # configtxgen's defaults (genesisconfig), the same as the sample configtx.yaml's.
        options=etcdraft_configuration_pb2.Options(
            tick_interval="500ms",
            election_tick=10,
            heartbeat_tick=1,
            max_inflight_blocks=5,
            snapshot_interval_size=16 * 1024 * 1024,
        ),
    )
    _add_value(
        group,
        "ConsensusType",
        orderer_configuration_pb2.ConsensusType(type="etcdraft", metadata=raft.SerializeToString()),
    )
    org = configtx_pb2.ConfigGroup(mod_policy=ADMINS)
    _add_policies(org, _org_policies(cfg.orderer.msp_id, orderer=True))
    _add_value(org, "MSP", msp_value(root / "msp", cfg.orderer.msp_id))
    _add_value(
        org,
        "Endpoints",
        configuration_pb2.OrdererAddresses(addresses=[f"{cfg.host}:{cfg.orderer.port}"]),
    )
    group.groups[orderer_org_name(cfg)].CopyFrom(org)
    return group


def _application_org(directory: Path, org: OrgConfig) -> Any:
    group = configtx_pb2.ConfigGroup(mod_policy=ADMINS)
    _add_policies(group, _org_policies(org.msp_id, orderer=False))
    _add_value(group, "MSP", msp_value(cryptogen.org_root(directory, org) / "msp", org.msp_id))
    # In the genesis block already, as the project's real network has them, so gossip (and
    # discovery) could find each org's peer without a config update.
    _add_value(
        group,
        "AnchorPeers",
        peer_configuration_pb2.AnchorPeers(
            anchor_peers=[peer_configuration_pb2.AnchorPeer(host=org.peer_host, port=org.port)]
        ),
    )
    return group


def _application_group(directory: Path, orgs: Iterable[OrgConfig]) -> Any:
    group = configtx_pb2.ConfigGroup(mod_policy=ADMINS)
    _add_policies(
        group,
        _meta_policies(
            ("LifecycleEndorsement", "MAJORITY Endorsement"),
            ("Endorsement", "MAJORITY Endorsement"),
        ),
    )
    _add_value(group, "Capabilities", _capabilities(CAPABILITIES["application"]))
    for org in orgs:
        group.groups[org.msp_id].CopyFrom(_application_org(directory, org))
    return group


def channel_config(directory: Path, cfg: DevnetConfig) -> Any:
    """common.Config at sequence 0 for the devnet's channel, from its crypto material."""
    root = configtx_pb2.ConfigGroup(mod_policy=ADMINS)
    _add_policies(root, _meta_policies())
    _add_value(root, "HashingAlgorithm", configuration_pb2.HashingAlgorithm(name="SHA256"))
    _add_value(
        root,
        "BlockDataHashingStructure",
        configuration_pb2.BlockDataHashingStructure(width=MAX_UINT32),
    )
    _add_value(root, "Capabilities", _capabilities(CAPABILITIES["channel"]))
    root.groups["Orderer"].CopyFrom(_orderer_group(directory, cfg))
    root.groups["Application"].CopyFrom(_application_group(directory, cfg.orgs))
    return configtx_pb2.Config(sequence=0, channel_group=root)
