"""The level-triggered controller loop (kubernetes pkg/controller/*): informer handlers put
keys on a WorkQueue; `workers` tasks take a key and call `reconcile(key)`, which reads the
current state and drives it toward the desired one. A failing key is retried with per-key
exponential backoff; `reconcile` may return a delay to look again later.
"""
from __future__ import annotations

import asyncio
import logging

from .informer import Informer
from .workqueue import ShutDown, WorkQueue

log = logging.getLogger(__name__)


class Controller:
    name = "controller"
    workers = 4

    def __init__(self):
        self.queue = WorkQueue()
        self.informers: list[Informer] = []

    def watch(self, informer: Informer, key_fn=None) -> Informer:
        """Enqueue key_fn(obj) (default: the object's key) on every change of informer's objects."""
        from kubelab.meta import key_of
        fn = key_fn or key_of

        def enqueue(*objs):
            k = fn(objs[-1])
            if k is not None:
                self.queue.add(k)
        informer.add_handler(enqueue, enqueue, enqueue)
        self.informers.append(informer)
        return informer

    async def reconcile(self, key) -> float | None:
        raise NotImplementedError

    async def run(self) -> None:
        tasks = [asyncio.create_task(i.run(), name=f"{self.name}-informer") for i in self.informers]
        try:
            for i in self.informers:
                await i.wait_synced()
            workers = [asyncio.create_task(self._worker(), name=f"{self.name}-worker") for _ in range(self.workers)]
            tasks += workers
            await asyncio.gather(*workers)
        finally:
            self.queue.shutdown()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _worker(self) -> None:
        while True:
            try:
                key = await self.queue.get()
            except ShutDown:
                return
            try:
                again = await self.reconcile(key)
                self.queue.forget(key)
                if again is not None:
                    self.queue.add_after(key, again)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - retried with backoff, never fatal
                log.info("%s: reconcile %s failed: %s", self.name, key, e)
                self.queue.add_rate_limited(key)
            finally:
                self.queue.done(key)
