"""The load a fault test puts on the API server while it breaks things, as clients see it:
pod writes (create, relabel, delete) that retry the way a client does while a server is
away and record what each answer said (Load), and leases renewed back to back (LeaseChurn)
that move etcd's revision past the pods watch cache's."""
from __future__ import annotations

import asyncio
import collections
import random
import time
from dataclasses import dataclass, field

from kubelab.api.v1 import objects_pb2 as v1
from kubelab.client.client import Client, ResourceClient
from kubelab.errors import AlreadyExists, Conflict, NotFound, ServiceUnavailable, Timeout
from tests.faults.deadline import DEADLINE


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
