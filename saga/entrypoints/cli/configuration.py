"""`saga config`: the settings in effect and where each value comes from."""

from __future__ import annotations

import os

from saga.entrypoints.cli._common import (
    env_settings,
    out,
)


def config() -> None:
    """Print the settings in effect (secrets masked) and where each comes from.

    Each line is VAR=VALUE  (environment | file PATH, VAR_FILE | default).
    """
    settings = env_settings()
    for key, value in settings.redacted().items():
        if key in os.environ:
            source = "environment"
        elif f"{key}_FILE" in os.environ:
            source = f"file {os.environ[key + '_FILE']}, {key}_FILE"
        else:
            source = "default"
        out.print(f"{key}={value}  ({source})", highlight=False, soft_wrap=True, markup=False)
