"""The scheduling queue: pods waiting for a node.

activeQ holds pods to try now (FIFO). A pod that fits nowhere goes to the unschedulable set
until something changes that could make it fit (a node added or updated, a pod deleted),
then it moves back with a backoff (1 s doubling to 10 s, as kube-scheduler's defaults) so a
storm of node updates does not spin the scheduler.
"""
from __future__ import annotations

import asyncio
import collections


class SchedulingQueue:
    def __init__(self, *, initial_backoff: float = 1.0, max_backoff: float = 10.0):
        self.active: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.unschedulable: set[str] = set()
        self.attempts: dict[str, int] = {}
        self.backing_off: dict[str, asyncio.TimerHandle] = {}
        self.initial_backoff, self.max_backoff = initial_backoff, max_backoff
        self._wake = asyncio.Event()

    def __len__(self) -> int:
        return len(self.active)

    def add(self, key: str) -> None:
        if key in self.active or key in self.backing_off:
            return
        self.unschedulable.discard(key)
        self.active[key] = None
        self._wake.set()

    def delete(self, key: str) -> None:
        self.active.pop(key, None)
        self.unschedulable.discard(key)
        self.attempts.pop(key, None)
        t = self.backing_off.pop(key, None)
        if t:
            t.cancel()

    def done(self, key: str) -> None:
        """Scheduled: forget its history."""
        self.attempts.pop(key, None)

    def park(self, key: str) -> None:
        """No node fits: wait for a cluster change."""
        self.attempts[key] = self.attempts.get(key, 0) + 1
        self.unschedulable.add(key)

    def retry(self, key: str) -> None:
        """An error (not a misfit): try again after the backoff."""
        self.attempts[key] = self.attempts.get(key, 0) + 1
        self._backoff(key)

    def _backoff(self, key: str) -> None:
        n = self.attempts.get(key, 1)
        delay = min(self.initial_backoff * 2 ** max(n - 1, 0), self.max_backoff)
        loop = asyncio.get_running_loop()
        if key in self.backing_off:
            return
        self.backing_off[key] = loop.call_later(delay, self._expire, key)

    def _expire(self, key: str) -> None:
        self.backing_off.pop(key, None)
        self.add(key)

    def move_all_to_active(self) -> None:
        """Something changed in the cluster: give every parked pod another try."""
        for key in list(self.unschedulable):
            self.unschedulable.discard(key)
            self._backoff(key)

    async def pop(self) -> str:
        while not self.active:
            self._wake.clear()
            await self._wake.wait()
        key, _ = self.active.popitem(last=False)
        return key
