"""Pod workers: one asyncio task per pod, each keeping only the latest desired state (as the
kubelet's podWorkers do). An update wakes the worker; a sync may ask for another look after a
delay (a backoff ending, a probe period). A pod being deleted is terminated once and its
deletion confirmed; a pod gone from every source is cleaned up and its worker ends."""
from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from kubelab.api.v1 import objects_pb2 as v1

log = logging.getLogger("kubelet.podworkers")


class PodWorker:
    def __init__(self, uid: str, sync: Callable[[v1.Pod], Awaitable[float | None]],
                 terminate: Callable[[v1.Pod | None, str], Awaitable[None]], on_exit: Callable[[str], None]):
        self.uid, self.sync, self.terminate, self.on_exit = uid, sync, terminate, on_exit
        self.latest: v1.Pod | None = None
        self.removed = False
        self.wake = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self.run(), name=f"pod-worker-{uid[:8]}")

    def update(self, pod: v1.Pod | None) -> None:
        if pod is None:
            self.removed = True
        else:
            self.latest = pod
        self.wake.set()

    async def run(self) -> None:
        delay: float | None = None
        try:
            while True:
                if delay is None:
                    await self.wake.wait()
                else:
                    try:
                        await asyncio.wait_for(self.wake.wait(), delay)
                    except asyncio.TimeoutError:
                        pass
                self.wake.clear()
                pod = self.latest
                if self.removed or pod is None or pod.metadata.deletionTimestamp:
                    await self.terminate(None if self.removed else pod, self.uid)
                    return
                try:
                    delay = await self.sync(pod)
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # noqa: BLE001 - one pod's trouble never stops the kubelet
                    log.warning("sync of pod %s/%s failed: %s", pod.metadata.namespace, pod.metadata.name, e,
                                exc_info=log.isEnabledFor(logging.DEBUG))
                    delay = 2.0
        finally:
            self.on_exit(self.uid)


class PodWorkers:
    def __init__(self, sync, terminate):
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
