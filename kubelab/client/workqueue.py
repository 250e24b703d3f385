"""The work queue of level-triggered controllers (client-go's workqueue): event handlers only
add keys; workers `get` a key, reconcile, then `done` it. A key waiting twice is merged into
one; a key being processed is never handed out again until `done`; failures come back with
per-key exponential backoff (`add_rate_limited`) until `forget`.
"""
from __future__ import annotations

import asyncio
import collections
from typing import Hashable


class ShutDown(Exception):
    pass


class WorkQueue:
    def __init__(self, *, base_delay: float = 0.005, max_delay: float = 300.0):
        self._queue: collections.deque = collections.deque()
        self._dirty: set = set()
        self._processing: set = set()
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        self._failures: dict = {}
        self._timers: dict = {}
        self.base_delay, self.max_delay = base_delay, max_delay
        self._shutdown = False

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, key: Hashable) -> None:
        if self._shutdown or key in self._dirty:
            return
        self._dirty.add(key)
        if key not in self._processing:
            self._queue.append(key)
            self._notify()

    def _notify(self, everyone: bool = False) -> None:
        while self._waiters:
            f = self._waiters.popleft()
            if not f.done():
                f.set_result(None)
                if not everyone:
                    return

    def add_after(self, key: Hashable, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        old = self._timers.get(key)
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        if old is not None and old.when() <= when:
            return  # an earlier wake-up is already set
        if old is not None:
            old.cancel()
        self._timers[key] = loop.call_at(when, self._fire, key)

    def _fire(self, key) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def add_rate_limited(self, key: Hashable) -> None:
        n = self._failures.get(key, 0)
        self._failures[key] = n + 1
        self.add_after(key, min(self.base_delay * (2 ** n), self.max_delay))

    def forget(self, key: Hashable) -> None:
        self._failures.pop(key, None)

    def requeues(self, key: Hashable) -> int:
        return self._failures.get(key, 0)

    async def get(self) -> Hashable:
        while not self._queue:
            if self._shutdown:
                raise ShutDown()
            f = asyncio.get_running_loop().create_future()
            self._waiters.append(f)
            try:
                await f
            except asyncio.CancelledError:
                if f.done() and not f.cancelled():
                    self._notify()  # pass the wake-up on to another worker
                raise
        key = self._queue.popleft()
        self._dirty.discard(key)
        self._processing.add(key)
        if self._queue:
            self._notify()
        return key

    def done(self, key: Hashable) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._queue.append(key)
            self._notify()

    def shutdown(self) -> None:
        self._shutdown = True
        for t in self._timers.values():
            t.cancel()
        self._timers.clear()
        self._notify(everyone=True)
