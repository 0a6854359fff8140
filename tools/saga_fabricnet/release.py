"""Where the Fabric binaries and their sample config are, and which release they are.

A release folder is laid out like Fabric's own release archives: ``bin/`` (peer,
orderer, configtxgen, cryptogen, osnadmin, ...) and ``config/`` (core.yaml,
orderer.yaml, configtx.yaml). Nothing here assumes where that folder is: it comes
from an argument or from ``FABRIC_BIN`` / ``FABRIC_CFG_PATH``.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

BINARIES = ("peer", "orderer", "configtxgen", "cryptogen", "osnadmin")


class FabricBinaryMissing(FileNotFoundError):
    """A Fabric binary or config file is not where FABRIC_BIN / FABRIC_CFG_PATH point."""


@dataclass(frozen=True)
class FabricRelease:
    bin_dir: Path
    cfg_dir: Path

    @classmethod
    def locate(
        cls,
        fabric_bin: str | Path | None = None,
        fabric_cfg: str | Path | None = None,
        *,
        folder: str | Path | None = None,
    ) -> FabricRelease:
        """Arguments win over ``FABRIC_BIN`` / ``FABRIC_CFG_PATH``; ``folder`` (a release
        folder holding bin/ and config/) fills whichever is still unset; the config
        defaults to ``<bin>/../config`` as in Fabric's archives."""
        base = Path(folder) if folder else None
        bin_dir = fabric_bin or os.environ.get("FABRIC_BIN") or (base / "bin" if base else None)
        if not bin_dir:
            raise FabricBinaryMissing(
                "no Fabric binaries given: set FABRIC_BIN=<release>/bin (and FABRIC_CFG_PATH="
                "<release>/config) or pass --fabric-bin"
            )
        cfg_dir = (
            fabric_cfg
            or os.environ.get("FABRIC_CFG_PATH")
            or (base / "config" if base else Path(bin_dir).parent / "config")
        )
        release = cls(Path(bin_dir).resolve(), Path(cfg_dir).resolve())
        release.check()
        return release

    def check(self) -> None:
        for name in BINARIES:
            self.binary(name)
        for name in ("core.yaml", "orderer.yaml"):
            if not (self.cfg_dir / name).is_file():
                raise FabricBinaryMissing(
                    f"{name} not found in FABRIC_CFG_PATH={self.cfg_dir} "
                    "(the release's config/ folder)"
                )

    def binary(self, name: str) -> Path:
        path = self.bin_dir / name
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise FabricBinaryMissing(
                f"Fabric binary {name!r} not found or not executable in FABRIC_BIN={self.bin_dir}"
            )
        return path

    @cached_property
    def version(self) -> str:
        """As ``peer version`` reports it, e.g. ``2.5.16``."""
        out = subprocess.run(
            [str(self.binary("peer")), "version"],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "FABRIC_CFG_PATH": str(self.cfg_dir)},
        ).stdout
        match = re.search(r"Version:\s*v?(\d+\.\d+\.\d+\S*)", out)
        if not match:
            raise RuntimeError(f"cannot read a version from `peer version`: {out!r}")
        return match.group(1)

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])
