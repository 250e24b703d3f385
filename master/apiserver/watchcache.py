"""The watch cache: one etcd watch per resource, fanned out to every client stream.

The cache lists the resource once (paged by kubelab.etcd.pager, so no etcd reply outgrows the
gRPC limit however large the objects), then follows a single etcd watch from that revision.
It keeps the current objects (raw stored bytes plus the few fields selectors need) and a ring
buffer of recent events. A client Watch is served from memory: from a resourceVersion still
in the ring buffer it replays the newer events, older than that answers Gone (the client
relists). Each event is encoded once per event type and the same bytes go to every stream.

Revisions. `applied_rv` is the revision the store reflects: the last event applied, or the
list's revision. It is the only resume point: the etcd watch restarts from applied_rv + 1,
lists served from the cache and bookmarks carry applied_rv. `progress_rv` is the newest
revision etcd's progress notifications reported. etcd before 3.5.8 (etcd issue 15220; we run
3.5.1) may send such a notification ahead of events it still owes this watch, so progress_rv
proves nothing about the store and is used for one thing only: `wait_for(N)`, which lets a
client Watch from N start once etcd says the watch has reached N. That is safe because the
watcher drops events at or before N (Watcher.start_rv) and every later event still arrives.
A LIST "not older than N" is served from the cache only once applied_rv >= N (store.py),
otherwise from etcd.

Failures. When the etcd watch breaks (etcd restarting, a stream error) the cache resumes from
applied_rv + 1 after a jittered, capped backoff; client streams stay open and lose nothing.
When etcd has compacted past applied_rv the cache lists again (retrying with the same backoff
while that fails) and then closes every client stream, which rewatch, get Gone and relist.
`health()` reports the state and the counters (restarts, relists, failures, dropped watchers).

Memory. A client stream holds its initial events (the snapshot of a watch from "0", or the
ring buffer's replay) as references, encoded only as the stream drains, and at most
max_pending live events (default: half the ring's capacity) and max_pending_bytes. A consumer that
falls further behind is closed and rewatches from its last resourceVersion, as in Kubernetes.
(A watch from "0" closed before its initial events are through has no safe resume point: its
client must list again.)
"""
from __future__ import annotations

import asyncio
import collections
import logging
import random
from dataclasses import dataclass, field
from typing import Iterator

from google.protobuf.message import DecodeError

from kubelab import meta
from kubelab.api import kinds
from kubelab.api.v1 import api_pb2
from kubelab.errors import Gone, Timeout
from kubelab.etcd.client import CompactedError, EtcdClient, EtcdError
from kubelab.etcd.pager import PAGE_BYTES, range_pages
from kubelab.etcd.txn import prefix_end
from kubelab.selectors import FieldSelector, LabelSelector, field_set

log = logging.getLogger(__name__)

PENDING_BYTES = 64 << 20  # live event bytes one client stream may have queued


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


class WatchQueue:
    """What one client stream has still to receive: its initial events, produced lazily, then
    live events, bounded in count and bytes. get() returns None once closed."""

    def __init__(self, max_events: int, max_bytes: int):
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.bytes = 0  # live bytes queued
        self.closed = False
        self._initial: Iterator[bytes] | None = None
        self._live: collections.deque[bytes] = collections.deque()
        self._wake = asyncio.Event()

    def qsize(self) -> int:
        return len(self._live)

    def set_initial(self, events: Iterator[bytes]) -> None:
        self._initial = events
        self._wake.set()

    def put(self, data: bytes) -> bool:
        """Queue a live event; False (nothing queued) when that would pass the bound."""
        if self.closed:
            return True
        if len(self._live) >= self.max_events or self.bytes + len(data) > self.max_bytes:
            return False
        self._live.append(data)
        self.bytes += len(data)
        self._wake.set()
        return True

    def close(self) -> None:
        """Drop everything still queued (the client resumes from the last event it got)."""
        self.closed = True
        self._initial = None
        self._live.clear()
        self.bytes = 0
        self._wake.set()

    async def get(self) -> bytes | None:
        while not self.closed:
            if self._initial is not None:
                data = next(self._initial, None)
                if data is not None:
                    return data
                self._initial = None
            if self._live:
                data = self._live.popleft()
                self.bytes -= len(data)
                return data
            self._wake.clear()
            await self._wake.wait()
        return None


