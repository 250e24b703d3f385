"""Leader election's pure logic on virtual time: a fake Lease store with compare-and-swap
(standing in for the API server and etcd), candidates cut off from it, and an event loop
whose clock jumps to the next timer instead of waiting, so minutes of leases, deadlines and
retries run in milliseconds and every figure below is exact, not measured on a busy host.

What must hold (client-go's guarantees): a candidate takes the lease only after
lease_duration of locally observed silence; a leader whose calls hang stops acting within
renew_deadline of its last renewal; no two candidates are ever acting at once; skewed wall
clocks change nothing.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import random
import selectors

import pytest

from kubelab.api.v1 import objects_pb2 as v1
from kubelab.cli.main import main as kubelab_main
from kubelab.client.leaderelection import InvalidLeaderElectionConfig, LeaderElector
from kubelab.errors import AlreadyExists, Conflict, NotFound

LEASE, RENEW, RETRY = 15.0, 10.0, 2.0
EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


# -- virtual time --
class _NoIOSelector(selectors.BaseSelector):
    """No real I/O happens in these tests: `select(t)` just moves the loop's clock by t."""

    def __init__(self):
        self.loop = None
        self._map: dict = {}

    def register(self, fileobj, events, data=None):
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self._map[fd] = key
        return key

    def unregister(self, fileobj):
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        return self._map.pop(fd)

    def select(self, timeout=None):
        if timeout is None:
            raise RuntimeError("virtual loop: nothing scheduled and nothing to wait for (deadlock)")
        self.loop.now += timeout
        return []

    def get_map(self):
        return self._map


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self):
        sel = _NoIOSelector()
        self.now = 0.0
        super().__init__(selector=sel)
        sel.loop = self

    def time(self) -> float:
        return self.now


def run_virtual(coro_fn):
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(coro_fn(loop))
    finally:  # a failed scenario leaves candidates running: stop them before closing
        left = asyncio.all_tasks(loop)
        for t in left:
            t.cancel()
        if left:
            loop.run_until_complete(asyncio.wait(left))
        loop.close()


# -- a Lease store with resourceVersion compare-and-swap, and each candidate's link to it --
class LeaseStore:
    def __init__(self, loop):
        self.loop = loop
        self.obj: v1.Lease | None = None
        self.rv = 0
        self.writes: list[tuple[float, str]] = []  # (time, holder) of every landed write

    def get(self, name):
        if self.obj is None:
            raise NotFound(f'leases "{name}" not found')
        out = v1.Lease()
        out.CopyFrom(self.obj)
        return out

    def create(self, lease):
        if self.obj is not None:
            raise AlreadyExists(f'leases "{lease.metadata.name}" already exists')
        return self._put(lease)

    def update(self, lease):
        if self.obj is None:
            raise NotFound(f'leases "{lease.metadata.name}" not found')
        if lease.metadata.resourceVersion != self.obj.metadata.resourceVersion:
            raise Conflict(f'leases "{lease.metadata.name}": the object has been modified')
        return self._put(lease)

    def _put(self, lease):
        self.rv += 1
        self.obj = v1.Lease()
        self.obj.CopyFrom(lease)
        self.obj.metadata.resourceVersion = str(self.rv)
        self.writes.append((self.loop.time(), lease.spec.holderIdentity))
        return self.get(lease.metadata.name)


class Link:
    """One candidate's network path to the store. Requests and responses take a random
    latency; while `cut`, they are held (a partition: TCP keeps them until it heals). The
    store applies a request even if the caller gave up on it, as a server would."""

    def __init__(self, store: LeaseStore, rng: random.Random, max_latency: float = 0.05):
        self.store, self.rng, self.max_latency = store, rng, max_latency
        self.healed = asyncio.Event()
        self.healed.set()
        self.reads: list[tuple[float, bytes]] = []  # (time, spec) of every GET answered

    @property
    def cut(self) -> bool:
        return not self.healed.is_set()

    def cut_off(self):
        self.healed.clear()

    def heal(self):
        self.healed.set()

    async def _hop(self):
        await asyncio.sleep(self.rng.uniform(0, self.max_latency))
        await self.healed.wait()

    async def _serve(self, op, arg):
        await self._hop()
        try:
            result, error = getattr(self.store, op)(arg), None
        except (NotFound, AlreadyExists, Conflict) as e:
            result, error = None, e
        await self._hop()
        return result, error

    async def _call(self, op, arg):
        server = asyncio.ensure_future(self._serve(op, arg))
        result, error = await asyncio.shield(server)  # cancelling the caller does not unsend
        if error is not None:
            raise error
        if op == "get":
            self.reads.append((self.store.loop.time(), result.spec.SerializeToString(deterministic=True)))
        return result

    async def get(self, name):
        return await self._call("get", name)

    async def create(self, lease):
        return await self._call("create", lease)

    async def update(self, lease):
        return await self._call("update", lease)

    def last_change_seen(self, before: float) -> float:
        """When this candidate last read a lease record different from the one before it."""
        last, prev = 0.0, None
        for t, spec in self.reads:
            if t > before:
                break
            if spec != prev:
                last, prev = t, spec
        return last


