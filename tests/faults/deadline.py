"""The fault suite's one bound on waiting: DEADLINE, the seconds any single wait may take
before the test fails, and wait_until, the polling wait that enforces it. Every other
module of the suite (processes, load, watchers, judge) waits against this."""
from __future__ import annotations

import asyncio
import time

DEADLINE = 90.0  # seconds any single wait of the suite may take before the test fails


async def wait_until(pred, what: str, timeout: float = DEADLINE) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)
