import asyncio

from kubelab.client.workqueue import ShutDown, WorkQueue


async def test_duplicates_merge_and_no_key_runs_twice():
    q = WorkQueue()
    q.add("a")
    q.add("a")
    q.add("b")
    assert len(q) == 2
    k = await q.get()
    assert k == "a"
    q.add("a")  # while processing: remembered, not handed out
    assert await q.get() == "b"
    assert len(q) == 0
    q.done("a")
    assert await q.get() == "a"


async def test_rate_limited_backoff_and_shutdown():
    q = WorkQueue(base_delay=0.01)
    q.add_rate_limited("x")
    q.add_rate_limited("x")
    assert q.requeues("x") == 2
    assert await asyncio.wait_for(q.get(), 1) == "x"
    q.forget("x")
    assert q.requeues("x") == 0
    q.shutdown()
    try:
        await q.get()
        raise AssertionError("expected ShutDown")
    except ShutDown:
        pass