class Candidate:
    """A LeaderElector plus a record of when its `lead()` was actually running."""

    def __init__(self, loop, store, identity, rng, *, skew: float = 0.0, max_latency: float = 0.05):
        self.link = Link(store, rng, max_latency)
        self.identity = identity
        self.terms: list[list[float]] = []  # [start, end] of each lead() run
        self.elector = LeaderElector(
            self.link, "kube-scheduler", identity, lease_duration=LEASE, renew_deadline=RENEW,
            retry_period=RETRY, monotonic=loop.time,
            clock=lambda: EPOCH + dt.timedelta(seconds=loop.time() + skew))
        self.loop = loop
        self.task: asyncio.Task | None = None

    async def lead(self):
        term = [self.loop.time(), None]
        self.terms.append(term)
        try:
            await asyncio.Event().wait()  # act until cancelled
        finally:
            term[1] = self.loop.time()

    def start(self):
        self.task = asyncio.ensure_future(self.elector.run(self.lead))

    async def stop(self):
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    @property
    def leading(self) -> bool:
        return bool(self.terms) and self.terms[-1][1] is None


async def until(loop, pred, limit: float, what: str):
    end = loop.time() + limit
    while not pred():
        if loop.time() > end:
            raise AssertionError(f"virtual time ran out waiting for {what}")
        await asyncio.sleep(0.01)


def intervals(c: Candidate, now: float) -> list[tuple[float, float]]:
    return [(s, e if e is not None else now) for s, e in c.terms]


def assert_never_both(cands, now: float) -> None:
    spans = sorted((s, e, c.identity) for c in cands for s, e in intervals(c, now))
    for (s1, e1, a), (s2, e2, b) in zip(spans, spans[1:]):
        assert e1 <= s2, f"{a} acted until {e1:.3f} but {b} started at {s2:.3f}"


# -- the tests --
def test_failover_waits_for_lease_duration_of_observed_silence():
    async def scenario(loop):
        rng = random.Random(1)
        store = LeaseStore(loop)
        a = Candidate(loop, store, "a", rng)
        b = Candidate(loop, store, "b", rng)
        a.start()
        await until(loop, lambda: a.leading, 5, "a leading")
        b.start()
        await asyncio.sleep(60)  # b campaigns for a while and must stay out
        assert a.leading and not b.terms
        a.link.cut_off()
        cut = loop.time()
        await until(loop, lambda: b.leading, LEASE + RENEW + 4 * RETRY, "b leading")
        b_start = b.terms[0][0]
        a_stop = a.terms[0][1]
        silence = b_start - b.link.last_change_seen(before=b_start)
        # b took over only after a full lease of unchanged record as b itself saw it
        assert silence >= LEASE, silence
        # a stopped within renew_deadline of the start of its last landed renewal
        last_a_write = max(t for t, who in store.writes if who == "a")
        assert a_stop is not None and a_stop <= last_a_write + RENEW, (a_stop, last_a_write)
        assert a_stop <= b_start
        assert store.obj.spec.holderIdentity == "b" and store.obj.spec.leaseTransitions == 1
        # a rejoins after the partition heals, as a follower
        a.link.heal()
        await asyncio.sleep(60)
        assert len(a.terms) == 1 and b.leading
        assert_never_both([a, b], loop.time())
        await a.stop()
        await b.stop()
        return cut, b_start, a_stop

    cut, b_start, a_stop = run_virtual(scenario)
    assert a_stop < b_start and cut < a_stop


def test_leader_with_hung_calls_stops_within_renew_deadline():
    async def scenario(loop):
        store = LeaseStore(loop)
        a = Candidate(loop, store, "a", random.Random(2))
        a.start()
        await until(loop, lambda: a.leading, 5, "a leading")
        await asyncio.sleep(20)
        a.link.cut_off()  # every call from now on hangs
        await asyncio.sleep(RENEW + RETRY)  # the longest a renewal started before the cut can take
        last_write = max(t for t, _ in store.writes)
        assert not a.elector.is_leader
        assert a.terms[0][1] is not None and a.terms[0][1] <= last_write + RENEW, (a.terms, last_write)
        await a.stop()

    run_virtual(scenario)


def test_is_leader_false_past_the_deadline_even_before_the_renew_task_runs():
    async def scenario(loop):
        store = LeaseStore(loop)
        a = Candidate(loop, store, "a", random.Random(3))
        a.start()
        await until(loop, lambda: a.leading, 5, "a leading")
        assert a.elector.is_leader
        a.elector._renewed_at -= RENEW  # as if the loop had been starved since the last renewal
        assert not a.elector.is_leader
        await a.stop()

    run_virtual(scenario)


