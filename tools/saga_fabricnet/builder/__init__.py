"""The network's own chaincode-as-a-service external builder: three POSIX shell
executables (``bin/detect``, ``bin/build``, ``bin/release``) that follow Fabric's
external builder contract. Copied into the network folder so their execute bits
do not depend on how this package was installed."""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

NAME = "sagafacts-ccaas"
STEPS = ("detect", "build", "release")


def install(dest: Path) -> Path:
    """Copy the builder to ``dest`` (``dest/bin/{detect,build,release}``); returns ``dest``."""
    bin_dir = dest / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    source = resources.files(__name__).joinpath("bin")
    for step in STEPS:
        target = bin_dir / step
        with resources.as_file(source.joinpath(step)) as src:
            shutil.copyfile(src, target)
        target.chmod(0o755)
    return dest
