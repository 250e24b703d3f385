"""Informers: list, then watch from the list's resourceVersion, relist on Gone; a local store
of the current objects; handlers that are told of adds, updates and deletes (and should only
enqueue keys). The scheduler, controllers, kubelet and hollow nodes share this code.
"""
from __future__ import annotations

import asyncio
import logging
import random
from typing import Callable, Generic, TypeVar

from google.protobuf.message import Message

from kubelab.errors import ApiError, Gone
from kubelab.meta import key_of

from .client import ResourceClient

log = logging.getLogger(__name__)
T = TypeVar("T", bound=Message)


class Informer(Generic[T]):
    def __init__(self, rc: ResourceClient, *, label_selector: str = "", field_selector: str = "",
                 resync: float | None = None, page_size: int = 500):
        self.rc = rc
        self.label_selector, self.field_selector = label_selector, field_selector
        self.resync, self.page_size = resync, page_size
        self.store: dict[str, T] = {}
        self.resource_version = ""
        self.synced = asyncio.Event()
        self._handlers: list[tuple] = []
        self.relists = 0

    def add_handler(self, on_add: Callable[[T], None] | None = None,
                    on_update: Callable[[T, T], None] | None = None,
                    on_delete: Callable[[T], None] | None = None) -> None:
        self._handlers.append((on_add, on_update, on_delete))
        for obj in self.store.values():
            if on_add:
                on_add(obj)

    def get(self, key: str) -> T | None:
        return self.store.get(key)

    def list(self) -> list[T]:
        return list(self.store.values())

    async def wait_synced(self) -> None:
        await self.synced.wait()

    def _emit(self, i: int, *args) -> None:
        for h in self._handlers:
            if h[i] is not None:
                try:
                    h[i](*args)
                except Exception:  # noqa: BLE001 - one handler's bug must not stop the informer
                    log.exception("informer handler failed")

    async def run(self) -> None:
        backoff = 0.2
        resync = asyncio.create_task(self._resync()) if self.resync else None
        try:
            while True:
                try:
                    if not self.resource_version:
                        await self._relist()
                    await self._watch()
                    backoff = 0.2  # the server closed the stream: rewatch from where we are
                except Gone:
                    self.resource_version = ""  # compacted or too old: start over with a list
                except asyncio.CancelledError:
                    raise
                except (ApiError, Exception) as e:  # noqa: BLE001 - keep going while the server is away
                    log.debug("%s informer: %s; retrying in %.1fs", self.rc.kind.resource, e, backoff)
                    await asyncio.sleep(backoff * (1 + random.random() / 2))
                    backoff = min(backoff * 2, 10.0)
        finally:
            if resync:
                resync.cancel()

    async def _relist(self) -> None:
        page = await self.rc.list_all(label_selector=self.label_selector, field_selector=self.field_selector,
                                      page_size=self.page_size)
        self.relists += 1
        fresh = {key_of(o): o for o in page.items}
        old = self.store
        self.store = fresh
        for k, o in fresh.items():
            prev = old.get(k)
            if prev is None:
                self._emit(0, o)
            elif prev.metadata.resourceVersion != o.metadata.resourceVersion:
                self._emit(1, prev, o)
        for k, o in old.items():
            if k not in fresh:
                self._emit(2, o)
        self.resource_version = page.resource_version
        self.synced.set()

    async def _watch(self) -> None:
        async for ev in self.rc.watch(resource_version=self.resource_version, label_selector=self.label_selector,
                                      field_selector=self.field_selector, allow_bookmarks=True):
            obj = ev.object
            self.resource_version = obj.metadata.resourceVersion or self.resource_version
            if ev.type == "BOOKMARK":
                continue
            k = key_of(obj)
            if ev.type == "DELETED":
                prev = self.store.pop(k, None)
                self._emit(2, prev if prev is not None else obj)
            else:
                prev = self.store.get(k)
                self.store[k] = obj
                if prev is None:
                    self._emit(0, obj)
                else:
                    self._emit(1, prev, obj)

    async def _resync(self) -> None:
        """Periodically re-deliver every object as an update: a safety net for missed work."""
        while True:
            await asyncio.sleep(self.resync)
            for o in list(self.store.values()):
                self._emit(1, o, o)
