"""The devnet's configuration: organisations, ports, block cutting, chaincode endpoints.

Stored as YAML in DIR/devnet.yaml. The first `up` writes it (from defaults or from a
seed file), later runs read it back, so a restarted devnet keeps the ports and names
the connection profiles already point at.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

CONFIG_FILE = "devnet.yaml"


@dataclass
class OrgConfig:
    name: str
    msp_id: str
    domain: str
    port: int = 0  # the peer's Gateway port; 0 only in the orderer org

    @property
    def peer_host(self) -> str:
        return f"peer0.{self.domain}"


@dataclass
class ChaincodeConfig:
    """One chaincode: where it runs and which endorsement policy guards it.

    `address` dials a chaincode-as-a-service server (as connection.json does);
    `builtin` names an in-process chaincode of the devnet (for the devnet's own tests).
    """

    address: str = ""
    builtin: str = ""
    policy: str = "MAJORITY Endorsement"
    version: str = "1.0"
    package_id: str = ""  # when set, the id the chaincode must register with
    tls_required: bool = False
    root_cert: str = ""  # PEM file paths, relative to DIR or absolute
    client_cert: str = ""
    client_key: str = ""


@dataclass
class DevnetConfig:
    channel: str = "mychannel"
    host: str = "127.0.0.1"
    batch_timeout: float = 2.0
    max_message_count: int = 10
    mutual_tls: bool = False
    admin_port: int = 7080
    orderer: OrgConfig = field(
        default_factory=lambda: OrgConfig("Orderer", "OrdererMSP", "example.com", 7050)
    )
    orgs: list[OrgConfig] = field(
        default_factory=lambda: [
            OrgConfig("Org1", "Org1MSP", "org1.example.com", 7051),
            OrgConfig("Org2", "Org2MSP", "org2.example.com", 9051),
        ]
    )
    chaincodes: dict[str, ChaincodeConfig] = field(
        default_factory=lambda: {
            # The product's chaincode, where `python -m sagafacts_chaincode` listens by default.
            "sagafacts": ChaincodeConfig(address="127.0.0.1:9999"),
            "devkv": ChaincodeConfig(builtin="kv"),
        }
    )

    def org_by_msp(self, msp_id: str) -> OrgConfig | None:
        return next((o for o in self.orgs if o.msp_id == msp_id), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> DevnetConfig:
        cfg = cls()
        for key in ("channel", "host", "batch_timeout", "max_message_count", "mutual_tls"):
            if key in raw:
                setattr(cfg, key, type(getattr(cfg, key))(raw[key]))
        if "admin_port" in raw:
            cfg.admin_port = int(raw["admin_port"])
        if "orderer" in raw:
            cfg.orderer = OrgConfig(**raw["orderer"])
        if "orgs" in raw:
            cfg.orgs = [OrgConfig(**o) for o in raw["orgs"]]
        if "chaincodes" in raw:
            cfg.chaincodes = {n: ChaincodeConfig(**(c or {})) for n, c in raw["chaincodes"].items()}
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if len(self.orgs) < 1:
            raise ValueError("at least one peer organisation is required")
        msps = [o.msp_id for o in self.orgs] + [self.orderer.msp_id]
        if len(set(msps)) != len(msps):
            raise ValueError(f"MSP ids must be unique: {msps}")
        ports = [o.port for o in self.orgs] + [self.admin_port]
        if len(set(ports)) != len(ports):
            raise ValueError(f"ports must be unique: {ports}")
        if self.max_message_count < 1 or self.batch_timeout <= 0:
            raise ValueError("max_message_count must be >= 1 and batch_timeout > 0")


def load_or_init(directory: Path, seed: Path | None = None) -> DevnetConfig:
    """Read DIR/devnet.yaml; on first start write it from the seed file or the defaults."""
    path = directory / CONFIG_FILE
    if path.exists():
        return DevnetConfig.from_dict(yaml.safe_load(path.read_text()) or {})
    raw: dict[str, Any] = (yaml.safe_load(seed.read_text()) or {}) if seed else {}
    cfg = DevnetConfig.from_dict(raw)
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return cfg
