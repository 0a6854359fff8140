"""Settings from SAGA_* variables (and *_FILE secrets)."""

from __future__ import annotations

from pathlib import Path

import pytest

from saga.config import ConfigError, Settings


def test_defaults_need_no_servers() -> None:
    settings = Settings.from_env({})
    assert settings.database_url.startswith("sqlite:")
    assert settings.broker_url.startswith("embedded+sqlite:")
    assert not settings.ledger_configured


def test_values_are_typed_and_bad_ones_named() -> None:
    settings = Settings.from_env({"SAGA_RELAY_BATCH_SIZE": "50", "SAGA_RELAY_POLL_INTERVAL": "0.5"})
    assert settings.relay_batch_size == 50 and settings.relay_poll_interval == 0.5
    with pytest.raises(ConfigError, match="SAGA_WORKER_CONCURRENCY"):
        Settings.from_env({"SAGA_WORKER_CONCURRENCY": "two"})


def test_secret_from_file_and_environment_wins(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("from-file\n")
    assert Settings.from_env({"SAGA_API_TOKEN_FILE": str(token)}).api_token == "from-file"
    both = {"SAGA_API_TOKEN_FILE": str(token), "SAGA_API_TOKEN": "from-env"}
    assert Settings.from_env(both).api_token == "from-env"


def test_unreadable_secret_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"SAGA_API_TOKEN_FILE.*cannot be read"):
        Settings.from_env({"SAGA_API_TOKEN_FILE": str(tmp_path / "missing")})


def test_postgres_url_gets_the_psycopg_driver() -> None:
    settings = Settings(database_url="postgresql://u@h/db")
    assert settings.sqlalchemy_url == "postgresql+psycopg://u@h/db"


def test_redacted_masks_passwords_and_token() -> None:
    settings = Settings(broker_url="amqp://saga:pw@host//", api_token="t")
    shown = settings.redacted()
    assert shown["SAGA_BROKER_URL"] == "amqp://saga:***@host//"
    assert shown["SAGA_API_TOKEN"] == "***"
