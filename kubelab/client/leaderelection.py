"""Leader election on a Lease object, as kube-scheduler and kube-controller-manager do it.

Candidates race to hold `kube-system/<name>`: a Lease whose holder renews it every
retry_period. A candidate takes the lease when it is free or its renewTime is older than
leaseDurationSeconds; every write is a compare-and-swap on resourceVersion (the API server's
etcd transaction), so two candidates can never both win. While it leads, `run` runs the
given coroutine; when renewal fails for renew_deadline it cancels that work and campaigns
again, so at most one instance acts at a time.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from typing import Awaitable, Callable

from kubelab import meta
from kubelab.api.v1 import objects_pb2 as v1
from kubelab.errors import AlreadyExists, ApiError, Conflict, NotFound

from .client import Client

log = logging.getLogger(__name__)


class LeaderElector:
    def __init__(self, client: Client, name: str, identity: str, *, namespace: str = "kube-system",
                 lease_duration: float = 15.0, renew_deadline: float = 10.0, retry_period: float = 2.0,
                 clock: Callable[[], dt.datetime] = meta.now):
        self.leases = client.leases(namespace)
        self.name, self.identity = name, identity
        self.lease_duration, self.renew_deadline, self.retry_period = lease_duration, renew_deadline, retry_period
        self.clock = clock
        self.is_leader = False

    async def try_acquire_or_renew(self) -> bool:
        now = self.clock()
        try:
            lease = await self.leases.get(self.name)
        except NotFound:
            lease = v1.Lease()
            lease.metadata.name = self.name
            self._hold(lease, now, new=True)
            try:
                await self.leases.create(lease)
                return True
            except (AlreadyExists, Conflict):
                return False
        held_by_me = lease.spec.holderIdentity == self.identity
        renewed = meta.parse_time(lease.spec.renewTime)
        expired = (renewed is None or not lease.spec.holderIdentity or
                   (now - renewed).total_seconds() > lease.spec.leaseDurationSeconds)
        if not held_by_me and not expired:
            return False
        self._hold(lease, now, new=not held_by_me)
        try:
            await self.leases.update(lease)  # CAS on the resourceVersion we read
            return True
        except Conflict:
            return False

    def _hold(self, lease: v1.Lease, now: dt.datetime, *, new: bool) -> None:
        s = lease.spec
        if new:
            s.acquireTime = meta.rfc3339_micro(now)
            s.leaseTransitions = (s.leaseTransitions + 1) if s.holderIdentity else s.leaseTransitions
        s.holderIdentity = self.identity
        s.leaseDurationSeconds = int(self.lease_duration)
        s.renewTime = meta.rfc3339_micro(now)

    async def run(self, lead: Callable[[], Awaitable[None]]) -> None:
        """Campaign forever; run `lead()` during each term, cancel it when the term ends."""
        while True:
            await self._acquire()
            log.info("%s: %s became the leader", self.name, self.identity)
            self.is_leader = True
            work = asyncio.create_task(lead(), name=f"{self.name}-leader")
            renew = asyncio.create_task(self._renew_loop())
            done, _ = await asyncio.wait({work, renew}, return_when=asyncio.FIRST_COMPLETED)
            self.is_leader = False
            for t in (work, renew):
                t.cancel()
            await asyncio.gather(work, renew, return_exceptions=True)
            if work in done and work.exception() is not None:
                raise work.exception()
            log.warning("%s: %s lost the lease", self.name, self.identity)

    async def _acquire(self) -> None:
        while True:
            try:
                if await self.try_acquire_or_renew():
                    return
            except ApiError as e:
                log.debug("leader election: %s", e)
            except Exception as e:  # noqa: BLE001 - the API server may be restarting
                log.debug("leader election: %s", e)
            await asyncio.sleep(self.retry_period)

    async def _renew_loop(self) -> None:
        last_ok = time.monotonic()
        while True:
            await asyncio.sleep(self.retry_period)
            try:
                if await self.try_acquire_or_renew():
                    last_ok = time.monotonic()
                    continue
                return  # someone else holds it now
            except Exception as e:  # noqa: BLE001
                log.debug("lease renewal failed: %s", e)
            if time.monotonic() - last_ok > self.renew_deadline:
                return
