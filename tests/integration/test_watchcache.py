"""The watch cache (master/apiserver/watchcache.py) against a real etcd: progress requests from
many waiters, compaction and relisting, etcd going away and coming back, slow client streams
and the memory a watch from "0" holds. A small TCP forwarder stands between a cache and etcd
where a test needs etcd to vanish for the cache alone while the test keeps writing to it."""
from __future__ import annotations

import asyncio
import tracemalloc

import pytest

from kubelab.api import kinds
from kubelab.api.v1 import api_pb2, objects_pb2 as v1
from kubelab.errors import Gone
from kubelab.etcd.client import EtcdClient
from kubelab.selectors import FieldSelector, LabelSelector
from master.apiserver.watchcache import WatchCache

from .conftest import wait_for

pytestmark = pytest.mark.timeout(240)

PODS = kinds.BY_RESOURCE["pods"]
PREFIX = "/registry/pods/"
EVERYTHING = (LabelSelector.parse(""), FieldSelector.parse("", PODS.field_selectors, "Pod"))


def pod(name: str, pad: int = 0, gen: int = 0) -> v1.Pod:
    p = v1.Pod()
    p.metadata.name, p.metadata.namespace = name, "default"
    p.metadata.labels["gen"] = str(gen)
    if pad:
        p.metadata.annotations["pad"] = "x" * pad
    p.spec.containers.add(name="c", image="busybox")
    return p


async def put_pod(etcd: EtcdClient, name: str, pad: int = 0, gen: int = 0) -> int:
    return await etcd.put(f"{PREFIX}default/{name}", pod(name, pad, gen).SerializeToString())


async def etcd_state(etcd: EtcdClient) -> dict[str, int]:
    res = await etcd.range(PREFIX, prefix=True)
    return {kv.key.decode()[len(PREFIX):]: kv.mod_revision for kv in res.kvs}


def cache_state(cache: WatchCache) -> dict[str, int]:
    return {k: e.rv for k, e in cache.store.items()}


def decode(data: bytes) -> tuple[str, str, int]:
    ev = api_pb2.WatchEvent.FromString(data)
    m = v1.Pod.FromString(ev.object.value).metadata
    return ev.type, m.name, int(m.resourceVersion or 0)


async def take(w, n: int, timeout: float = 30.0) -> list[tuple[str, str, int]]:
    async def run():
        return [decode(await w.queue.get()) for _ in range(n)]
    return await asyncio.wait_for(run(), timeout)


class Forwarder:
    """TCP between a cache's etcd client and etcd. cut() closes every connection and refuses new
    ones; restore(budget=N) lets them through again, the first of them only for N bytes from
    etcd (then it is cut too): the cache's view of etcd going away in a chosen place."""

    def __init__(self, port: int):
        self.port = port
        self.up = True
        self.budget: int | None = None
        self.conns: set[asyncio.StreamWriter] = set()
        self.tasks: set[asyncio.Task] = set()
        self.server: asyncio.Server | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def start(self) -> Forwarder:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def _accept(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if not self.up:
            w.close()
            return
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            w.close()
            return
        budget, self.budget = self.budget, None
        self.conns |= {w, uw}
        for t in (self._pipe(r, uw, None), self._pipe(ur, w, budget)):
            task = asyncio.create_task(t)
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, budget: int | None) -> None:
        try:
            while data := await src.read(65536):
                if budget is not None:
                    data = data[:budget]
                    budget -= len(data)
                dst.write(data)
                await dst.drain()
                if budget == 0:
                    break
        except (ConnectionError, OSError):
            pass
        finally:
            self._close_all() if budget == 0 else dst.close()

    def _close_all(self) -> None:
        for c in list(self.conns):
            c.close()
        self.conns.clear()

    def cut(self) -> None:
        self.up = False
        self._close_all()

    def restore(self, budget: int | None = None) -> None:
        self.budget, self.up = budget, True

    async def close(self) -> None:
        self.cut()
        self.server.close()
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()


@pytest.fixture
async def forwarder(etcd):
    f = await Forwarder(etcd.client_port).start()
    try:
        yield f
    finally:
        await f.close()


@pytest.fixture
async def caches():
    """Start caches with start(cache); all are stopped (and their clients closed) at teardown."""
    made: list[tuple[WatchCache, EtcdClient | None]] = []

    async def start(cache: WatchCache, own_client: EtcdClient | None = None) -> WatchCache:
        made.append((cache, own_client))
        await cache.start()
        return cache

    try:
        yield start
    finally:
        for cache, client in made:
            await cache.stop()
            if client is not None:
                await client.close()


