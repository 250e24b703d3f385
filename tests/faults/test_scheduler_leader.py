"""Fault: the scheduler leader cut off from the API server (issue 6, defect 7).

Real pieces: etcd, `kubelab apiserver`, hollow nodes and two `kubelab scheduler` processes.
Scheduler A reaches the API server only through a loopback TCP proxy owned by this test;
blackholing it swallows every byte both ways, so A's calls hang rather than fail, as in a
network partition. What must hold:

- A stops acting (its log: "stopped leading") before B starts ("started leading"): the two
  leading intervals, read from each process's log on the host's shared monotonic clock,
  never overlap;
- B takes over only after the lease, and the Lease shows exactly one transition, to B;
- every pod is bound by one scheduler: the leader of the moment (each Scheduled event names
  the instance that bound it); after the partition heals A rejoins as a follower.

The figures (time from the cut to A stopping and to B leading, the gap between) are printed.
"""
from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
from pathlib import Path

from kubelab.api.v1 import objects_pb2 as v1
from tests.integration.conftest import KUBELAB, ROOT, admin_config, stop_group, wait_for

LEASE, RENEW, RETRY = 8.0, 4.0, 0.5
A, B = "sched-a", "sched-b"
STARTED = re.compile(r"kube-scheduler: (\S+) started leading \(monotonic ([\d.]+)\)")
STOPPED = re.compile(r"kube-scheduler: (\S+) stopped leading: (.*) \(monotonic ([\d.]+)\)")
WAIT = 90.0  # generous: the machine is shared


class BlackholeProxy:
    """127.0.0.1:port relays to the API server. blackhole(): bytes are read and dropped
    both ways, connections stay open, calls hang. heal(): the connections that went through
    the blackhole are reset (their streams lost bytes), new ones are relayed again."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.holed = False
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def blackhole(self) -> None:
        self.holed = True

    def heal(self) -> None:
        for conn in list(self._conns):
            for w in conn:
                w.transport.abort()
        self.holed = False

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.heal()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self._tasks.add(asyncio.current_task())
        try:
            try:
                ur, uw = await asyncio.open_connection("127.0.0.1", self.target_port)
            except OSError:
                w.transport.abort()
                return
            conn = (w, uw)
            self._conns.add(conn)
            try:
                await asyncio.gather(self._pump(r, uw), self._pump(ur, w), return_exceptions=True)
            finally:
                self._conns.discard(conn)
                for x in conn:
                    x.transport.abort()
        finally:
            self._tasks.discard(asyncio.current_task())

    async def _pump(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                if not self.holed:
                    w.write(data)
                    await w.drain()
        finally:
            w.transport.abort()


class Proc:
    def __init__(self, d: Path, name: str, *args: str):
        self.log_path = d / f"{name}.log"
        with open(self.log_path, "wb") as out:
            self.p = subprocess.Popen(KUBELAB + list(args), env=dict(os.environ, PYTHONPATH=str(ROOT)),
                                      stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terms(self) -> list[tuple[float, float | None, str]]:
        """(start, stop or None, why it stopped) of every leading term in this process's log."""
        out: list[list] = []
        for line in self.log().splitlines():
            if m := STARTED.search(line):
                out.append([float(m.group(2)), None, ""])
            elif (m := STOPPED.search(line)) and out and out[-1][1] is None:
                out[-1][1], out[-1][2] = float(m.group(3)), m.group(2)
        return [tuple(t) for t in out]


def scheduler(d: Path, name: str, config: Path, identity: str) -> Proc:
    return Proc(d, name, "scheduler", "--config", str(config), "--identity", identity,
                "--lease-duration", str(LEASE), "--renew-deadline", str(RENEW), "--retry-period", str(RETRY))


def pod(name: str) -> v1.Pod:
    p = v1.Pod()
    p.metadata.name, p.metadata.namespace = name, "leader"
    c = p.spec.containers.add(name="c", image="busybox")
    c.resources.requests["cpu"] = "10m"
    return p


async def bound_by(c, names: list[str]) -> dict[str, set[str]] | None:
    """name -> the scheduler instances whose Scheduled events name it, once every pod of
    `names` is bound and has its event."""
    pods = {p.metadata.name: p for p in (await c.pods("leader").list()).items}
    if not all(n in pods and pods[n].spec.nodeName for n in names):
        return None
    who: dict[str, set[str]] = {n: set() for n in names}
    for e in (await c.events("leader").list(field_selector="reason=Scheduled")).items:
        if e.involvedObject.name in who:
            who[e.involvedObject.name].add(e.source.host)
    return who if all(who.values()) else None


