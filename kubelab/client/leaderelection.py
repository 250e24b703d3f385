"""Leader election on a Lease object, as kube-scheduler and kube-controller-manager do it
(client-go's leaderelection package).

Candidates race to hold `kube-system/<name>`: a Lease whose holder renews it every
retry_period. Every write is a compare-and-swap on the resourceVersion just read (the API
server's etcd transaction), so two candidates can never both win the same record.

Safety rests on two local clocks, never on anyone's wall clock:

- A candidate judges another holder's lease by when IT last saw the record change
  (monotonic time of the read that brought a new record), plus the lease duration. The
  holder's renewTime is written for people to read; a skewed holder clock cannot make it
  look expired, nor keep it alive. A lease deleted under a live holder is recreated only
  once that holder's lease has run out by the same measure.
- The leader acts only until renew_deadline after the START of its last successful write
  (that write can only land after it started). Every renew attempt, retries and the wait
  before it included, runs under a timeout that ends at that deadline; when it passes the
  leader's work is cancelled and `is_leader` is False, before any other candidate can have
  seen lease_duration (> renew_deadline) of silence.

On shutdown (the coroutine cancelled) or when the work ends, the leader releases the
lease (holder cleared, compare-and-swap on its own last record) so the next one need not
wait for it to expire.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import time
from typing import Awaitable, Callable

from kubelab import meta
from kubelab.api.v1 import objects_pb2 as v1
from kubelab.errors import AlreadyExists, Conflict, NotFound

log = logging.getLogger(__name__)


class InvalidLeaderElectionConfig(ValueError):
    """The durations cannot give mutual exclusion; `field` names the offending one."""

    def __init__(self, field: str, message: str):
        super().__init__(f"leader election: {field}: {message}")
        self.field, self.detail = field, message


def validate(lease_duration: float, renew_deadline: float, retry_period: float, *,
             names: dict[str, str] | None = None) -> None:
    """Raise InvalidLeaderElectionConfig unless 0 < retry_period < renew_deadline < lease_duration.
    `names` renames the fields in the message (the CLI passes its flag names)."""
    n = {"lease_duration": "lease_duration", "renew_deadline": "renew_deadline", "retry_period": "retry_period",
         **(names or {})}
    for field, value in (("lease_duration", lease_duration), ("renew_deadline", renew_deadline),
                         ("retry_period", retry_period)):
        if not value > 0:
            raise InvalidLeaderElectionConfig(n[field], f"must be greater than 0 (got {value})")
    if not renew_deadline < lease_duration:
        raise InvalidLeaderElectionConfig(
            n["renew_deadline"], f"must be less than {n['lease_duration']} ({renew_deadline} >= {lease_duration}): "
                                 "the leader must stop before another candidate may take the lease")
    if not retry_period < renew_deadline:
        raise InvalidLeaderElectionConfig(
            n["retry_period"], f"must be less than {n['renew_deadline']} ({retry_period} >= {renew_deadline}): "
                               "the leader could not retry a failed renewal before its deadline")


class LeaderElector:
    """`leases` is a Lease client for one namespace (`client.leases("kube-system")`).

    `clock` gives the wall time written into renewTime/acquireTime; `monotonic` gives the
    time every decision is made on (seconds, never jumps). Both are injectable so a test
    can drive time; in a test `monotonic` should be the event loop's clock, since the
    timeouts and sleeps here run on it.
    """

    def __init__(self, leases, name: str, identity: str, *, lease_duration: float = 15.0,
                 renew_deadline: float = 10.0, retry_period: float = 2.0,
                 clock: Callable[[], dt.datetime] = meta.now,
                 monotonic: Callable[[], float] = time.monotonic, release_on_cancel: bool = True):
        validate(lease_duration, renew_deadline, retry_period)
        if not identity:
            raise InvalidLeaderElectionConfig("identity", "must not be empty")
        self.leases = leases
        self.name, self.identity = name, identity
        self.lease_duration, self.renew_deadline, self.retry_period = lease_duration, renew_deadline, retry_period
        self.clock, self.monotonic = clock, monotonic
        self.release_on_cancel = release_on_cancel
        self._observed: bytes | None = None  # the lease spec as last read or written
        self._observed_holder = ""
        self._observed_duration = 0
        self._observed_at = 0.0  # monotonic time the record was last seen to change
        self._held: v1.Lease | None = None  # our last successful write, for the release CAS
        self._renewed_at = -math.inf  # monotonic start of our last successful acquire/renew
        self._leading = False

    @property
    def is_leader(self) -> bool:
        """True only inside a term and before its renew deadline, even if the renew task lags."""
        return self._leading and self.monotonic() < self._renewed_at + self.renew_deadline

    # -- one attempt --
    async def try_acquire_or_renew(self) -> bool:
        """Read the lease; take or renew it if it is ours, free, or silent for a lease duration."""
        try:
            lease = await self.leases.get(self.name)
        except NotFound:
            if self._observed_holder not in ("", self.identity) and not self._expired():
                return False  # deleted under a live holder: it still acts until its lease runs out
            lease = v1.Lease()
            lease.metadata.name = self.name
            self._hold(lease, new=True, created=True)
            try:
                created = await self.leases.create(lease)
            except (AlreadyExists, Conflict):
                return False
            self._wrote(created)
            return True
        self._observe(lease)
        s = lease.spec
        if s.holderIdentity and s.holderIdentity != self.identity and not self._expired():
            return False
        self._hold(lease, new=s.holderIdentity != self.identity, created=False)
        try:
            updated = await self.leases.update(lease)  # CAS on the resourceVersion we read
        except Conflict:
            return False
        self._wrote(updated)
        return True

    def _observe(self, lease: v1.Lease) -> None:
        record = lease.spec.SerializeToString(deterministic=True)
        if record != self._observed:
            self._observed, self._observed_at = record, self.monotonic()
        holder = lease.spec.holderIdentity
        self._observed_duration = lease.spec.leaseDurationSeconds
        if holder != self._observed_holder and holder and holder != self.identity:
            log.info("%s: %s sees the leader is %s", self.name, self.identity, holder)
        self._observed_holder = holder

    def _wrote(self, lease: v1.Lease) -> None:
        self._observe(lease)
        self._held = lease

    def _expired(self) -> bool:
        # the longer of the holder's declared duration and ours: never cut a holder short
        duration = max(self.lease_duration, self._observed_duration)
        return self.monotonic() - self._observed_at > duration

    def _hold(self, lease: v1.Lease, *, new: bool, created: bool) -> None:
        s = lease.spec
        now = meta.rfc3339_micro(self.clock())
        if new:
            s.acquireTime = now
            if not created:
                s.leaseTransitions = s.leaseTransitions + 1
        s.holderIdentity = self.identity
        s.leaseDurationSeconds = math.ceil(self.lease_duration)
        s.renewTime = now

    # -- terms --
    async def run(self, lead: Callable[[], Awaitable[None]]) -> None:
        """Campaign; run `lead()` during each term and cancel it when the term ends. Returns
        when `lead()` returns, raises what it raises; on cancellation releases the lease."""
        while True:
            await self._acquire()
            ended = await self._term(lead)
            if ended is not None:
                return

    async def _acquire(self) -> None:
        while True:
            started = self.monotonic()
            timeout = asyncio.timeout(self.renew_deadline)  # a hung call must not stall the campaign
            try:
                async with timeout:
                    if await self.try_acquire_or_renew():
                        self._renewed_at = started
                        return
            except Exception as e:  # noqa: BLE001 - the API server may be away or restarting
                log.debug("%s: acquire attempt: %s", self.name, "timed out" if timeout.expired() else e)
            await asyncio.sleep(self.retry_period)

    async def _term(self, lead) -> bool | None:
        """One term as leader: None when the lease was lost, True when `lead()` returned."""
        self._leading = True
        log.info("%s: %s started leading (monotonic %.6f)", self.name, self.identity, self.monotonic())
        work = asyncio.create_task(lead(), name=f"{self.name}-leader")
        renew = asyncio.create_task(self._renew_loop(), name=f"{self.name}-renew")
        release = True
        try:
            await asyncio.wait({work, renew}, return_when=asyncio.FIRST_COMPLETED)
            release = not renew.done()  # lost: nothing of ours to release
        finally:
            self._leading = False  # first: nothing may act on this term any more
            work.cancel()
            renew.cancel()
            await asyncio.gather(work, renew, return_exceptions=True)
            why = renew.result() if renew.done() and not renew.cancelled() else "stopping"
            log.warning("%s: %s stopped leading: %s (monotonic %.6f)", self.name, self.identity, why,
                        self.monotonic())
            if release and self.release_on_cancel:
                await self._release()
        if work.cancelled():
            return None  # the lease was lost: campaign again
        if work.exception() is not None:
            raise work.exception()
        return True

    async def _renew_loop(self) -> str:
        """Renew every retry_period; return why the term ended once it did."""
        while True:
            remaining = self._renewed_at + self.renew_deadline - self.monotonic()
            if remaining <= 0:
                return f"not renewed within the renew deadline ({self.renew_deadline}s)"
            timeout = asyncio.timeout(remaining)  # the wait, the call and its retries: all bounded
            try:
                async with timeout:
                    await asyncio.sleep(self.retry_period)
                    started = self.monotonic()
                    ok = await self.try_acquire_or_renew()
            except Exception as e:  # noqa: BLE001
                if timeout.expired():
                    return f"not renewed within the renew deadline ({self.renew_deadline}s)"
                log.debug("%s: renewal failed: %s", self.name, e)
                continue
            if ok:
                self._renewed_at = started
            elif self._observed_holder and self._observed_holder != self.identity:
                return f"the lease is held by {self._observed_holder}"
            # a Conflict (a racing write): read again until the deadline

    async def _release(self) -> None:
        """Clear the holder so another candidate can take over at once; CAS on our own last
        write, so a lease someone else took meanwhile is left alone."""
        if self._held is None:
            return
        lease = v1.Lease()
        lease.CopyFrom(self._held)
        s = lease.spec
        s.holderIdentity = ""
        s.leaseDurationSeconds = 1
        s.renewTime = s.acquireTime = meta.rfc3339_micro(self.clock())
        try:
            async with asyncio.timeout(self.retry_period):
                await self.leases.update(lease)
            log.info("%s: %s released the lease", self.name, self.identity)
        except Exception as e:  # noqa: BLE001 - best effort: the lease expires anyway
            log.debug("%s: release: %s", self.name, e)
        self._held = None
