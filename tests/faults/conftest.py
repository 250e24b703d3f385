"""Fault-suite fixtures and checkers: real etcd and API server processes that a test can kill
(-9) and start again, a loopback TCP relay that cuts one component off from another, a load of
pod writes that retries the way a client does, watch recorders that resume and relist the way
an informer does, and etcd's own history to judge what every watcher saw against.

The judge is always etcd, read directly (never through the API server under test): its
history of /registry/pods/ from a watcher's start revision, and its state at a revision.
"""
from __future__ import annotations

import asyncio
import collections
import os
import random
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kubelab import pki
from kubelab.api.v1 import objects_pb2 as v1
from kubelab.client.client import Client, ResourceClient
from kubelab.errors import AlreadyExists, ApiError, Conflict, Gone, NotFound, ServiceUnavailable, Timeout
from kubelab.etcd.client import EtcdClient
from kubelab.etcd.server import EtcdServer
from kubelab.etcd.txn import prefix_end
from tests.integration.conftest import KUBELAB, ROOT, admin_config, free_port

PODS = b"/registry/pods/"
# The key just past the pods prefix ("/" + 1 == "0"): a raw etcd watch on [PODS, SENTINEL]
# sees it, the API server's watch of the prefix does not, and no resource is named "pods0".
SENTINEL = b"/registry/pods0"
DEADLINE = 90.0  # seconds any single wait of the suite may take before the test fails


# -- processes --

