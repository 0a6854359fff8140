"""Shared fixtures. Real services are reached through the plugins below; when one is
down the fixtures fail the test with the command that starts it (never skip)."""

pytest_plugins = [
    "tests.support.postgres",
    "tests.support.rabbitmq",
    "tests.support.api",
    "tests.support.devnet",
    "tests.support.ledger",
    "tests.support.fabricnet",
    "tests.support.ledger_store",
    "tests.support.chain_ledger",
    "tests.support.watcher",
    "tests.support.postgres_pair",
    "tests.support.browser",
]
