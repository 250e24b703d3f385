"""Restart and image-pull backoff, per (pod, container): 10 s doubling to 5 min, forgotten
after 10 minutes of clean running, as the kubelet does. The clock is injected for tests."""
from __future__ import annotations

import time
from typing import Callable


class Backoff:
    def __init__(self, initial: float = 10.0, maximum: float = 300.0, reset_after: float = 600.0,
                 clock: Callable[[], float] = time.monotonic):
        self.initial, self.maximum, self.reset_after, self.clock = initial, maximum, reset_after, clock
        self._entries: dict[tuple, tuple[float, float]] = {}  # key -> (delay, not before)

    def next(self, key: tuple) -> float:
        """Record a failure now; return the delay before the next try."""
        now = self.clock()
        delay, until = self._entries.get(key, (0.0, 0.0))
        if delay and now - until > self.reset_after:
            delay = 0.0
        delay = self.initial if not delay else min(delay * 2, self.maximum)
        self._entries[key] = (delay, now + delay)
        return delay

    def waiting(self, key: tuple) -> float:
        """Seconds still to wait before key may be tried again (0: go)."""
        entry = self._entries.get(key)
        return max(0.0, entry[1] - self.clock()) if entry else 0.0

    def delay(self, key: tuple) -> float:
        entry = self._entries.get(key)
        return entry[0] if entry else 0.0

    def reset(self, key: tuple) -> None:
        self._entries.pop(key, None)

    def forget_pod(self, uid: str) -> None:
        for k in [k for k in self._entries if k[0] == uid]:
            del self._entries[k]
