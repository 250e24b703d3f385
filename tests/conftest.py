"""Shared fixtures: fail any test that leaks asyncio tasks, and the session that leaks
child processes (etcd, API servers, hollow nodes)."""
import asyncio
import os

import psutil
import pytest


@pytest.fixture(autouse=True)
async def no_leaked_tasks():
    before = set(asyncio.all_tasks())
    yield
    await asyncio.sleep(0)
    leaked = [t for t in asyncio.all_tasks() - before if t is not asyncio.current_task() and not t.done()]
    if leaked:
        # give cancelled tasks one more turn to finish before calling it a leak
        await asyncio.sleep(0.2)
        leaked = [t for t in leaked if not t.done()]
    for t in leaked:
        t.cancel()
    assert not leaked, f"test leaked asyncio tasks: {[t.get_name() + ' ' + repr(t.get_coro()) for t in leaked]}"


@pytest.fixture(scope="session", autouse=True)
def no_leaked_processes():
    yield
    me = psutil.Process(os.getpid())
    left = [p for p in me.children(recursive=True) if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    for p in left:
        p.kill()
    assert not left, f"tests left processes running: {[' '.join(p.cmdline()[:3]) for p in left]}"
