"""The watch cache's pure logic against a scripted etcd stream: its resume point, its backoff
and its per-stream queue. (Against real etcd: tests/integration/test_watchcache.py.)"""
from __future__ import annotations

import asyncio

from kubelab.api import kinds
from kubelab.api.v1 import api_pb2, objects_pb2 as v1
from kubelab.etcd.client import EtcdUnavailable, KeyValue, RangeResult, WatchBatch, WatchEvent
from kubelab.selectors import FieldSelector, LabelSelector
from master.apiserver.watchcache import Backoff, WatchCache, WatchQueue

PODS = kinds.BY_RESOURCE["pods"]
PREFIX = "/registry/pods/"


def kv(name: str, rev: int, value: bytes | None = None) -> KeyValue:
    if value is None:
        p = v1.Pod()
        p.metadata.name, p.metadata.namespace = name, "default"
        value = p.SerializeToString()
    return KeyValue(f"{PREFIX}default/{name}".encode(), value, rev, rev, 1, 0)


class ScriptedWatch:
    """One etcd watch that yields the given batches, then raises `end` (or waits forever)."""

    def __init__(self, batches: list[WatchBatch], end: Exception | None):
        self.batches, self.end = list(batches), end

    async def start(self) -> int:
        return 0

    async def request_progress(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    def __aiter__(self):
        return self

    async def __anext__(self) -> WatchBatch:
        if self.batches:
            return self.batches.pop(0)
        if self.end is not None:
            raise self.end
        await asyncio.Event().wait()


class ScriptedEtcd:
    def __init__(self, kvs: list[KeyValue], revision: int, watches: list[ScriptedWatch]):
        self.kvs, self.revision, self.watches = kvs, revision, watches
        self.watch_starts: list[int] = []

    async def range(self, start, *, range_end, limit, revision):
        return RangeResult(list(self.kvs), False, len(self.kvs), revision or self.revision)

    def watch(self, key, *, prefix, start_revision):
        self.watch_starts.append(start_revision)
        return self.watches.pop(0)


async def until(pred, timeout: float = 10.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.005)


async def test_resume_point_is_the_last_applied_event_not_progress():
    """etcd < 3.5.8 may report progress (revision 10) before an event it still owes (8): the
    restarted watch must start right after the last applied event, and cache-served lists
    must not claim revision 10, or the deletion at 8 is skipped for good."""
    owed = WatchEvent("DELETE", KeyValue(kv("a", 8).key, b"", 0, 8, 0, 0), None)
    etcd = ScriptedEtcd([kv("a", 3), kv("b", 4)], 5, [
        ScriptedWatch([WatchBatch(10, [])], EtcdUnavailable("etcd restarting")),
        ScriptedWatch([WatchBatch(10, [owed])], None)])
    cache = WatchCache(PODS, etcd, PREFIX, backoff_base=0.001, backoff_cap=0.001)
    await cache.start()
    try:
        await until(lambda: len(etcd.watch_starts) == 2 and cache.get("default", "a") is None)
        assert etcd.watch_starts == [6, 6]
        assert cache.watch_restarts == 1
        _, rv = cache.list("", LabelSelector.parse(""), FieldSelector.parse("", PODS.field_selectors, "Pod"))
        assert rv == cache.applied_rv == 8
        assert sorted(cache.store) == ["default/b"]
    finally:
        await cache.stop()


async def test_list_revision_before_the_owed_event_arrives():
    etcd = ScriptedEtcd([kv("a", 3)], 5, [ScriptedWatch([WatchBatch(10, [])], None)])
    cache = WatchCache(PODS, etcd, PREFIX)
    await cache.start()
    try:
        await until(lambda: cache.progress_rv == 10)
        await cache.wait_for(10)  # etcd said so: a watch from 10 may start
        _, rv = cache.list("", LabelSelector.parse(""), FieldSelector.parse("", PODS.field_selectors, "Pod"))
        assert rv == 5
        w = await cache.watch("", LabelSelector.parse(""), FieldSelector.parse("", PODS.field_selectors, "Pod"),
                              "0", True)
        assert w.start_rv == 5  # the snapshot, and so its bookmark, is at the applied revision
        ev = api_pb2.WatchEvent.FromString(await w.queue.get())
        assert ev.type == "ADDED"
        bm = api_pb2.WatchEvent.FromString(await w.queue.get())
        assert bm.type == "BOOKMARK" and v1.Pod.FromString(bm.object.value).metadata.resourceVersion == "5"
    finally:
        await cache.stop()


def test_backoff_is_jittered_capped_and_resets():
    b = Backoff(0.1, 1.0, rand=lambda: 1.0)
    assert [b.next() for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    b.reset()
    assert b.next() == 0.1
    low = Backoff(0.1, 1.0, rand=lambda: 0.0)
    assert [low.next() for _ in range(3)] == [0.05, 0.1, 0.2]


async def test_queue_initial_events_lazily_then_bounded_live_events():
    made: list[int] = []

    def initial():
        for i in range(3):
            made.append(i)
            yield b"i%d" % i

    q = WatchQueue(max_events=2, max_bytes=100)
    q.set_initial(initial())
    assert made == [] and q.bytes == 0  # nothing encoded before the stream reads
    assert q.put(b"l0") and q.put(b"l1")
    assert not q.put(b"l2")  # a third would pass the count bound
    assert [await q.get() for _ in range(5)] == [b"i0", b"i1", b"i2", b"l0", b"l1"]
    assert q.put(b"x" * 100) and not q.put(b"y")  # the byte bound
    q.close()
    assert q.bytes == 0 and await q.get() is None


def test_max_pending_defaults_to_half_the_ring():
    assert WatchCache(PODS, ScriptedEtcd([], 1, []), PREFIX, capacity=50).max_pending == 25


async def test_a_value_that_does_not_decode_is_left_out():
    bad = kv("bad", 3, b"\xff\xff\xff")
    later_bad = WatchEvent("PUT", kv("worse", 7, b"\xff\xff"), None)
    good = WatchEvent("PUT", kv("c", 8), None)
    etcd = ScriptedEtcd([kv("a", 2), bad], 5, [ScriptedWatch([WatchBatch(8, [later_bad, good])], None)])
    cache = WatchCache(PODS, etcd, PREFIX)
    await asyncio.wait_for(cache.start(), 10)
    try:
        await until(lambda: cache.applied_rv == 8)
        assert sorted(cache.store) == ["default/a", "default/c"] and cache.watch_restarts == 0
    finally:
        await cache.stop()


class ProgressWatch(ScriptedWatch):
    """Answers each progress request with a notification at `revision`; counts requests and
    any that overlap (grpc.aio allows one write in flight on a stream)."""

    def __init__(self, revision: int):
        super().__init__([], None)
        self.revision, self.requests, self.overlaps, self.inflight = revision, 0, 0, False
        self.out: asyncio.Queue[WatchBatch] = asyncio.Queue()

    async def request_progress(self) -> None:
        self.overlaps += self.inflight
        self.inflight = True
        await asyncio.sleep(0.01)
        self.inflight = False
        self.requests += 1
        self.out.put_nowait(WatchBatch(self.revision, []))

    async def __anext__(self) -> WatchBatch:
        return await self.out.get()


async def test_waiters_share_one_progress_request():
    watch = ProgressWatch(20)
    cache = WatchCache(PODS, ScriptedEtcd([], 5, [watch]), PREFIX)
    await cache.start()
    try:
        await until(lambda: cache._watch is watch)
        await asyncio.wait_for(asyncio.gather(*(cache.wait_for(10 + k) for k in range(8))), 10)
        assert (watch.requests, watch.overlaps) == (1, 0)
        assert cache.progress_rv == 20 and cache.applied_rv == 5
    finally:
        await cache.stop()
