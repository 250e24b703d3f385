"""The watch cache: one etcd watch per resource, fanned out to every client stream.

The cache lists the resource once, then follows a single etcd watch from that revision. It
keeps the current objects (raw stored bytes plus the few fields selectors need) and a ring
buffer of recent events. A client Watch is served from memory: from a resourceVersion still
in the ring buffer it replays the newer events, older than that answers Gone (the client
relists). Each event is encoded once per event type and the same bytes go to every stream.
"""
from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass, field

from kubelab import meta
from kubelab.api import kinds
from kubelab.api.v1 import api_pb2
from kubelab.errors import Gone, Timeout
from kubelab.etcd.client import CompactedError, EtcdClient
from kubelab.etcd.txn import prefix_end
from kubelab.selectors import FieldSelector, LabelSelector, field_set

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Entry:
    """One stored object as the cache keeps it: bytes as in etcd, plus selector fields."""
    namespace: str
    name: str
    raw: bytes
    rv: int
    labels: dict
    fields: dict


@dataclass(slots=True)
class CacheEvent:
    rv: int
    cur: Entry | None  # None: deleted
    prev: Entry | None  # None: created
    _encoded: dict = field(default_factory=dict)

    @property
    def namespace(self) -> str:
        return (self.cur or self.prev).namespace


class Watcher:
    """One client stream: a filter and a queue of encoded WatchEvents (None closes it)."""

    def __init__(self, namespace: str, labels: LabelSelector, fields: FieldSelector,
                 bookmarks: bool, max_pending: int):
        self.namespace = namespace
        self.labels = labels
        self.fields = fields
        self.bookmarks = bookmarks
        self.max_pending = max_pending
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.closed = False
        self.start_rv = 0  # events at or before this revision are already reflected

    def matches(self, e: Entry | None) -> bool:
        return (e is not None and (not self.namespace or e.namespace == self.namespace)
                and self.labels.matches(e.labels) and self.fields.matches(e.fields))

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        if self.queue.qsize() >= self.max_pending:
            # A consumer this far behind would hold memory without bound; Kubernetes also
            # drops such watchers. The client rewatches from its last resourceVersion.
            self.close()
            return
        self.queue.put_nowait(data)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.queue.put_nowait(None)