class Watcher:
    """One client stream: a filter and a WatchQueue of encoded WatchEvents."""

    def __init__(self, namespace: str, labels: LabelSelector, fields: FieldSelector,
                 bookmarks: bool, max_pending: int, max_pending_bytes: int = PENDING_BYTES):
        self.namespace = namespace
        self.labels = labels
        self.fields = fields
        self.bookmarks = bookmarks
        self.queue = WatchQueue(max_pending, max_pending_bytes)
        self.start_rv = 0  # events at or before this revision are already reflected

    @property
    def closed(self) -> bool:
        return self.queue.closed

    def matches(self, e: Entry | None) -> bool:
        return (e is not None and (not self.namespace or e.namespace == self.namespace)
                and self.labels.matches(e.labels) and self.fields.matches(e.fields))

    def send(self, data: bytes) -> bool:
        """Queue data; False if this consumer is too far behind and was closed for it."""
        if self.queue.put(data):
            return True
        self.close()
        return False

    def close(self) -> None:
        self.queue.close()


class Backoff:
    """Exponential backoff with jitter (half to all of the step), capped; reset on success."""

    def __init__(self, base: float, cap: float, rand=random.random):
        self.base, self.cap, self.rand = base, cap, rand
        self.attempt = 0

    def next(self) -> float:
        step = min(self.cap, self.base * (2 ** self.attempt))
        self.attempt = min(self.attempt + 1, 32)
        return step * (0.5 + self.rand() / 2)

    def reset(self) -> None:
        self.attempt = 0