async def test_concurrent_waiters_share_progress_requests(etcd_client, caches):
    """8 waiters asking for progress while pod events flow: one progress request at a time on
    the shared stream, so the cache's etcd watch never restarts and every event is applied."""
    cache = await caches(WatchCache(PODS, etcd_client, PREFIX))
    done = asyncio.Event()
    waited = [0] * 8

    async def waiter(k: int) -> None:
        while not done.is_set():
            # a write outside the prefix moves etcd's revision without an event for this cache
            rev = await etcd_client.put(f"/elsewhere/{k}", str(waited[k]))
            await cache.wait_for(rev, timeout=60)
            waited[k] += 1

    tasks = [asyncio.create_task(waiter(k)) for k in range(8)]
    try:
        await wait_for(lambda: all(waited), 60, what="every waiter served once")
        revs = [await put_pod(etcd_client, f"p{i % 50}", gen=i) for i in range(400)]
        await wait_for(lambda: cache.applied_rv >= revs[-1], 60, what="the last event applied")
        done.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
    finally:
        done.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert cache.watch_restarts == 0, cache.health()
    assert cache_state(cache) == await etcd_state(etcd_client)
    assert [ev.rv for ev in cache.events][-400:] == revs  # every event, once, in order


async def test_relist_after_compaction_while_the_watch_is_down(etcd, etcd_client, forwarder, caches):
    for i in range(5):
        await put_pod(etcd_client, f"p{i}")
    cache = await caches(WatchCache(PODS, c := EtcdClient(forwarder.endpoint, timeout=2), PREFIX,
                                    backoff_cap=0.5), c)
    old_rv = cache.applied_rv
    w = await cache.watch("", *EVERYTHING, str(old_rv), False)

    forwarder.cut()
    await wait_for(lambda: cache.watch_restarts > 0, 30, what="the cache's etcd watch to break")
    await etcd_client.delete(f"{PREFIX}default/p0")
    await put_pod(etcd_client, "p1", gen=1)
    rev = await put_pod(etcd_client, "p5")
    await etcd_client.compact(rev)  # the events the cache missed are gone from etcd
    forwarder.restore()

    await wait_for(lambda: cache.relists == 1, 30, what="a relist")
    assert await asyncio.wait_for(w.queue.get(), 10) is None  # its client stream was ended
    with pytest.raises(Gone):
        await cache.watch("", *EVERYTHING, str(old_rv), False)
    assert cache.applied_rv >= rev and cache_state(cache) == await etcd_state(etcd_client)

    w2 = await cache.watch("", *EVERYTHING, str(cache.applied_rv), False)
    later = await put_pod(etcd_client, "p6")
    assert await take(w2, 1) == [("ADDED", "p6", later)]


async def test_relist_that_fails_after_compaction_is_retried(etcd, etcd_client, forwarder, caches):
    """etcd goes away in the middle of the relist that follows a compaction: the cache keeps
    retrying (its task alive), then recovers and follows later events."""
    for i in range(8):
        await put_pod(etcd_client, f"p{i}", pad=100_000)  # a page of these is ~800 kB
    cache = await caches(WatchCache(PODS, c := EtcdClient(forwarder.endpoint, timeout=2), PREFIX,
                                    backoff_cap=0.5), c)
    forwarder.cut()
    await wait_for(lambda: cache.watch_restarts > 0, 30, what="the cache's etcd watch to break")
    await etcd_client.delete(f"{PREFIX}default/p7")
    rev = await put_pod(etcd_client, "p0", pad=100_000, gen=1)
    await etcd_client.compact(rev)  # past the cache's resume point (its applied_rv + 1)
    # The next connection carries the watch's compaction answer, then breaks inside the list.
    forwarder.restore(budget=64 << 10)

    await wait_for(lambda: cache.relist_failures > 0, 30, what="a failed relist")
    assert not cache._task.done()
    await wait_for(lambda: cache.relists == 1, 30, what="a relist that works")
    assert cache_state(cache) == await etcd_state(etcd_client)
    later = await put_pod(etcd_client, "p9")
    await wait_for(lambda: "default/p9" in cache.store, 30, what="a later event")
    assert cache.applied_rv == later and cache.state == "watching"


async def test_first_list_retried_until_etcd_answers(etcd, etcd_client, caches):
    await put_pod(etcd_client, "p0")
    await etcd.stop()
    c = EtcdClient(etcd.endpoint, timeout=1)
    cache = WatchCache(PODS, c, PREFIX, backoff_cap=0.5)
    starting = asyncio.create_task(caches(cache, c))
    await wait_for(lambda: cache.relist_failures >= 2, 30, what="the list to fail twice")
    assert not starting.done() and cache.state.startswith("retrying")
    await etcd.start()
    await asyncio.wait_for(starting, 60)
    assert sorted(cache.store) == ["default/p0"]
    later = await put_pod(etcd_client, "p1")
    await wait_for(lambda: cache.applied_rv == later, 30, what="a later event")


