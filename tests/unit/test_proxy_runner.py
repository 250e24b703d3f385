"""worker/proxy/runner.py: bursts merge into one sync, syncs are min_interval apart, a periodic
sync comes without requests, failures are retried until one succeeds. The runner's own clock
(time.monotonic) is what the spacing is checked against; nothing waits on a fixed sleep."""
from __future__ import annotations

import asyncio
import time

import pytest

from worker.proxy.runner import BoundedFrequencyRunner


async def until(pred, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.005)


class Recorder:
    def __init__(self, fail_first: int = 0):
        self.starts: list[float] = []
        self.fail_first = fail_first

    async def __call__(self) -> None:
        self.starts.append(time.monotonic())
        await asyncio.sleep(0)
        if len(self.starts) <= self.fail_first:
            raise RuntimeError(f"boom {len(self.starts)}")


@pytest.fixture
async def started():
    tasks = []

    def start(r: BoundedFrequencyRunner):
        tasks.append(asyncio.create_task(r.loop()))
        return r
    yield start
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_burst_of_requests_is_one_sync(started):
    rec = Recorder()
    r = started(BoundedFrequencyRunner("t", rec, min_interval=0.2, max_interval=60))
    await until(lambda: len(rec.starts) == 1)  # the first sync runs at once
    for _ in range(100):
        r.run()
    await until(lambda: len(rec.starts) == 2)
    # one more request after the merged sync has started: exactly one more sync
    r.run()
    await until(lambda: len(rec.starts) == 3)
    assert r.calls == 3 and not r._requested


async def test_syncs_are_at_least_min_interval_apart(started):
    rec = Recorder()
    r = started(BoundedFrequencyRunner("t", rec, min_interval=0.15, max_interval=60))
    for _ in range(4):
        r.run()
        n = len(rec.starts)
        await until(lambda n=n: len(rec.starts) > n)
    gaps = [b - a for a, b in zip(rec.starts, rec.starts[1:])]
    assert len(gaps) >= 3 and min(gaps) >= 0.15


async def test_periodic_sync_without_requests(started):
    rec = Recorder()
    started(BoundedFrequencyRunner("t", rec, min_interval=0.0, max_interval=0.05))
    await until(lambda: len(rec.starts) >= 3)


async def test_failures_are_retried_with_backoff_until_success(started):
    rec = Recorder(fail_first=3)
    r = started(BoundedFrequencyRunner("t", rec, min_interval=0.01, max_interval=60, retry_base=0.02, retry_max=1))
    await until(lambda: len(rec.starts) == 4)
    assert r.failures == 0 and r.last_error is None
    gaps = [b - a for a, b in zip(rec.starts, rec.starts[1:])]
    assert gaps[0] >= 0.02 and gaps[1] >= 0.04 and gaps[2] >= 0.08  # doubling
    # success: no more syncs until asked (max_interval is a minute)
    r.run()
    await until(lambda: len(rec.starts) == 5)


def test_bad_intervals_are_refused():
    with pytest.raises(ValueError, match="min_interval"):
        BoundedFrequencyRunner("t", Recorder(), min_interval=5, max_interval=1)