class WatchCache:
    def __init__(self, kind: kinds.Kind, etcd: EtcdClient, prefix: str, *,
                 capacity: int = 10000, bookmark_interval: float = 30.0,
                 max_pending: int | None = None, max_pending_bytes: int = PENDING_BYTES,
                 page_size: int = 1000, page_bytes: int = PAGE_BYTES,
                 backoff_base: float = 0.1, backoff_cap: float = 2.0):
        self.kind = kind
        self.etcd = etcd
        self.prefix = prefix  # "/registry/pods/"
        self.capacity = capacity
        self.bookmark_interval = bookmark_interval
        # Half the ring: a stream dropped for falling this far behind still finds its next
        # events in the ring when it rewatches, unless the ring turns over meanwhile.
        self.max_pending = max_pending or max(1, capacity // 2)
        self.max_pending_bytes = max_pending_bytes
        self.page_size = page_size
        self.page_bytes = page_bytes
        self.store: dict[str, Entry] = {}
        self.events: collections.deque[CacheEvent] = collections.deque()
        self.applied_rv = 0  # the store reflects every event up to here: the resume point
        self.progress_rv = 0  # etcd's newest progress notification (may run ahead, see above)
        self.oldest_rv = 0  # replay is possible from any rv >= this
        self.watchers: set[Watcher] = set()
        # health, for logs and health(): the etcd watch's restarts, lists after the first, ...
        self.state = "listing"
        self.last_error = ""
        self.watch_restarts = 0
        self.relists = 0
        self.relist_failures = 0
        self.dropped_watchers = 0
        self._backoff = Backoff(backoff_base, backoff_cap)
        self._advanced = asyncio.Condition()
        self._ready = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._watch = None  # the etcd watch being followed
        self._waiters = 0  # wait_for calls in progress
        self._progress_pending = False  # a progress request is out and nothing came back since
        self._progress_tasks: set[asyncio.Task] = set()

    # -- lifecycle --
    async def start(self) -> None:
        """Start following etcd; returns once the first list is in (retried while it fails)."""
        self._task = asyncio.create_task(self._run(), name=f"watchcache-{self.kind.resource}")
        ready = asyncio.ensure_future(self._ready.wait())
        try:
            await asyncio.wait({ready, self._task}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # the caller gave up waiting: nothing is left running
            await self.stop()
            raise
        finally:
            ready.cancel()
        if self._task.done():
            self._task.result()  # raises what ended it

    async def wait_ready(self) -> None:
        await self._ready.wait()

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._progress_tasks) if t]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for w in list(self.watchers):
            w.close()

    def health(self) -> dict:
        return {"resource": self.kind.resource, "state": self.state, "lastError": self.last_error,
                "appliedRV": self.applied_rv, "watchRestarts": self.watch_restarts,
                "relists": self.relists, "relistFailures": self.relist_failures,
                "droppedWatchers": self.dropped_watchers, "watchers": len(self.watchers)}

    def entry_from(self, key: bytes, raw: bytes, rv: int) -> Entry | None:
        """None, logged, for bytes that do not decode: one bad value must not wedge the cache
        (the list or the watch would fail on it again at every retry)."""
        try:
            obj = self.kind.message.FromString(raw)
        except DecodeError as e:
            log.error("%s: %s at revision %d does not decode (%s); left out of the cache",
                      self.kind.resource, key.decode(errors="replace"), rv, e)
            return None
        m = obj.metadata
        return Entry(m.namespace, m.name, raw, rv, dict(m.labels),
                     field_set(obj, self.kind.field_selectors))

    async def _relist(self) -> None:
        """Replace the store with a fresh list; after the first, every client watch ends
        (they rewatch, get Gone and relist: events between were compacted away)."""
        start = self.prefix.encode()
        rev, store = 0, {}
        async for page in range_pages(self.etcd, start, prefix_end(start), max_bytes=self.page_bytes,
                                      max_count=self.page_size):
            rev = page.revision
            for kv in page.kvs:
                e = self.entry_from(kv.key, kv.value, kv.mod_revision)
                if e is not None:
                    store[kv.key.decode()[len(self.prefix):]] = e
        self.store = store
        self.events.clear()
        self.applied_rv = self.progress_rv = self.oldest_rv = rev
        if self._ready.is_set():
            self.relists += 1
            for w in list(self.watchers):
                w.close()
        self._ready.set()
        async with self._advanced:
            self._advanced.notify_all()

    async def _run(self) -> None:
        bookmarks = asyncio.create_task(self._bookmarks())
        need_list = True
        try:
            while True:
                if need_list:
                    try:
                        await self._relist()
                    except asyncio.CancelledError:
                        raise
                    except Exception as e:  # noqa: BLE001 - etcd away or compacting: list again later
                        self.relist_failures += 1
                        self._retry_later("list failed", e)
                        await asyncio.sleep(self._backoff.next())
                        continue
                    need_list = False
                    self._backoff.reset()
                try:
                    await self._follow()
                    raise EtcdError("etcd watch ended")
                except CompactedError as e:
                    log.warning("%s: etcd watch compacted past %d (%s), listing again",
                                self.kind.resource, self.applied_rv, e)
                    self.state, self.last_error = "listing", str(e)
                    need_list = True
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # noqa: BLE001 - etcd restarts must not kill the cache
                    self.watch_restarts += 1
                    self._retry_later("etcd watch failed", e)
                    await asyncio.sleep(self._backoff.next())
        finally:
            bookmarks.cancel()
            await asyncio.gather(bookmarks, return_exceptions=True)

    def _retry_later(self, what: str, e: Exception) -> None:
        self.state, self.last_error = f"retrying: {what}", f"{type(e).__name__}: {e}"
        log.warning("%s: %s (%s), retrying (restarts %d, failed lists %d)", self.kind.resource, what,
                    self.last_error, self.watch_restarts, self.relist_failures)

    async def _follow(self) -> None:
        watch = self.etcd.watch(self.prefix.encode(), prefix=True, start_revision=self.applied_rv + 1)
        try:
            await watch.start()
            self._watch = watch
            self._progress_pending = False
            if self.state != "watching":
                log.info("%s: watching etcd from revision %d", self.kind.resource, self.applied_rv + 1)
            self.state = "watching"
            if self._waiters:  # their progress request went down with the previous watch
                self._request_progress()
            await self._consume(watch)
        finally:
            self._watch = None
            await watch.aclose()

    async def _consume(self, watch) -> None:
        async for batch in watch:
            self._backoff.reset()
            for ev in batch.events:
                self._apply(ev)
            if not batch.events:
                self.progress_rv = max(self.progress_rv, batch.revision)
            # Anything from etcd may follow a request it dropped (etcd 3.5 ignores progress
            # requests while the watch is catching up): let a waiter ask again.
            self._progress_pending = False
            async with self._advanced:
                self._advanced.notify_all()

    def _apply(self, ev) -> None:
        k = ev.kv.key.decode()[len(self.prefix):]
        prev = self.store.get(k)
        rv = ev.kv.mod_revision
        if ev.type == "PUT":
            cur = self.entry_from(ev.kv.key, ev.kv.value, rv)
            if cur is None:
                self.applied_rv = max(self.applied_rv, rv)
                return
            self.store[k] = cur
        else:
            cur = None
            self.store.pop(k, None)
        self.applied_rv = max(self.applied_rv, rv)
        if cur is None and prev is None:
            return  # a key we never had: nothing for clients
        self._append(CacheEvent(rv, cur, prev))

    def _append(self, ev: CacheEvent) -> None:
        self.events.append(ev)
        if len(self.events) > self.capacity:
            self.oldest_rv = self.events.popleft().rv
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
        dropped = [w for w in self.watchers if not self._deliver(w, ev)]
        for w in dropped:
            self._drop(w)

    def _drop(self, w: Watcher) -> None:
        self.watchers.discard(w)
        self.dropped_watchers += 1
        log.info("%s: closed a watch that fell %d events or %d bytes behind (its client rewatches)",
                 self.kind.resource, w.queue.max_events, w.queue.max_bytes)

    def _event_type(self, w: Watcher, ev: CacheEvent) -> str | None:
        # etcd 3.5 before 3.5.8 may send a progress notification ahead of events it still owes
        # (etcd issue 15220); such late events must not reach a watcher that started after them
        if ev.rv <= w.start_rv or (w.namespace and ev.namespace != w.namespace):
            return None
        now, before = w.matches(ev.cur), w.matches(ev.prev)
        if now:
            return "MODIFIED" if before else "ADDED"
        if before:
            return "DELETED"  # deleted, or changed so that it no longer matches: it leaves this view
        return None

    def _deliver(self, w: Watcher, ev: CacheEvent) -> bool:
        """False if w was closed for being too far behind."""
        if w.closed:
            return True
        etype = self._event_type(w, ev)
        return etype is None or w.send(self.encode(ev, etype))

    def bookmark(self, rv: int | None = None) -> bytes:
        # applied_rv, not progress_rv: a progress notification may run ahead of events
        obj = meta.pack_raw(self.kind, meta.rv_suffix(self.applied_rv if rv is None else rv))
        return api_pb2.WatchEvent(type="BOOKMARK", object=obj).SerializeToString()

    async def _bookmarks(self) -> None:
        while True:
            await asyncio.sleep(self.bookmark_interval)
            data = self.bookmark()
            for w in list(self.watchers):
                if w.bookmarks and w.start_rv <= self.applied_rv and not w.send(data):
                    self._drop(w)

    def _snapshot(self, w: Watcher, entries: list[Entry], bookmark: bool) -> Iterator[bytes]:
        for e in entries:
            if w.matches(e):
                yield self.encode(CacheEvent(e.rv, e, None), "ADDED")
        if bookmark:
            yield self.bookmark(w.start_rv)  # not later: live events queued meanwhile come after it

    def _replay(self, w: Watcher, events: list[CacheEvent]) -> Iterator[bytes]:
        for ev in events:
            etype = self._event_type(w, ev)
            if etype is not None:
                yield self.encode(ev, etype)

    async def watch(self, namespace: str, labels: LabelSelector, fields: FieldSelector,
                    resource_version: str, bookmarks: bool) -> Watcher:
        """Register a client watch. Its initial events are fixed now and encoded as it drains."""
        await self._ready.wait()
        w = Watcher(namespace, labels, fields, bookmarks, self.max_pending, self.max_pending_bytes)
        if resource_version in ("", "0"):
            w.start_rv = self.applied_rv  # the snapshot holds every event applied so far
            w.queue.set_initial(self._snapshot(w, list(self.store.values()), bookmarks))
            self.watchers.add(w)
            return w
        rv = parse_rv(resource_version)
        if not self._reached(rv):
            await self.wait_for(rv)
        if rv < self.oldest_rv:
            raise Gone(f"too old resource version: {rv} ({self.oldest_rv})")
        w.start_rv = rv
        w.queue.set_initial(self._replay(w, self._since(rv)))
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

    def _reached(self, rv: int) -> bool:
        return max(self.applied_rv, self.progress_rv) >= rv

    async def wait_for(self, rv: int, timeout: float = 3.0) -> None:
        """Wait until etcd says the cache's watch has reached revision rv (see the module
        docstring for what that does and does not prove). Writes to other resources move
        etcd's revision without an event here, so ask for progress notifications: one at a
        time on the shared stream however many wait, again after anything arrives."""
        if self._reached(rv):
            return
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        self._waiters += 1
        try:
            async with self._advanced:
                while not self._reached(rv):
                    self._request_progress()
                    left = end - loop.time()
                    try:
                        if left <= 0:
                            raise asyncio.TimeoutError
                        await asyncio.wait_for(self._advanced.wait(), left)
                    except asyncio.TimeoutError:
                        raise Timeout(f"Too large resource version: {rv}, current: {self.applied_rv}") from None
        finally:
            self._waiters -= 1

    def _request_progress(self) -> None:
        """Send one progress request unless one is out already. Done in its own task: a waiter
        giving up must not cancel a write in the middle of the shared stream."""
        watch = self._watch
        if watch is None or self._progress_pending:
            return
        self._progress_pending = True
        task = asyncio.create_task(self._send_progress(watch))
        self._progress_tasks.add(task)
        task.add_done_callback(self._progress_tasks.discard)

    async def _send_progress(self, watch) -> None:
        try:
            await watch.request_progress()
        except Exception as e:  # noqa: BLE001 - the watch goes on; the next batch lets waiters ask again
            log.debug("%s: progress request: %s", self.kind.resource, e)
            if watch is self._watch:
                self._progress_pending = False

    def unwatch(self, w: Watcher) -> None:
        self.watchers.discard(w)
        w.close()

    # -- reads served from memory --
    def list(self, namespace: str, labels: LabelSelector, fields: FieldSelector) -> tuple[list[Entry], int]:
        """The matching objects and the revision they reflect (applied_rv: see the module docstring)."""
        items = [e for e in self.store.values()
                 if (not namespace or e.namespace == namespace)
                 and labels.matches(e.labels) and fields.matches(e.fields)]
        return items, self.applied_rv

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
