"""Compare-and-swap under concurrency, as a property: however many writers race, with
however many updates each, no update is lost (every Conflict is retried on a fresh read)."""
from __future__ import annotations

import asyncio
import itertools

from hypothesis import HealthCheck, given, settings, strategies as st

from kubelab.api.v1 import objects_pb2 as v1
from kubelab.errors import Conflict

_names = itertools.count()


async def increment(leases, name: str, times: int) -> int:
    conflicts = 0
    for _ in range(times):
        while True:
            lease = await leases.get(name)
            lease.spec.leaseTransitions = lease.spec.leaseTransitions + 1
            await asyncio.sleep(0)  # widen the race window
            try:
                await leases.update(lease)
                break
            except Conflict:
                conflicts += 1
    return conflicts


@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(writers=st.lists(st.integers(1, 5), min_size=2, max_size=6))
def test_no_lost_updates(control_plane, writers):
    async def run():
        async with control_plane.client() as c:
            leases = c.leases("default")
            lease = v1.Lease()
            lease.metadata.name = f"counter-{next(_names)}"
            lease.spec.leaseTransitions = 0
            await leases.create(lease)
            await asyncio.gather(*(increment(leases, lease.metadata.name, n) for n in writers))
            final = await leases.get(lease.metadata.name)
            await leases.delete(lease.metadata.name)
            return final.spec.leaseTransitions
    assert asyncio.run(run()) == sum(writers)
