"""Print the README's configuration table from saga/config.py (fields and their comments).

    python -m scripts.config_table > /tmp/table.md

tests/unit/test_readme_config.py checks that the README lists every setting.
"""

from __future__ import annotations

import re
from dataclasses import MISSING, fields
from pathlib import Path

from saga.config import PREFIX, Settings

FIELD = re.compile(r"^    (\w+): [^=]+= ")


def comments() -> dict[str, str]:
    """Each field's preceding comment block; fields that share a block share it."""
    source = (Path(__file__).resolve().parents[1] / "saga" / "config.py").read_text()
    found: dict[str, str] = {}
    block: list[str] = []
    carried = ""
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") and line.startswith("    #"):
            block.append(stripped.lstrip("# ").strip())
            continue
        match = FIELD.match(line)
        if match:
            if block:
                carried = " ".join(block)
                block = []
            found[match.group(1)] = carried
            continue
        block, carried = [], ""
    return found


def table() -> str:
    notes = comments()
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    previous = None
    for f in fields(Settings):
        default = f.default if f.default is not MISSING else ""
        shown = f"`{default}`" if default != "" else "(empty)"
        note = notes.get(f.name, "")
        # A comment shared by a group of fields is printed once, on the first row.
        text, previous = ("" if note == previous else note), note
        rows.append(f"| `{PREFIX}{f.name.upper()}` | {shown} | {text} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
