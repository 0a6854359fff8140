"""Wakes CommitStatus and ChaincodeEvents callers when a block is committed."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable


class CommitNotifier:
    def __init__(self) -> None:
        self._waiters: dict[str, list[asyncio.Future[tuple[int, int]]]] = defaultdict(list)
        self._block_cond = asyncio.Condition()
        self.height = 0

    def wait_tx(self, txid: str) -> asyncio.Future[tuple[int, int]]:
        """A future resolving to (code, block number) at the txid's first commit.

        The caller checks the ledger first and registers without awaiting in between, so a
        commit cannot slip through the gap on the single event loop.
        """
        fut: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()
        self._waiters[txid].append(fut)
        return fut

    def forget(self, txid: str, fut: asyncio.Future[tuple[int, int]]) -> None:
        waiters = self._waiters.get(txid)
        if waiters and fut in waiters:
            waiters.remove(fut)
            if not waiters:
                del self._waiters[txid]

    async def block_committed(self, number: int, first_commits: dict[str, int]) -> None:
        """first_commits: txid -> code, only for txids this block committed for the first time."""
        for txid, code in first_commits.items():
            for fut in self._waiters.pop(txid, []):
                if not fut.done():
                    fut.set_result((code, number))
        async with self._block_cond:
            self.height = number + 1
            self._block_cond.notify_all()

    async def catch_up(
        self, height: int, status: Callable[[str], tuple[int, int, int] | None]
    ) -> None:
        """Resolve waiters for blocks indexed outside the normal path (recovery)."""
        for txid in list(self._waiters):
            found = status(txid)
            if found is not None:
                for fut in self._waiters.pop(txid, []):
                    if not fut.done():
                        fut.set_result((found[0], found[1]))
        async with self._block_cond:
            self.height = height
            self._block_cond.notify_all()

    async def wait_height(self, height: int) -> None:
        async with self._block_cond:
            await self._block_cond.wait_for(lambda: self.height >= height)