@pytest.mark.parametrize("skew", [-3600.0, 3600.0])
def test_skewed_holder_wall_clock_changes_nothing(skew):
    """The holder writes renewTime from a clock an hour off: the other candidate neither
    takes a live lease (renewTime looks an hour old) nor waits longer for a dead one."""
    async def scenario(loop):
        store = LeaseStore(loop)
        a = Candidate(loop, store, "a", random.Random(4), skew=skew)
        b = Candidate(loop, store, "b", random.Random(5))
        a.start()
        await until(loop, lambda: a.leading, 5, "a leading")
        b.start()
        await asyncio.sleep(120)
        assert a.leading and not b.terms, "b took a lease that a keeps renewing"
        a.link.cut_off()
        cut = loop.time()
        await until(loop, lambda: b.leading, LEASE + RENEW + 4 * RETRY, "b leading")
        assert b.terms[0][0] - b.link.last_change_seen(before=b.terms[0][0]) >= LEASE
        assert b.terms[0][0] <= cut + LEASE + 2 * RETRY + 1  # not an hour later
        assert_never_both([a, b], loop.time())
        await a.stop()
        await b.stop()

    run_virtual(scenario)


@pytest.mark.parametrize("seed", range(8))
def test_never_two_leaders_under_random_partitions(seed):
    """Three candidates, random partitions (some longer than the lease, some shorter) and
    latencies, for an hour of virtual time: acting intervals never overlap, and someone
    leads most of the time."""
    async def scenario(loop):
        rng = random.Random(seed)
        store = LeaseStore(loop)
        cands = [Candidate(loop, store, f"c{i}", rng, skew=rng.uniform(-600, 600), max_latency=rng.uniform(0, 1))
                 for i in range(3)]
        for c in cands:
            c.start()
        end = loop.time() + 3600
        while loop.time() < end:
            await asyncio.sleep(rng.uniform(1, 40))
            c = rng.choice(cands)
            if c.link.cut:
                c.link.heal()
            else:
                c.link.cut_off()
            assert_never_both(cands, loop.time())
        for c in cands:
            c.link.heal()
        await asyncio.sleep(LEASE + RENEW)
        now = loop.time()
        assert_never_both(cands, now)
        led = sum(e - s for c in cands for s, e in intervals(c, now))
        transitions = store.obj.spec.leaseTransitions
        for c in cands:
            await c.stop()
        return led, transitions

    led, transitions = run_virtual(scenario)
    assert led > 0 and transitions >= 1


def test_lease_deleted_under_a_live_leader_is_not_taken_at_once():
    async def scenario(loop):
        store = LeaseStore(loop)
        a = Candidate(loop, store, "a", random.Random(8))
        b = Candidate(loop, store, "b", random.Random(9))
        a.start()
        await until(loop, lambda: a.leading, 5, "a leading")
        b.start()
        await asyncio.sleep(30)
        a.link.cut_off()  # a cannot recreate it, and keeps acting until its deadline
        store.obj = None
        deleted = loop.time()
        await until(loop, lambda: b.leading, LEASE + RENEW + 4 * RETRY, "b leading")
        assert b.terms[0][0] - b.link.last_change_seen(before=deleted) >= LEASE
        assert_never_both([a, b], loop.time())
        await a.stop()
        await b.stop()

    run_virtual(scenario)


def test_release_on_shutdown_lets_the_next_candidate_in_at_once():
    async def scenario(loop):
        store = LeaseStore(loop)
        a = Candidate(loop, store, "a", random.Random(6))
        b = Candidate(loop, store, "b", random.Random(7))
        a.start()
        await until(loop, lambda: a.leading, 5, "a leading")
        b.start()
        await asyncio.sleep(30)
        stopped = loop.time()
        await a.stop()
        assert store.obj.spec.holderIdentity == ""
        await until(loop, lambda: b.leading, 2 * RETRY + 1, "b leading right after a released")
        assert b.terms[0][0] - stopped < LEASE
        await b.stop()

    run_virtual(scenario)


@pytest.mark.parametrize("lease,renew,retry,field", [
    (10, 10, 2, "renew_deadline"), (5, 10, 2, "renew_deadline"), (15, 10, 10, "retry_period"),
    (15, 10, 0, "retry_period"), (-1, 10, 2, "lease_duration")])
def test_durations_that_cannot_exclude_are_refused(lease, renew, retry, field):
    with pytest.raises(InvalidLeaderElectionConfig) as e:
        LeaderElector(object(), "x", "me", lease_duration=lease, renew_deadline=renew, retry_period=retry)
    assert e.value.field == field and field in str(e.value)


def test_cli_names_the_bad_flag(capsys):
    code = kubelab_main(["scheduler", "--lease-duration", "5", "--renew-deadline", "10"])
    err = capsys.readouterr().err
    assert code == 1
    assert "invalid --renew-deadline: must be less than --lease-duration" in err, err
