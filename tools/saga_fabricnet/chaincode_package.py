"""The sagafacts chaincode-as-a-service package: metadata.json (type ccaas, label)
plus code.tar.gz holding connection.json, the address where the peers dial the
chaincode process (plaintext, on 127.0.0.1)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

from saga_fabricnet.release import FabricRelease

NAME = "sagafacts"
VERSION = "1.0"
LABEL = f"{NAME}_{VERSION}"


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _targz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            _add(tar, name, data)
    return buf.getvalue()


def build(path: Path, chaincode_address: str) -> Path:
    connection = {
        "address": chaincode_address,
        "dial_timeout": "10s",
        "tls_required": False,
    }
    code = _targz({"connection.json": json.dumps(connection, indent=2).encode()})
    metadata = json.dumps({"type": "ccaas", "label": LABEL}).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_targz({"metadata.json": metadata, "code.tar.gz": code}))
    return path


def package_id(release: FabricRelease, package: Path, cfg_dir: Path) -> str:
    """``label:sha256`` as the peer computes it; the chaincode must register with it."""
    out = subprocess.run(
        [str(release.binary("peer")), "lifecycle", "chaincode", "calculatepackageid", str(package)],
        capture_output=True,
        text=True,
        env={**os.environ, "FABRIC_CFG_PATH": str(cfg_dir)},
    )
    if out.returncode != 0:
        raise RuntimeError(f"peer lifecycle chaincode calculatepackageid failed: {out.stderr}")
    return out.stdout.strip()
