"""Ordering and commit: cut blocks by BatchTimeout / MaxMessageCount, validate, write, notify.

Like a Raft orderer there is no txid dedupe here: every submitted envelope is ordered,
and the committer's validation marks repeats DUPLICATE_TXID. Ordering and the single
peer ledger are one pipeline because all the devnet's peers share one ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from saga_devnet import blocks, commit_hash
from saga_devnet.commit_notifier import CommitNotifier
from saga_devnet.faults import Faults
from saga_devnet.ledger_store import LedgerStore
from saga_devnet.msp import Signer
from saga_devnet.rwlock import RWLock
from saga_devnet.txparse import parse_envelope
from saga_devnet.validator import Validator

log = logging.getLogger(__name__)


class Orderer:
    def __init__(
        self,
        *,
        channel: str,
        store: LedgerStore,
        validator: Validator,
        signer: Signer,
        notifier: CommitNotifier,
        lock: RWLock,
        faults: Faults,
        batch_timeout: float,
        max_message_count: int,
        genesis_config: Callable[[], Any],
    ) -> None:
        self._channel = channel
        self._store = store
        self._validator = validator
        self._signer = signer
        self._notifier = notifier
        self._lock = lock
        self._faults = faults
        self._batch_timeout = batch_timeout
        self._max = max_message_count
        self._wake = asyncio.Event()
        self._genesis_config = genesis_config
        self._commit_hash: tuple[int, bytes] | None = None  # (block number, its COMMIT_HASH)

    def ensure_genesis(self) -> None:
        if self._store.height == 0:
            block = blocks.genesis_block(self._genesis_config(), self._channel)
            offset, length = self._store.append_block(block, 0)
            self._store.index_block(block, offset, length, 0)
        self._notifier.height = self._store.height

    def submit(self, envelope: bytes) -> None:
        """Queue durably; returns once the envelope will be ordered even after a crash."""
        self._store.add_pending(envelope)
        self._wake.set()

    async def _wait(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=max(seconds, 0.0))

    async def run(self) -> None:
        while True:
            if self._store.pending_count() == 0:
                await self._wait(3600)
                continue
            # The batch timer starts with the batch's first envelope, as Fabric's blockcutter.
            deadline = time.monotonic() + self._batch_timeout
            while self._store.pending_count() < self._max and time.monotonic() < deadline:
                await self._wait(deadline - time.monotonic())
            while self._faults.stall_commits:
                await asyncio.sleep(0.05)
            if self._faults.commit_delay > 0:
                await asyncio.sleep(self._faults.commit_delay)
            try:
                await self._cut()
            except Exception:
                # The batch is still pending on disk, and a block already appended is indexed
                # by recover(), so the retry never writes a block number twice.
                log.exception("block commit failed; recovering and retrying")
                await asyncio.sleep(1.0)
                self._store.recover()
                await self._notifier.catch_up(self._store.height, self._store.tx_status)

    def _previous_commit_hash(self, number: int) -> bytes:
        """The chain of commit hashes starts empty at block 1, like kvLedger.commitHash."""
        if number <= 1:
            return b""
        if self._commit_hash is not None and self._commit_hash[0] == number - 1:
            return self._commit_hash[1]
        previous = self._store.get_block(number - 1)  # after a restart: as lastPersistedCommitHash
        return blocks.commit_hash_of(previous) if previous is not None else b""

    async def _cut(self) -> None:
        batch = self._store.pending(self._max)
        if not batch:
            return
        last_seq = batch[-1][0]
        envelopes = [env for _seq, env in batch]
        async with self._lock.exclusive():
            number = self._store.height
            codes = self._validator.validate(number, envelopes)
            updates = commit_hash.block_updates(number, envelopes, codes)
            chash = commit_hash.commit_hash(codes, updates, self._previous_commit_hash(number))
            block = blocks.make_block(
                number,
                self._store.last_hash(),
                envelopes,
                codes,
                self._signer,
                commit_hash=chash,
            )
            self._faults.maybe_crash("before_block_write")
            offset, length = self._store.append_block(block, last_seq)
            self._faults.maybe_crash("after_block_write")
            first: dict[str, int] = {}
            for txnum, raw in enumerate(envelopes):
                try:
                    txid = parse_envelope(raw).txid
                except ValueError:
                    continue
                if txid and txid not in first and self._store.tx_status(txid) is None:
                    first[txid] = codes[txnum]
            self._store.index_block(block, offset, length, last_seq)
        self._commit_hash = (number, chash)
        self._faults.maybe_crash("after_commit")
        log.info("block %d committed: %d txs, codes %s", number, len(envelopes), list(codes))
        await self._notifier.block_committed(number, first)
