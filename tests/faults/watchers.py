"""Readers that record what the API server told them during a fault: WatchRecorder, a pod
watch that lists, watches, resumes and relists on Gone the way an informer does, kept as
segments (one per list + watch run); Recorders, a set of them running as tasks; and
ListChecker, lists from the watch cache and at a fresh revision, each answer kept with the
revision it names and compared with etcd's state there (judge.py reads etcd)."""
from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field

from kubelab.client.client import Client, ResourceClient
from kubelab.errors import ApiError, Gone, ServiceUnavailable, Timeout
from tests.faults.deadline import wait_until
from tests.faults.judge import pod_state


@dataclass
class Segment:
    """One list + watch run of a recorder, until Gone ends it (or the test does)."""
    start_rv: int
    listed: dict[str, int]  # key -> resourceVersion, as the list answered
    events: list[tuple[str, str, int]] = field(default_factory=list)  # (key, type, rv) in order received
    last_rv: int = 0  # newest revision the watcher was told it reflects (events and bookmarks)


class WatchRecorder:
    """A client watch of pods in one namespace that behaves like an informer: list, watch from
    the list's revision, rewatch from the last revision seen when the stream ends or breaks,
    relist on Gone. Records everything it was told, for judge.py to check.

    list_rv "" lists from etcd; "0" takes the watch cache's list, as Kubernetes' reflectors
    do. restart_every > 0 starts over with a new list after that many events (a client that
    comes and goes), so lists and watch starts happen all through the load."""

    def __init__(self, rc: ResourceClient, name: str, *, list_rv: str = "", restart_every: int = 0):
        self.rc, self.name, self.list_rv, self.restart_every = rc, name, list_rv, restart_every
        self.segments: list[Segment] = []
        self.errors: collections.Counter = collections.Counter()
        self.gone = 0
        self.gone_at: list[float] = []  # time.monotonic() of each Gone
        self.rewatches = 0
        self.restarts = 0

    @property
    def last_rv(self) -> int:
        return self.segments[-1].last_rv if self.segments else 0

    async def run(self) -> None:
        relist = True
        while True:
            try:
                if relist:
                    lst = await self.rc.list(resource_version=self.list_rv)
                    rv = int(lst.resource_version)
                    self.segments.append(Segment(rv, {f"{p.metadata.namespace}/{p.metadata.name}":
                                                      int(p.metadata.resourceVersion) for p in lst.items},
                                                 last_rv=rv))
                    relist = False
                seg = self.segments[-1]
                async for ev in self.rc.watch(resource_version=str(seg.last_rv)):
                    m = ev.object.metadata
                    rv = int(m.resourceVersion or 0)
                    if ev.type != "BOOKMARK":
                        seg.events.append((f"{m.namespace}/{m.name}", ev.type, rv))
                    seg.last_rv = max(seg.last_rv, rv)
                    if self.restart_every and len(seg.events) >= self.restart_every:
                        # counted before the stream is closed: closing it may itself raise
                        # (ServiceUnavailable while the server is away), and the relist
                        # that follows must still have its cause on record
                        relist = True
                        self.restarts += 1
                        break
                if not relist:
                    self.rewatches += 1  # the server closed the stream: resume from last_rv
            except Gone:
                self.gone += 1
                self.gone_at.append(time.monotonic())
                relist = True
            except (ServiceUnavailable, Timeout) as e:
                self.errors[type(e).__name__] += 1
                await asyncio.sleep(0.1)  # retry pacing while the server is away
            except ApiError as e:
                self.errors[type(e).__name__] += 1  # unexpected: the tests assert on these
                await asyncio.sleep(0.1)

    def state(self) -> dict[str, int]:
        """The objects this watcher believes exist now (key -> rv): its last list plus events."""
        seg = self.segments[-1]
        cur = dict(seg.listed)
        for key, etype, rv in seg.events:
            if etype == "DELETED":
                cur.pop(key, None)
            else:
                cur[key] = rv
        return cur


class Recorders:
    """WatchRecorders running as tasks, each on its own client: half list from etcd, half
    from the watch cache; `restarting` more of them start over every 25 events. stop()
    cancels and awaits them."""

    def __init__(self, clients: list[Client], ns: str, *, restarting: int = 0):
        steady = len(clients) - restarting
        self.recorders = [WatchRecorder(c.pods(ns), f"w{i}", list_rv="0" if i % 2 else "",
                                        restart_every=25 if i >= steady else 0)
                          for i, c in enumerate(clients)]
        self.tasks = [asyncio.create_task(r.run(), name=f"recorder-{r.name}") for r in self.recorders]

    async def started(self) -> None:
        # A watch from the list's revision replays whatever happened since, so the list is
        # the point from which a recorder is accountable.
        await wait_until(lambda: all(r.segments for r in self.recorders), "every watcher's first list")

    async def reached(self, rv: int) -> None:
        await wait_until(lambda: all(r.last_rv >= rv for r in self.recorders),
                         f"every watcher to reach revision {rv} (at {[r.last_rv for r in self.recorders]})")

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


class ListChecker:
    """Lists pods while the load runs, as clients reading their own writes do: in turn from
    the watch cache ("0") and at the newest revision `newest()` knows of (the cache waits
    until it reflects that; a lease's revision makes it ask etcd for progress). Each answer
    is kept with the revision it names, to be compared with etcd's state at that revision.
    At most `lists` lists; stop() ends it sooner."""

    def __init__(self, client: Client, ns: str, newest, *, lists: int = 2000):
        self.rc, self.newest, self.lists = client.pods(ns), newest, lists
        self.answers: list[tuple[str, int, dict[str, int]]] = []  # (asked, rv answered, key -> rv)
        self.errors: collections.Counter = collections.Counter()
        self.task = asyncio.create_task(self._run(), name="list-checker")

    async def _run(self) -> None:
        for i in range(self.lists):
            asked = "0" if i % 2 else str(self.newest() or "")
            try:
                lst = await self.rc.list(resource_version=asked)
            except (ServiceUnavailable, Timeout) as e:
                self.errors[type(e).__name__] += 1
                await asyncio.sleep(0.1)  # retry pacing while the server is away
                continue
            self.answers.append((asked, int(lst.resource_version), {
                f"{p.metadata.namespace}/{p.metadata.name}": int(p.metadata.resourceVersion) for p in lst.items}))

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    async def judge(self, endpoint: str, ns: str) -> list[str]:
        """Answers that differ from etcd's state at the revision they name."""
        bad, states = [], {}
        for asked, rv, items in self.answers:
            if rv not in states:
                states[rv] = await pod_state(endpoint, rv, ns)
            state = states[rv]
            if items != state:
                diff = sorted(set(items.items()) ^ set(state.items()))
                bad.append(f"list (resourceVersion {asked!r}) answered revision {rv}: differs from etcd on {diff[:4]}")
        return bad
