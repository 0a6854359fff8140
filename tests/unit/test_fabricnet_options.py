"""NetworkOptions.preferred_max_bytes: the orderer's preferred block size, checked
for configtxgen's syntax and rendered into the channel's configtx.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from saga_fabricnet import compose, configtx
from saga_fabricnet.material import Layout
from saga_fabricnet.options import NetworkOptions, size_bytes


def _batch_size(tmp_path: Path, options: NetworkOptions) -> dict[str, object]:
    text = configtx.render(Layout(tmp_path), options, compose.ports())
    batch: dict[str, object] = yaml.safe_load(text)["Orderer"]["BatchSize"]
    return batch


def test_default_is_fabrics_sample_block_size(tmp_path: Path) -> None:
    batch = _batch_size(tmp_path, NetworkOptions())
    assert batch == {
        "MaxMessageCount": 10,
        "AbsoluteMaxBytes": "99 MB",
        "PreferredMaxBytes": "512 KB",
    }


def test_a_larger_preferred_size_is_rendered(tmp_path: Path) -> None:
    options = NetworkOptions(max_message_count=2000, preferred_max_bytes="32 MB")
    batch = _batch_size(tmp_path, options)
    assert batch["PreferredMaxBytes"] == "32 MB"
    assert batch["MaxMessageCount"] == 2000


@pytest.mark.parametrize("size", ["512", "512KB", "0 KB", "1.5 MB", "1 GB", "-1 MB", ""])
def test_a_size_configtxgen_would_not_read_is_refused(size: str) -> None:
    with pytest.raises(ValueError, match="KB"):
        NetworkOptions(preferred_max_bytes=size)


def test_the_preferred_size_stays_under_the_absolute_one() -> None:
    NetworkOptions(preferred_max_bytes="99 MB")
    with pytest.raises(ValueError, match="AbsoluteMaxBytes"):
        NetworkOptions(preferred_max_bytes="100 MB")
    assert size_bytes("512 KB") == 512 * 1024


def test_a_state_file_written_before_the_field_takes_the_default() -> None:
    old = NetworkOptions(batch_timeout=0.5).to_json()
    del old["preferred_max_bytes"]
    assert NetworkOptions.from_json(old).preferred_max_bytes == "512 KB"
    new = NetworkOptions(preferred_max_bytes="8 MB")
    assert NetworkOptions.from_json(new.to_json()) == new
