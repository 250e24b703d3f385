"""kube-proxy's bounded-frequency runner (pkg/util/async's BoundedFrequencyRunner), asyncio-shaped.

`run()` asks for a sync and returns at once; the loop calls the sync function
- no sooner than `min_interval` after the start of the previous call: requests arriving in
  between are merged into one call (a burst of a thousand changes is one iptables-restore);
- at least every `max_interval` without any request (the periodic full resync that repairs rules
  someone else flushed);
- again after a failure, with exponential backoff from `retry_base` to `retry_max` (capped, and
  never sooner than `min_interval`), until one succeeds.
Calls never overlap. The clock is injectable for tests; the waiting itself uses asyncio.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class BoundedFrequencyRunner:
    def __init__(self, name: str, fn: Callable[[], Awaitable[None]], *, min_interval: float = 1.0,
                 max_interval: float = 30.0, retry_base: float = 1.0, retry_max: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        if min_interval < 0 or max_interval <= 0 or min_interval > max_interval:
            raise ValueError(f"{name}: want 0 <= min_interval ({min_interval}) <= max_interval ({max_interval})")
        self.name, self.fn = name, fn
        self.min_interval, self.max_interval = min_interval, max_interval
        self.retry_base, self.retry_max = retry_base, retry_max
        self.clock = clock
        self._wake = asyncio.Event()
        self._requested = False
        self.calls = 0      # every call of fn
        self.failures = 0   # consecutive failures so far
        self.last_error: BaseException | None = None

    def run(self) -> None:
        """Ask for a sync soon (merged with any other request until it starts)."""
        self._requested = True
        self._wake.set()

    async def _wait(self, timeout: float) -> None:
        if timeout <= 0:
            return
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            pass

    async def loop(self) -> None:
        last_start = None
        retry_at = None
        while True:
            now = self.clock()
            if last_start is None:
                due = now  # the first sync runs at once
            else:
                due = last_start + self.max_interval
                if retry_at is not None:
                    due = min(due, retry_at)
            if not self._requested:
                await self._wait(due - now)
            # bursts merge here: anything requested before the sync starts is served by it
            if last_start is not None:
                while (gap := last_start + self.min_interval - self.clock()) > 0:
                    await asyncio.sleep(gap)
            self._wake.clear()
            self._requested = False
            last_start = self.clock()
            self.calls += 1
            try:
                await self.fn()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - retried with backoff; the daemon keeps running
                self.failures += 1
                self.last_error = e
                delay = min(self.retry_base * 2 ** (self.failures - 1), self.retry_max)
                retry_at = last_start + max(delay, self.min_interval)
                log.warning("%s: sync failed (%d in a row), retrying in %.1fs: %s", self.name, self.failures,
                            retry_at - last_start, e)
            else:
                self.failures = 0
                self.last_error = None
                retry_at = None