async def holder(c) -> str:
    return (await c.leases("kube-system").get("kube-scheduler")).spec.holderIdentity


async def ready_nodes(c, n: int) -> bool:
    nodes = (await c.nodes().list()).items
    return len([x for x in nodes if any(k.type == "Ready" and k.status == "True" for k in x.status.conditions)]) >= n


async def test_cut_off_leader_stops_before_the_other_takes_over(fault_etcd, apiserver_process, tmp_path):
    api = await apiserver_process(fault_etcd.endpoint)
    proxy = BlackholeProxy(int(api.address.rsplit(":", 1)[1]))
    await proxy.start()
    via_proxy = admin_config(api.pki_dir, f"127.0.0.1:{proxy.port}", tmp_path / "sched-a.conf")
    procs: list[Proc] = []
    try:
        procs.append(Proc(tmp_path, "hollow", "hollow-nodes", "--config", str(api.config), "--count", "2"))
        async with api.client() as c:
            ns = v1.Namespace()
            ns.metadata.name = "leader"
            await c.namespaces().create(ns)
            await wait_for(lambda: ready_nodes(c, 2), WAIT, what="2 ready hollow nodes")

            a = scheduler(tmp_path, "sched-a", via_proxy, A)
            procs.append(a)
            await wait_for(lambda: _is(holder(c), A), WAIT, what="sched-a holding the lease")
            b = scheduler(tmp_path, "sched-b", api.config, B)
            procs.append(b)
            # b is up and campaigning: it has read the lease and seen a lead
            await wait_for(lambda: f"{B} sees the leader is {A}" in b.log(), WAIT, what="sched-b campaigning")

            first = [f"before-{i}" for i in range(10)]
            await asyncio.gather(*(c.pods("leader").create(pod(n)) for n in first))
            who = await wait_for(lambda: bound_by(c, first), WAIT, what="pods bound before the cut")
            assert all(w == {A} for w in who.values()), who
            assert len(a.terms()) == 1 and a.terms()[0][1] is None and not b.terms(), (a.terms(), b.terms())

            proxy.blackhole()
            cut = time.monotonic()  # CLOCK_MONOTONIC: the same clock the schedulers log
            during = [f"during-{i}" for i in range(10)]
            await asyncio.gather(*(c.pods("leader").create(pod(n)) for n in during))
            await wait_for(lambda: b.terms(), WAIT, what="sched-b leading")
            b_start = b.terms()[0][0]
            # with a renewal allowed to hang for the client's call timeout, a would still be leading here
            a_terms = await wait_for(lambda: a.terms()[0][1] is not None and a.terms(), 30,
                                     what=f"sched-a to stop leading after sched-b started at {b_start:.3f}")
            a_stop = a_terms[0][1]
            assert "renew deadline" in a_terms[0][2], a_terms
            assert cut < a_stop < b_start, f"two leaders: a until {a_stop:.3f}, b from {b_start:.3f}"
            who = await wait_for(lambda: bound_by(c, during), WAIT, what="pods bound by the new leader")
            assert all(w == {B} for w in who.values()), who
            lease = await c.leases("kube-system").get("kube-scheduler")
            assert lease.spec.holderIdentity == B and lease.spec.leaseTransitions == 1, lease.spec

            proxy.heal()  # a comes back: a follower now
            await wait_for(lambda: f"{A} sees the leader is {B}" in a.log(), WAIT, what="sched-a back, following")
            after = [f"after-{i}" for i in range(5)]
            await asyncio.gather(*(c.pods("leader").create(pod(n)) for n in after))
            who = await wait_for(lambda: bound_by(c, after), WAIT, what="pods bound after the heal")
            assert all(w == {B} for w in who.values()), who
            assert len(a.terms()) == 1 and len(b.terms()) == 1 and b.terms()[0][1] is None, (a.terms(), b.terms())
            assert (await c.leases("kube-system").get("kube-scheduler")).spec.leaseTransitions == 1
            print(f"\nscheduler leader cut off: a stopped {a_stop - cut:.2f}s after the cut "
                  f"(renew deadline {RENEW}s), b led from {b_start - cut:.2f}s (lease {LEASE}s); "
                  f"overlap 0, gap {b_start - a_stop:.2f}s; 25 pods, each bound once by the leader of the moment")
    finally:
        for p in procs:
            stop_group(p.p)
        await proxy.stop()


async def _is(aw, value) -> bool:
    return (await aw) == value
