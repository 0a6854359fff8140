"""The peers' and orderers' config folder: copies of the release's core.yaml and
orderer.yaml. Everything per node is set by environment variables (processes.py);
only what env cannot express is edited into the copy: the list of external builders
(a list entry) and an empty ``vm.endpoint`` (no docker daemon here)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from saga_fabricnet import builder
from saga_fabricnet.material import Layout
from saga_fabricnet.release import FabricRelease


def edited_core(core: dict[str, Any], builder_dir: Path) -> dict[str, Any]:
    core.setdefault("vm", {})["endpoint"] = ""
    core.setdefault("chaincode", {})["externalBuilders"] = [
        {"name": builder.NAME, "path": str(builder_dir), "propagateEnvironment": ["HOME", "PATH"]}
    ]
    return core


def write_config(release: FabricRelease, layout: Layout) -> None:
    layout.config.mkdir(parents=True, exist_ok=True)
    builder_dir = builder.install(layout.builder)
    core = yaml.safe_load((release.cfg_dir / "core.yaml").read_text())
    (layout.config / "core.yaml").write_text(
        yaml.safe_dump(edited_core(core, builder_dir), sort_keys=False)
    )
    shutil.copyfile(release.cfg_dir / "orderer.yaml", layout.config / "orderer.yaml")
