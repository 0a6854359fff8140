"""Fault knobs for tests: set from the command line (`--fault name=value`) or over the admin API.

Counters mean "the next N times"; -1 means "until switched off".
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

CRASH_POINTS = (
    "after_submit",  # envelope durably queued, before the Submit reply
    "before_block_write",  # block cut and validated, not yet on disk
    "after_block_write",  # block fsynced, world state and indexes not yet updated
    "after_commit",  # block fully committed, before CommitStatus waiters are told
)


@dataclass
class Faults:
    drop_submit_reply: int = 0  # the envelope is ordered, the caller never learns it
    drop_submit_mode: str = "unavailable"  # "unavailable": abort UNAVAILABLE; "hang": no reply
    commit_delay: float = 0.0  # seconds to hold each cut block before committing it
    stall_commits: bool = False  # cut no blocks until switched off (Submit still accepts)
    commit_status_hang: int = 0  # CommitStatus never answers: the caller's deadline expires
    refuse_endorsement: list[str] = field(default_factory=list)  # MSP ids, or "*" for all
    refuse_endorsement_message: str = "endorsement refused by devnet fault injection"
    force_mvcc_conflict: int = 0  # next N otherwise VALID txs become MVCC_READ_CONFLICT
    crash_at: str = ""  # one of CRASH_POINTS: os._exit(137) when reached
    org_down: list[str] = field(default_factory=list)  # MSP ids whose peer (and gateway) is down
    # Seconds a down peer stays in the other gateways' view: Fabric's gossip
    # aliveExpirationTimeout (25 s). Before: endorsements sent to it fail (ABORTED); after:
    # the gateway plans without it (FAILED_PRECONDITION when the policy then cannot be met).
    org_down_expiry: float = 25.0
    # Every orderer is down: Submit gets what a 2.5 gateway answers when no orderer of the
    # channel's config accepts a connection.
    orderer_down: bool = False

    def __post_init__(self) -> None:
        # When each org in org_down went down (monotonic clock); not a knob of its own.
        self._down_since: dict[str, float] = {}

    def update(self, values: dict[str, Any]) -> None:
        known = {f.name: f for f in fields(self)}
        for name, value in values.items():
            if name not in known:
                raise ValueError(f"unknown fault knob {name!r}; known: {sorted(known)}")
            current = getattr(self, name)
            setattr(self, name, _coerce(current, value))
        now = time.monotonic()
        self._down_since = {m: self._down_since.get(m, now) for m in self.org_down}
        if self.crash_at and self.crash_at not in CRASH_POINTS:
            bad, self.crash_at = self.crash_at, ""
            raise ValueError(f"crash_at must be one of {CRASH_POINTS}, got {bad!r}")

    def parse_cli(self, items: list[str]) -> None:
        values: dict[str, Any] = {}
        for item in items:
            name, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"--fault expects name=value, got {item!r}")
            values[name.strip()] = value.strip()
        self.update(values)

    def take(self, name: str) -> bool:
        """Consume one unit of a counter knob; True when the fault fires now."""
        value = getattr(self, name)
        if value == 0:
            return False
        if value > 0:
            setattr(self, name, value - 1)
        return True

    def refuses(self, msp_id: str) -> bool:
        return "*" in self.refuse_endorsement or msp_id in self.refuse_endorsement

    def peer_state(self, msp_id: str) -> str:
        """ "up", "unreachable" (down, still in gossip's view) or "gone" (expired from it)."""
        since = self._down_since.get(msp_id)
        if since is None:
            return "up"
        return "gone" if time.monotonic() - since >= self.org_down_expiry else "unreachable"

    def maybe_crash(self, point: str) -> None:
        if self.crash_at == point:
            print(f"devnet: crashing at {point} (fault injection)", file=sys.stderr, flush=True)
            os._exit(137)

    def as_json(self) -> str:
        return json.dumps(asdict(self))


def _coerce(current: Any, value: Any) -> Any:
    if isinstance(current, bool):
        if isinstance(value, str):
            return value.lower() in ("1", "true", "yes", "on")
        return bool(value)
    if isinstance(current, int):
        return int(value)
    if isinstance(current, float):
        return float(value)
    if isinstance(current, list):
        if isinstance(value, str):
            return [v for v in value.split(",") if v]
        return [str(v) for v in value]
    return str(value)