class WatchCache:
    def __init__(self, kind: kinds.Kind, etcd: EtcdClient, prefix: str, *,
                 capacity: int = 10000, bookmark_interval: float = 30.0,
                 max_pending: int = 100000, page_size: int = 1000):
        self.kind = kind
        self.etcd = etcd
        self.prefix = prefix  # "/registry/pods/"
        self.capacity = capacity
        self.bookmark_interval = bookmark_interval
        self.max_pending = max_pending
        self.page_size = page_size
        self.store: dict[str, Entry] = {}
        self.events: collections.deque[CacheEvent] = collections.deque()
        self.rv = 0  # revision the cache reflects (events, or etcd's progress notifications)
        self.applied_rv = 0  # revision of the newest event applied to the store
        self.oldest_rv = 0  # replay is possible from any rv >= this
        self.watchers: set[Watcher] = set()
        self._advanced = asyncio.Condition()
        self._ready = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._watch = None  # the etcd watch being followed

    # -- lifecycle --
    async def start(self) -> None:
        await self._relist()
        self._task = asyncio.create_task(self._run(), name=f"watchcache-{self.kind.resource}")

    async def wait_ready(self) -> None:
        await self._ready.wait()

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for w in list(self.watchers):
            w.close()

    def entry_from(self, key: bytes, raw: bytes, rv: int) -> Entry:
        obj = self.kind.message.FromString(raw)
        m = obj.metadata
        return Entry(m.namespace, m.name, raw, rv, dict(m.labels),
                     field_set(obj, self.kind.field_selectors))

    async def _relist(self) -> None:
        start = self.prefix.encode()
        end = prefix_end(start)
        rev, store = 0, {}
        while True:
            res = await self.etcd.range(start, range_end=end, limit=self.page_size, revision=rev)
            rev = rev or res.revision
            for kv in res.kvs:
                store[kv.key.decode()[len(self.prefix):]] = self.entry_from(kv.key, kv.value, kv.mod_revision)
            if not res.more or not res.kvs:
                break
            start = res.kvs[-1].key + b"\x00"
        self.store = store
        self.events.clear()
        self.rv = self.oldest_rv = self.applied_rv = rev
        self._ready.set()

    async def _run(self) -> None:
        bookmarks = asyncio.create_task(self._bookmarks())
        try:
            while True:
                try:
                    await self._follow()
                except CompactedError:
                    log.warning("%s: watch compacted, relisting", self.kind.resource)
                    await self._reset()
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # noqa: BLE001 - etcd restarts must not kill the cache
                    log.warning("%s: etcd watch failed (%s), retrying", self.kind.resource, e)
                    await asyncio.sleep(1)
        finally:
            bookmarks.cancel()

    async def _reset(self) -> None:
        """Start over from a fresh list; every client watch ends and relists through Gone."""
        await self._relist()
        for w in list(self.watchers):
            w.close()

    async def _follow(self) -> None:
        key = self.prefix.encode()
        watch = self.etcd.watch(key, prefix=True, start_revision=self.rv + 1)
        self._watch = watch
        try:
            await self._consume(watch)
        finally:
            self._watch = None
            await watch.aclose()

    async def _consume(self, watch) -> None:
        async for batch in watch:
            for ev in batch.events:
                k = ev.kv.key.decode()[len(self.prefix):]
                prev = self.store.get(k)
                if ev.type == "PUT":
                    cur = self.entry_from(ev.kv.key, ev.kv.value, ev.kv.mod_revision)
                    self.store[k] = cur
                    rv = ev.kv.mod_revision
                else:
                    cur = None
                    self.store.pop(k, None)
                    rv = ev.kv.mod_revision
                    if prev is None:
                        continue
                self._append(CacheEvent(rv, cur, prev))
            if batch.revision > self.rv and not batch.events:
                self.rv = batch.revision
            async with self._advanced:
                self._advanced.notify_all()

    def _append(self, ev: CacheEvent) -> None:
        self.events.append(ev)
        if len(self.events) > self.capacity:
            self.oldest_rv = self.events.popleft().rv
        self.rv = max(self.rv, ev.rv)
        self.applied_rv = max(self.applied_rv, ev.rv)
        self._dispatch(ev)

    # -- fan-out --
    def encode(self, ev: CacheEvent, etype: str) -> bytes:
        data = ev._encoded.get(etype)
        if data is None:
            e = ev.cur or ev.prev  # a DELETED for an object that left a selector shows it as it is now
            obj = meta.pack_raw(self.kind, e.raw + meta.rv_suffix(ev.rv))
            data = api_pb2.WatchEvent(type=etype, object=obj).SerializeToString()
            ev._encoded[etype] = data
        return data

    def _dispatch(self, ev: CacheEvent) -> None:
        for w in self.watchers:
            self._deliver(w, ev)

    def _deliver(self, w: Watcher, ev: CacheEvent) -> None:
        # etcd 3.5 before 3.5.8 may send a progress notification ahead of events it still owes
        # (etcd issue 15220); such late events must not reach a watcher that started after them
        if ev.rv <= w.start_rv or (w.namespace and ev.namespace != w.namespace):
            return
        now, before = w.matches(ev.cur), w.matches(ev.prev)
        if now:
            etype = "MODIFIED" if before else "ADDED"
        elif before:
            # deleted, or changed so that it no longer matches: either way it leaves this view
            etype = "DELETED"
        else:
            return
        w.send(self.encode(ev, etype))

    def bookmark(self) -> bytes:
        # applied_rv, not rv: a progress notification may run ahead of events (see _deliver)
        obj = meta.pack_raw(self.kind, meta.rv_suffix(self.applied_rv))
        return api_pb2.WatchEvent(type="BOOKMARK", object=obj).SerializeToString()

    async def _bookmarks(self) -> None:
        while True:
            await asyncio.sleep(self.bookmark_interval)
            data = self.bookmark()
            for w in list(self.watchers):
                if w.bookmarks and w.start_rv <= self.applied_rv:
                    w.send(data)

    async def watch(self, namespace: str, labels: LabelSelector, fields: FieldSelector,
                    resource_version: str, bookmarks: bool) -> Watcher:
        """Register a client watch; the initial events are queued before this returns."""
        await self._ready.wait()
        w = Watcher(namespace, labels, fields, bookmarks, self.max_pending)
        if resource_version in ("", "0"):
            w.start_rv = self.applied_rv  # the snapshot holds every event applied so far
            for e in self.store.values():
                if w.matches(e):
                    ev = CacheEvent(e.rv, e, None)
                    w.queue.put_nowait(self.encode(ev, "ADDED"))
            if bookmarks:
                w.queue.put_nowait(self.bookmark())
            self.watchers.add(w)
            return w
        rv = parse_rv(resource_version)
        if rv > self.rv:
            await self.wait_for(rv)
        if rv < self.oldest_rv:
            raise Gone(f"too old resource version: {rv} ({self.oldest_rv})")
        w.start_rv = rv
        for ev in self._since(rv):
            self._deliver(w, ev)
        self.watchers.add(w)
        return w

    def _since(self, rv: int) -> list[CacheEvent]:
        out = []
        for ev in reversed(self.events):
            if ev.rv <= rv:
                break
            out.append(ev)
        out.reverse()
        return out

    async def wait_for(self, rv: int, timeout: float = 3.0) -> None:
        """Wait until the cache reflects revision rv. Writes to other resources move etcd's
        revision without an event here, so ask etcd for a progress notification: it comes
        after every event up to etcd's current revision and moves the cache's rv there."""
        if self.rv >= rv:
            return
        if self._watch is not None:
            try:
                await self._watch.request_progress()
            except Exception as e:  # noqa: BLE001 - then only a real event can move us
                log.debug("progress request: %s", e)

        async def reached():
            async with self._advanced:
                await self._advanced.wait_for(lambda: self.rv >= rv)
        try:
            await asyncio.wait_for(reached(), timeout)
        except asyncio.TimeoutError:
            raise Timeout(f"Too large resource version: {rv}, current: {self.rv}") from None

    def unwatch(self, w: Watcher) -> None:
        self.watchers.discard(w)
        w.closed = True

    # -- reads served from memory --
    def list(self, namespace: str, labels: LabelSelector, fields: FieldSelector) -> tuple[list[Entry], int]:
        items = [e for e in self.store.values()
                 if (not namespace or e.namespace == namespace)
                 and labels.matches(e.labels) and fields.matches(e.fields)]
        return items, self.rv

    def get(self, namespace: str, name: str) -> Entry | None:
        return self.store.get(f"{namespace}/{name}" if namespace else name)


def parse_rv(rv: str) -> int:
    from kubelab.errors import BadRequest
    try:
        n = int(rv)
        if n < 0:
            raise ValueError
        return n
    except ValueError:
        raise BadRequest(f'invalid resource version "{rv}"') from None