class FaultEtcd(EtcdServer):
    """A real etcd that a test can SIGKILL and start again on the same data dir and ports."""

    def kill9(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, "etcd is not running"
        os.kill(self.proc.pid, signal.SIGKILL)  # the launcher exec'd etcd: this pid is etcd's
        self.proc.wait()

    async def restart(self) -> None:
        await self.start()  # start() spawns again when the process is gone


@pytest.fixture
async def fault_etcd(tmp_path):
    # fsync on: a SIGKILL must not cost acknowledged writes, and the suite checks that
    srv = FaultEtcd(tmp_path / "etcd", log_path=tmp_path / "etcd.log", heartbeat_ms=10)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


class ApiServerProcess:
    """`kubelab apiserver` as a child process on a fixed port, with an admin kubeconfig."""

    def __init__(self, etcd_endpoint: str, d: Path, *args: str):
        self.etcd_endpoint, self.dir, self.args = etcd_endpoint, d, args
        self.pki_dir = d / "pki"
        pki.ensure_control_plane_pki(self.pki_dir)
        self.address = f"127.0.0.1:{free_port()}"
        self.config = admin_config(self.pki_dir, self.address, d / "admin.conf")
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    async def start(self) -> None:
        self.starts += 1
        log = open(self.dir / f"apiserver.{self.starts}.log", "wb")
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            KUBELAB + ["apiserver", "--etcd-servers", self.etcd_endpoint, "--listen", self.address,
                       "--pki-dir", str(self.pki_dir), *self.args],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        async with Client.connect(str(self.config), timeout=2.0) as c:
            end = time.monotonic() + DEADLINE
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"apiserver exited: {self.log_tail()}")
                try:
                    await c.namespaces().get("default")
                    return
                except (ServiceUnavailable, Timeout, NotFound):
                    if time.monotonic() > end:
                        raise RuntimeError(f"apiserver not serving: {self.log_tail()}") from None
                    await asyncio.sleep(0.1)

    def kill9(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def log_tail(self) -> str:
        p = self.dir / f"apiserver.{self.starts}.log"
        return p.read_text(errors="replace")[-3000:] if p.exists() else ""

    def client(self) -> Client:
        return Client.connect(str(self.config))


@pytest.fixture
async def apiserver_process(tmp_path):
    """Factory: `await apiserver_process(etcd_endpoint, *flags)` starts `kubelab apiserver`;
    every one started is stopped at teardown, even after a failure."""
    started: list[ApiServerProcess] = []

    async def make(etcd_endpoint: str, *args: str) -> ApiServerProcess:
        d = tmp_path / f"apiserver{len(started)}"
        d.mkdir()
        p = ApiServerProcess(etcd_endpoint, d, *args)
        started.append(p)
        await p.start()
        return p

    try:
        yield make
    finally:
        for p in started:
            p.stop()


class TcpRelay:
    """A loopback TCP relay to `target`: cut() drops every connection and refuses new ones
    (a component cut off from its peer), heal() accepts again on the same port."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = free_port()
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task] = set()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def heal(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for w in list(self._conns):
            w.transport.abort()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            w.transport.abort()
            return
        if self._server is None:  # cut while this connection was being set up
            w.transport.abort()
            uw.transport.abort()
            return
        self._conns |= {w, uw}
        pumps = [asyncio.create_task(self._pump(r, uw)), asyncio.create_task(self._pump(ur, w))]
        self._tasks.update(pumps)
        try:
            await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            self._tasks.difference_update(pumps)
            for x in (w, uw):
                self._conns.discard(x)
                x.transport.abort()

    @staticmethod
    async def _pump(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        finally:
            w.transport.abort()


@pytest.fixture
async def tcp_relay():
    """Factory: `relay = await tcp_relay(port)` relays 127.0.0.1:relay.port to port."""
    relays: list[TcpRelay] = []

    async def make(target_port: int) -> TcpRelay:
        r = TcpRelay(target_port)
        relays.append(r)
        await r.heal()
        return r

    try:
        yield make
    finally:
        for r in relays:
            await r.cut()


# -- load --

def pod(ns: str, name: str) -> v1.Pod:
    p = v1.Pod()
    p.metadata.name, p.metadata.namespace = name, ns
    p.metadata.labels["fault"] = "load"
    p.spec.containers.add(name="c", image="busybox")
    return p


@dataclass
class Load:
    """What a load of writes did, as its clients saw it."""
    created: dict[str, str] = field(default_factory=dict)  # name -> uid the create answered ("" if unknown)
    deleted: set[str] = field(default_factory=set)
    errors: collections.Counter = field(default_factory=collections.Counter)  # error class -> count
    done: int = 0  # pods whose whole script finished
    last_rv: int = 0  # newest resourceVersion a write answered

    def answered(self, obj) -> None:
        if obj is not None:
            self.last_rv = max(self.last_rv, int(obj.metadata.resourceVersion or 0))


async def retrying(call, load: Load, *, ok_after_error: tuple = ()):
    """Call until it succeeds, as a client does while a server is away: ServiceUnavailable and
    Timeout are retried; an error in ok_after_error (AlreadyExists for a create, NotFound for a
    delete) counts as done only after a failed attempt, which may have been applied."""
    failed = False
    end = time.monotonic() + DEADLINE
    while True:
        try:
            return await call()
        except (ServiceUnavailable, Timeout) as e:
            load.errors[type(e).__name__] += 1
            failed = True
            if time.monotonic() > end:
                raise AssertionError(f"still failing after {DEADLINE}s: {e!r}") from None
            await asyncio.sleep(0.05 + random.random() * 0.1)  # retry pacing, not synchronisation
        except ok_after_error as e:
            if not failed:
                raise
            load.errors[f"{type(e).__name__} after a failed attempt"] += 1
            return None


async def pod_script(rc: ResourceClient, ns: str, i: int, load: Load) -> None:
    """p<i>: create; every third also relabelled; every third of the rest deleted."""
    name = f"p{i}"
    obj = await retrying(lambda: rc.create(pod(ns, name)), load, ok_after_error=(AlreadyExists,))
    load.created[name] = obj.metadata.uid if obj is not None else ""
    load.answered(obj)
    if i % 3 == 0:
        async def relabel():
            cur = await rc.get(name)
            if cur.metadata.labels.get("step") == "2":
                return cur  # an attempt whose answer was lost had been applied
            cur.metadata.labels["step"] = "2"
            return await rc.update(cur)
        load.answered(await retrying(relabel, load))
    elif i % 3 == 1:
        await retrying(lambda: rc.delete(name), load, ok_after_error=(NotFound,))
        load.deleted.add(name)
    load.done += 1


async def run_load(rc: ResourceClient, ns: str, names: range, load: Load, *, concurrency: int = 8) -> None:
    sem = asyncio.Semaphore(concurrency)

    async def one(i):
        async with sem:
            await pod_script(rc, ns, i, load)
    await asyncio.gather(*(one(i) for i in names))


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


class LeaseChurn:
    """Leases renewed back to back in one namespace, as kubelets and leader electors do:
    writes to another resource move etcd's revision past the pods watch cache's, so pod
    watches and lists from a fresh revision make the cache ask etcd for progress. Each lease
    is renewed at most `updates` times; stop() ends it sooner."""

    def __init__(self, client: Client, ns: str, *, leases: int = 4, updates: int = 3000):
        self.rc, self.ns, self.updates = client.leases(ns), ns, updates
        self.renewals = 0
        self.last_rv = 0  # newest resourceVersion a renewal answered
        self.errors: collections.Counter = collections.Counter()
        self.tasks = [asyncio.create_task(self._renew(f"churn{i}"), name=f"lease-churn-{i}") for i in range(leases)]

    async def _renew(self, name: str) -> None:
        lease = v1.Lease()
        lease.metadata.name, lease.metadata.namespace = name, self.ns
        cur = None
        for n in range(self.updates):
            try:
                if cur is None:
                    try:
                        cur = await self.rc.create(lease)
                    except AlreadyExists:  # an earlier attempt was applied
                        cur = await self.rc.get(name)
                cur.spec.holderIdentity = str(n)
                cur = await self.rc.update(cur)
                self.renewals += 1
                self.last_rv = max(self.last_rv, int(cur.metadata.resourceVersion))
            except (ServiceUnavailable, Timeout, Conflict) as e:  # away, or our own lost answer
                self.errors[type(e).__name__] += 1
                cur = None if isinstance(e, Conflict) else cur
                await asyncio.sleep(0.1)  # retry pacing while the server is away

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@pytest.fixture
async def lease_churn():
    """Factory: `churn = lease_churn(client, ns)`; every churn started is stopped at teardown."""
    made: list[LeaseChurn] = []

    def make(client: Client, ns: str, **kw) -> LeaseChurn:
        made.append(LeaseChurn(client, ns, **kw))
        return made[-1]

    try:
        yield make
    finally:
        for c in made:
            await c.stop()


async def wait_until(pred, what: str, timeout: float = DEADLINE) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


# -- watchers --

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
    relist on Gone. Records everything it was told, for the checkers below.

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
                        relist = True
                        break
                if relist:
                    self.restarts += 1
                else:
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


# -- etcd as the judge --

@dataclass(frozen=True)
class Change:
    key: str  # "ns/name"
    type: str  # ADDED, MODIFIED, DELETED, as a watch reports them
    rv: int


async def pod_history(endpoint: str, after: int) -> tuple[list[Change], int]:
    """Every change to /registry/pods/ after revision `after`, from a raw etcd watch (so before
    any compaction of it), up to now; and the revision now. A sentinel put just past the prefix
    marks "now" in the watch's stream, so no progress notification has to be trusted."""
    out: list[Change] = []
    async with EtcdClient(endpoint) as c:
        now = await c.put(SENTINEL, b"now")
        async with asyncio.timeout(DEADLINE):
            async with c.watch(PODS, range_end=SENTINEL + b"\x00", start_revision=after + 1) as w:
                async for batch in w:
                    for ev in batch.events:
                        if ev.kv.key == SENTINEL:
                            if ev.kv.mod_revision >= now:
                                return out, now
                            continue
                        etype = ("DELETED" if ev.type == "DELETE" else
                                 "ADDED" if ev.kv.create_revision == ev.kv.mod_revision else "MODIFIED")
                        out.append(Change(ev.kv.key[len(PODS):].decode(), etype, ev.kv.mod_revision))
    raise AssertionError("etcd's watch ended before the sentinel")


async def pod_state(endpoint: str, revision: int = 0, ns: str = "") -> dict[str, int]:
    """key -> mod_revision of every pod (in ns) in etcd at revision (0: now)."""
    start = PODS + (f"{ns}/".encode() if ns else b"")
    out: dict[str, int] = {}
    async with EtcdClient(endpoint) as c:
        key, end, rev = start, prefix_end(start), revision
        while True:
            r = await c.range(key, range_end=end, limit=500, revision=rev)
            rev = rev or r.revision
            out.update({kv.key[len(PODS):].decode(): kv.mod_revision for kv in r.kvs})
            if not r.more:
                return out
            key = r.kvs[-1].key + b"\x00"


@dataclass
class Verdict:
    """How one watcher's events compare with etcd's history."""
    checked: int = 0  # changes in etcd's history the watcher had to see
    lost: int = 0  # of those, not seen
    duplicated: int = 0  # seen more than once
    unexpected: int = 0  # seen, but no such change in etcd (wrong type, rv or object)
    out_of_order: int = 0  # objects whose sequence was not in etcd's order
    problems: list[str] = field(default_factory=list)

    def add(self, other: "Verdict") -> None:
        self.checked += other.checked
        self.lost += other.lost
        self.duplicated += other.duplicated
        self.unexpected += other.unexpected
        self.out_of_order += other.out_of_order
        self.problems += other.problems

    @property
    def ok(self) -> bool:
        return not self.problems  # every shortfall above also adds a line here


def compare(seen: list[tuple[str, str, int]], history: list[Change], ns: str, after: int, upto: int,
            who: str) -> Verdict:
    """The watcher saw exactly etcd's changes in ns in (after, upto], per object in etcd's order."""
    v = Verdict()
    want: dict[str, list[tuple[str, int]]] = collections.defaultdict(list)
    for ch in history:
        if after < ch.rv <= upto and ch.key.startswith(ns + "/"):
            want[ch.key].append((ch.type, ch.rv))
            v.checked += 1
    got: dict[str, list[tuple[str, int]]] = collections.defaultdict(list)
    for key, etype, rv in seen:
        got[key].append((etype, rv))
    for key in sorted(set(want) | set(got)):
        w, g = want.get(key, []), got.get(key, [])
        counts = collections.Counter(g)
        wanted = set(w)
        lost = [x for x in w if x not in counts]
        dup = sum(n - 1 for n in counts.values() if n > 1)
        extra = [x for x in counts if x not in wanted]
        v.lost += len(lost)
        v.duplicated += dup
        v.unexpected += len(extra)
        dedup = list(dict.fromkeys(g))
        if not lost and not extra and dedup != w:
            v.out_of_order += 1
        if lost or dup or extra or (dedup != w and not lost and not extra):
            v.problems.append(f"{who} {key}: etcd {w} watcher {g}")
    return v


async def judge(recorder: WatchRecorder, history: list[Change], endpoint: str, ns: str, upto: int,
                listings: dict[int, dict[str, int]] | None = None) -> Verdict:
    """Every segment of a recorder against etcd: its list equals etcd's state at the list's
    revision, its events equal etcd's history from there to the last revision it was told
    of (the final segment: up to `upto`, which it must have reached). `listings` may hold
    etcd's state at a revision read earlier (before a compaction made it unreadable)."""
    v = Verdict()
    for i, seg in enumerate(recorder.segments):
        final = i == len(recorder.segments) - 1
        state = (listings or {}).get(seg.start_rv)
        if state is None:
            state = await pod_state(endpoint, seg.start_rv, ns)
        if seg.listed != state:
            v.problems.append(f"{recorder.name} list at {seg.start_rv}: {len(seg.listed)} objects, etcd "
                              f"{len(state)}; differ on {sorted(set(seg.listed.items()) ^ set(state.items()))[:5]}")
            v.unexpected += len(set(seg.listed.items()) ^ set(state.items()))
        end = upto if final else seg.last_rv
        if final and seg.last_rv < upto:
            v.problems.append(f"{recorder.name} reached only revision {seg.last_rv} of {upto}")
        v.add(compare(seg.events, history, ns, seg.start_rv, end, recorder.name))
    return v
