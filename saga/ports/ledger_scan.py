"""The ledger scan port: what the audit reads of a ledger's blocks.

A scan is every transaction of a channel that wrote saga records (in the
chaincode's namespace), with its validation code and the idempotency keys whose
record it created. The Fabric adapter (``saga.adapters.fabric.ledger_scan``)
builds one from the blocks; the composition root hands it to the audit, which
compares it with the store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Protocol


class ScannedTx(Protocol):
    """One transaction as the scan found it on the ledger."""

    @property
    def txid(self) -> str: ...

    @property
    def timestamp(self) -> datetime | None: ...

    @property
    def created(self) -> tuple[str, ...]:
        """The idempotency keys whose record this transaction created."""
        ...


class LedgerScan(Protocol):
    """Blocks ``start`` to ``height - 1`` of one channel, as the audit needs them."""

    @property
    def start(self) -> int: ...

    @property
    def height(self) -> int: ...

    @property
    def transaction_count(self) -> int:
        """Transactions that wrote saga records, any validation code."""
        ...

    def get(self, txid: str) -> ScannedTx | None: ...

    def is_valid(self, txid: str) -> bool: ...

    def valid_by_key(self) -> Mapping[str, Sequence[ScannedTx]]:
        """The VALID transactions that created each key's record."""
        ...

    def duplicates(self) -> Mapping[str, Sequence[ScannedTx]]:
        """Keys with more than one VALID creator."""
        ...

    def keys_created_by(self, envelope: bytes) -> tuple[str, ...]:
        """The keys a signed envelope (as the store keeps it) would create.

        Raises ValueError (or the decoder's error) if the envelope cannot be read.
        """
        ...
