"""The `saga` command line: --help everywhere, the demo end to end, operator commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import typer.main
from typer.testing import CliRunner

from saga.config import Settings
from saga.entrypoints.cli.main import app

runner = CliRunner()


def _command_paths(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    # Typer ships its own click core, so look for sub-commands rather than a class.
    if hasattr(group, "commands"):
        for name, sub in group.commands.items():
            paths.extend(_command_paths(sub, (*prefix, name)))
    return paths


def test_every_command_has_help() -> None:
    root = typer.main.get_command(app)
    paths = _command_paths(root)
    assert len(paths) > 12, paths
    for path in paths:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage" in result.output, path
        # A command without a docstring shows no description: every one must say what it does.
        if path:
            cmd = root
            for part in path:
                cmd = cmd.commands[part]
            assert (cmd.help or "").strip(), f"`saga {' '.join(path)}` has no help text"


def test_bad_configuration_is_a_clear_error() -> None:
    result = runner.invoke(app, ["config"], env={"SAGA_RELAY_BATCH_SIZE": "many"})
    assert result.exit_code == 2
    assert "SAGA_RELAY_BATCH_SIZE" in result.output


def test_config_masks_secrets() -> None:
    result = runner.invoke(
        app,
        ["config"],
        env={"SAGA_API_TOKEN": "s3cret", "SAGA_BROKER_URL": "amqp://u:pw@h:5672//"},
    )
    assert result.exit_code == 0, result.output
    assert "s3cret" not in result.output and ":pw@" not in result.output
    assert "SAGA_API_TOKEN=***" in result.output


def test_config_says_where_each_value_comes_from_and_masks_only_real_passwords(
    tmp_path: Path,
) -> None:
    secret = tmp_path / "token"
    secret.write_text("from-a-file\n")
    result = runner.invoke(
        app,
        ["config"],
        env={
            "SAGA_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/test",
            "SAGA_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//",
            "SAGA_API_TOKEN_FILE": str(secret),
            "SAGA_LOG_LEVEL": "WARNING",
        },
    )
    assert result.exit_code == 0, result.output
    lines = {line.split("=", 1)[0]: line for line in result.stdout.splitlines() if "=" in line}
    # No password in the URL: nothing to mask.
    assert lines["SAGA_DATABASE_URL"].startswith(
        "SAGA_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test"
    )
    assert "(environment)" in lines["SAGA_DATABASE_URL"]
    assert "guest:***@" in lines["SAGA_BROKER_URL"] and ":guest@" not in result.stdout
    assert "SAGA_API_TOKEN=***" in lines["SAGA_API_TOKEN"]
    assert f"(file {secret}, SAGA_API_TOKEN_FILE)" in lines["SAGA_API_TOKEN"]
    assert "from-a-file" not in result.stdout
    assert "(default)" in lines["SAGA_STEP_QUEUE"]


def _saga(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 240) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "saga", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"saga {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGA_")}
    env["SAGA_LOG_LEVEL"] = "WARNING"
    return env


def test_demo_runs_on_the_embedded_default(tmp_path: Path) -> None:
    out = _saga(["demo", "-n", "20", "--timeout", "180"], _clean_env(), tmp_path)
    # 20 sagas: one declined and one rejected (compensated), the rest completed.
    row = [line for line in out.splitlines() if line.strip().startswith("│ 20")]
    assert row, out
    cells = [c.strip() for c in row[0].strip("│ ").split("│")]
    assert cells[:5] == ["20", "18", "2", "0", "0"], out
    assert (tmp_path / "saga.sqlite3").exists()


def test_demo_runs_on_postgres_and_rabbitmq_then_operator_commands(
    pg_url: str, broker_settings: Settings, tmp_path: Path
) -> None:
    env = _clean_env()
    env.update(
        SAGA_DATABASE_URL=pg_url,
        SAGA_BROKER_URL=broker_settings.broker_url,
        SAGA_STEP_QUEUE=broker_settings.step_queue,
        SAGA_DEAD_LETTER_QUEUE=broker_settings.dead_letter_queue,
    )
    out = _saga(["demo", "-n", "40", "--timeout", "180"], env, tmp_path)
    assert "│ 40" in out, out

    listed = json.loads(_saga(["list", "--json", "--status", "compensated"], env, tmp_path))
    assert len(listed) == 4, listed
    saga_id = listed[0]["id"]
    shown = json.loads(_saga(["show", saga_id, "--json"], env, tmp_path))
    assert shown["status"] == "compensated"
    assert shown["reason"]
    kinds = [h["kind"] for h in shown["history"]]
    assert kinds[0] == "started" and "saga compensated" in kinds

    # An operator cannot resume a saga that did not fail; the refusal says why.
    proc = subprocess.run(
        [sys.executable, "-m", "saga", "resume", saga_id, "--why", "test"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "only a failed saga can be resumed" in proc.stdout + proc.stderr


def test_demo_with_ledger_records_each_payment_once_and_audits_clean(
    pg_url: str, broker_settings: Settings, tmp_path: Path
) -> None:
    env = _clean_env()
    env.update(
        SAGA_DATABASE_URL=pg_url,
        SAGA_BROKER_URL=broker_settings.broker_url,
        SAGA_STEP_QUEUE=broker_settings.step_queue,
        SAGA_DEAD_LETTER_QUEUE=broker_settings.dead_letter_queue,
    )
    out = _saga(["demo", "--ledger", "-n", "40", "--timeout", "240"], env, tmp_path, timeout=400)
    row = [line for line in out.splitlines() if line.strip().startswith("│ 40")]
    assert row, out
    cells = [c.strip() for c in row[0].strip("│ ").split("│")]
    assert cells[:5] == ["40", "36", "4", "0", "0"], out
    # 38 payments (two were declined before the ledger step) and 2 reversals (the
    # two rejected orders), each exactly once: the audit counts duplicates and
    # steps without a VALID transaction, and the demo fails unless it is clean.
    assert "ledger: 40 transactions" in out, out
    assert "audit clean" in out, out
    assert (tmp_path / ".saga-demo" / "devnet" / "ledger").is_dir()


def test_operator_commands_print_no_alembic_plugin_lines(
    broker_settings: Settings, pg_url: str, tmp_path: Path
) -> None:
    """`saga dlq replay` sets up logging at SAGA_LOG_LEVEL=INFO and then loads the store:
    its one useful line must not drown in Alembic's plugin setup lines."""
    env = {
        **_clean_env(),
        "SAGA_LOG_LEVEL": "INFO",
        "SAGA_DATABASE_URL": pg_url,
        "SAGA_BROKER_URL": broker_settings.broker_url,
        "SAGA_STEP_QUEUE": broker_settings.step_queue,
        "SAGA_DEAD_LETTER_QUEUE": broker_settings.dead_letter_queue,
    }
    proc = subprocess.run(
        [sys.executable, "-m", "saga", "dlq", "replay", "--all", "--why", "test"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # An empty dead-letter queue: 1, "no message matched"; after the store was loaded.
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "0 message(s) replayed" in proc.stdout and "no message matched" in proc.stderr
    assert "alembic" not in proc.stderr, proc.stderr
