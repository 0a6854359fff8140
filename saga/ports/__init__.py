"""Ports: the interfaces the application talks to (store, broker, ledger)."""
