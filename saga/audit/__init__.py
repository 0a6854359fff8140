"""`saga audit`: the database against the ledger (see compare.py for what is counted).

The ledger side is ``saga.audit.ledger_scan``, usable on its own by tests.
"""

from saga.audit.compare import KINDS, AuditReport, Discrepancy, audit
from saga.audit.ledger_scan import LedgerScan, LedgerTx, ScanCounts, ledger_counts, scan_ledger

__all__ = [
    "KINDS",
    "AuditReport",
    "Discrepancy",
    "LedgerScan",
    "LedgerTx",
    "ScanCounts",
    "audit",
    "ledger_counts",
    "scan_ledger",
]