async def test_slow_watcher_dropped_and_resumed_without_loss(etcd_client, caches):
    cache = await caches(WatchCache(PODS, etcd_client, PREFIX, capacity=40))  # streams hold 20
    w = await cache.watch("", *EVERYTHING, str(cache.applied_rv), False)
    revs = [await put_pod(etcd_client, f"p{i}") for i in range(5)]
    got = await take(w, 5)
    assert got == [("ADDED", f"p{i}", r) for i, r in enumerate(revs)]

    revs += [await put_pod(etcd_client, f"p{i}") for i in range(5, 30)]  # w reads none of these
    await wait_for(lambda: cache.applied_rv == revs[-1], 30, what="the writes applied")
    assert w.closed and w not in cache.watchers and cache.dropped_watchers == 1
    assert w.queue.bytes == 0 and await w.queue.get() is None

    # its client rewatches from the last event it got and misses nothing
    w2 = await cache.watch("", *EVERYTHING, str(got[-1][2]), False)
    assert await take(w2, 25) == [("ADDED", f"p{i}", revs[i]) for i in range(5, 30)]


async def test_watch_from_0_holds_no_copy_of_the_store(etcd_client, caches):
    """A watch from "0" encodes its initial ADDED events only as it is read, so watchers that
    never read hold (almost) nothing; their live events are bounded and they get closed."""
    objects = 100
    for i in range(objects):
        await put_pod(etcd_client, f"p{i}", pad=20_000)
    store_bytes = objects * 20_000
    cache = await caches(WatchCache(PODS, etcd_client, PREFIX, capacity=40))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        idle = [await cache.watch("", *EVERYTHING, "0", True) for _ in range(10)]
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < store_bytes // 10, f"10 idle watches from 0 hold {held} bytes; the store is {store_bytes}"

    reader = await cache.watch("", *EVERYTHING, "0", True)
    start_rv = cache.applied_rv
    initial = await take(reader, objects + 1)
    assert sorted(name for t, name, _ in initial[:-1] if t == "ADDED") == sorted(f"p{i}" for i in range(objects))
    assert initial[-1] == ("BOOKMARK", "", start_rv)

    for i in range(25):  # more than a stream may hold (capacity // 2 = 20); the reader keeps up
        r = await put_pod(etcd_client, f"p{i}", gen=1)
        assert await take(reader, 1) == [("MODIFIED", f"p{i}", r)]
    await wait_for(lambda: all(w.closed for w in idle), 30, what="the idle watches closed")
    assert all(w.queue.bytes == 0 for w in idle) and cache.watchers == {reader}


async def test_apiserver_through_an_etcd_restart(etcd, api):
    """etcd stops and starts again on the same data dir and port: the API server answers again
    and an open watch carries on without losing or repeating an event."""
    pods = api.client.pods("default")
    await pods.create(pod("before"))
    rv = (await pods.list()).resource_version
    seen: list[tuple[str, str]] = []

    async def watch():
        async for ev in pods.watch(resource_version=rv, allow_bookmarks=False):
            seen.append((ev.type, ev.object.metadata.name))
            if ev.object.metadata.name == "after4":
                return

    watching = asyncio.create_task(watch())
    try:
        await pods.create(pod("up"))
        await wait_for(lambda: ("ADDED", "up") in seen, 30, what="the watch to work")
        await etcd.stop()
        await etcd.start()

        async def create_after0():
            try:
                return await pods.create(pod("after0"))
            except Exception as e:  # noqa: BLE001 - the API answers errors until its etcd client reconnects
                return type(e).__name__ == "AlreadyExists"  # a retried create that had gone through
        await wait_for(create_after0, 60, interval=0.3, what="the API to answer again")
        for i in range(1, 5):
            await pods.create(pod(f"after{i}"))
        await asyncio.wait_for(watching, 60)
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
    assert seen == [("ADDED", n) for n in ("up", "after0", "after1", "after2", "after3", "after4")]
    caches = api.server.caches.values()
    assert all(c._task is not None and not c._task.done() for c in caches)


async def test_list_of_large_objects_is_paged_in_bytes(etcd_client, caches):
    """60 pods of 1.2 MB are 72 MB, past gRPC's 64 MB message limit in one etcd reply: the
    cache's list must come in pages bounded in bytes, or the API server cannot start."""
    value = pod("x", pad=1_200_000).SerializeToString()
    sem = asyncio.Semaphore(8)

    async def put(i: int) -> None:
        async with sem:
            await etcd_client.put(f"{PREFIX}default/big{i:02d}", value)
    await asyncio.gather(*(put(i) for i in range(60)))
    cache = WatchCache(PODS, etcd_client, PREFIX)
    await asyncio.wait_for(caches(cache), 120)
    assert len(cache.store) == 60 and cache.relist_failures == 0
