"""Pod workers: one asyncio task per pod, each keeping only the latest desired state (as the
kubelet's podWorkers do). An update wakes the worker; a sync may ask for another look after a
delay (a backoff ending, a probe period).

Termination wins over everything else. The signal is a state, not an event that a later update
could overwrite: once a pod is marked for deletion (or gone from every source) it stays
terminating. A sync in flight when the signal comes is cancelled (it may be waiting out a
liveness kill with the pod's full grace period, or pulling an image), so it cannot restart
containers behind the termination or hold it up. A termination that fails is retried with
backoff; one whose grace period is shortened by a later delete starts over with the shorter
one. The worker ends only when the pod is terminated and its deletion confirmed."""
from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from kubelab.api.v1 import objects_pb2 as v1

log = logging.getLogger("kubelet.podworkers")

Sync = Callable[[v1.Pod], Awaitable[float | None]]
Terminate = Callable[[v1.Pod | None, str], Awaitable[None]]


def grace_of(pod: v1.Pod | None) -> int | None:
    """The grace period a termination of pod uses (None: removed from every source, no grace asked)."""
    if pod is None or not pod.metadata.deletionTimestamp:
        return None
    if pod.metadata.HasField("deletionGracePeriodSeconds"):
        return pod.metadata.deletionGracePeriodSeconds
    return None


class PodWorker:
    def __init__(self, uid: str, sync: Sync, terminate: Terminate, on_exit: Callable[[str], None], *,
                 retry_initial: float = 1.0, retry_max: float = 10.0):
        self.uid, self.sync, self.terminate, self.on_exit = uid, sync, terminate, on_exit
        self.retry_initial, self.retry_max = retry_initial, retry_max
        self.latest: v1.Pod | None = None
        self.removed = False
        self.terminating = False  # sticky: set by a deletionTimestamp or a removal, never cleared
        self.wake = asyncio.Event()
        self._current: asyncio.Task | None = None  # the sync or termination in flight
        self._current_grace: int | None = None
        self.task = asyncio.get_running_loop().create_task(self.run(), name=f"pod-worker-{uid[:8]}")

    def update(self, pod: v1.Pod | None) -> None:
        if pod is None:
            self.removed = True
        else:
            self.latest = pod
        if self.removed or (pod is not None and pod.metadata.deletionTimestamp):
            self.terminating = True
        self.wake.set()
        cur = self._current
        if cur is None or cur.done() or not self.terminating:
            return
        if getattr(cur, "kind", "") == "sync":
            cur.cancel()  # a sync never holds up a termination
        elif self._shorter_grace():
            cur.cancel()  # start the termination over with the shorter grace period

    def _shorter_grace(self) -> bool:
        new = grace_of(self.latest)
        return new is not None and self._current_grace is not None and new < self._current_grace

    def _spawn(self, coro, kind: str) -> asyncio.Task:
        t = asyncio.get_running_loop().create_task(coro, name=f"pod-{kind}-{self.uid[:8]}")
        t.kind = kind  # type: ignore[attr-defined]
        self._current = t
        return t

    async def run(self) -> None:
        delay: float | None = None
        try:
            while not self.terminating:
                if delay is None:
                    await self.wake.wait()
                else:
                    try:
                        await asyncio.wait_for(self.wake.wait(), delay)
                    except asyncio.TimeoutError:
                        pass
                self.wake.clear()
                pod = self.latest
                if self.terminating or pod is None:
                    break
                delay = await self._sync_once(pod)
            await self._terminate_until_done()
        finally:
            if self._current is not None and not self._current.done():
                self._current.cancel()
            self.on_exit(self.uid)

    async def _sync_once(self, pod: v1.Pod) -> float | None:
        t = self._spawn(self.sync(pod), "sync")
        try:
            return await asyncio.shield(t)
        except asyncio.CancelledError:
            if not t.cancelled():  # the worker itself is being stopped
                t.cancel()
                raise
            return None  # cancelled by a termination signal: the loop sees it
        except Exception as e:  # noqa: BLE001 - one pod's trouble never stops the kubelet
            log.warning("sync of pod %s/%s failed: %s", pod.metadata.namespace, pod.metadata.name, e,
                        exc_info=log.isEnabledFor(logging.DEBUG))
            return 2.0
        finally:
            self._current = None

    async def _terminate_until_done(self) -> None:
        backoff = self.retry_initial
        while True:
            pod = None if self.removed else self.latest
            self._current_grace = grace_of(pod)
            t = self._spawn(self.terminate(pod, self.uid), "terminate")
            try:
                await asyncio.shield(t)
                return
            except asyncio.CancelledError:
                if not t.cancelled():
                    t.cancel()
                    raise
                log.info("pod %s: grace period shortened, terminating again", self.uid)
                continue  # cancelled for a shorter grace period: go again at once
            except Exception as e:  # noqa: BLE001 - retried: a pod must not stay Terminating
                name = f"{pod.metadata.namespace}/{pod.metadata.name}" if pod is not None else self.uid
                log.warning("terminating pod %s failed: %s; retrying in %.0fs", name, e, backoff,
                            exc_info=log.isEnabledFor(logging.DEBUG))
            finally:
                self._current = None
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), backoff)
            except asyncio.TimeoutError:
                pass
            backoff = min(backoff * 2, self.retry_max)


class PodWorkers:
    def __init__(self, sync: Sync, terminate: Terminate):
        self.sync, self.terminate = sync, terminate
        self.workers: dict[str, PodWorker] = {}

    def update(self, uid: str, pod: v1.Pod | None) -> None:
        w = self.workers.get(uid)
        if w is None:
            if pod is None:
                return
            w = self.workers[uid] = PodWorker(uid, self.sync, self.terminate, self._exited)
        w.update(pod)

    def poke(self, uid: str) -> None:
        w = self.workers.get(uid)
        if w is not None:
            w.wake.set()

    def _exited(self, uid: str) -> None:
        self.workers.pop(uid, None)

    async def stop(self) -> None:
        tasks = [w.task for w in self.workers.values()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
