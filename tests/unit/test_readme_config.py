"""The README's configuration table is the one scripts.config_table prints."""

from __future__ import annotations

from pathlib import Path

from scripts.config_table import table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_lists_every_setting_as_the_code_declares_it() -> None:
    assert table() in README.read_text(), (
        "README's configuration table is out of date: paste `python -m scripts.config_table`"
    )
