"""The event recorder: components report state changes a user wants to see (Scheduled,
FailedScheduling, Pulled, Started, NodeNotReady, ...) as Event objects, which `describe`
shows. Repeats of the same reason and message on the same object bump `count` and
`lastTimestamp` instead of making a new Event, as Kubernetes' event correlator does.
Recording never blocks or fails the caller: it is best effort.
"""
from __future__ import annotations

import asyncio
import logging

from google.protobuf.message import Message

from kubelab import meta
from kubelab.api import kinds
from kubelab.api.v1 import objects_pb2 as v1
from kubelab.errors import ApiError, NotFound

from .client import Client

log = logging.getLogger(__name__)


class EventRecorder:
    def __init__(self, client: Client, component: str, host: str = "", *, max_pending: int = 1000):
        self.client, self.component, self.host = client, component, host
        self._seen: dict[tuple, v1.Event] = {}
        self._pending: set[asyncio.Task] = set()
        self._locks: dict[tuple, asyncio.Lock] = {}  # one write at a time per distinct event
        self.max_pending = max_pending

    def event(self, obj: Message, type_: str, reason: str, message: str) -> None:
        if len(self._pending) >= self.max_pending:
            return  # the API server is slow or away: drop rather than pile up
        t = asyncio.get_running_loop().create_task(self._record(obj, type_, reason, message))
        self._pending.add(t)
        t.add_done_callback(self._pending.discard)

    async def _record(self, obj: Message, type_: str, reason: str, message: str) -> None:
        m = obj.metadata
        kind = kinds.kind_of(obj)
        ns = m.namespace or "default"
        key = (kind.kind, ns, m.name, m.uid, type_, reason, message)
        now = meta.rfc3339()
        events = self.client.events(ns)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            await self._write(events, key, obj, kind, ns, now, type_, reason, message)
        if not lock.locked() and len(self._locks) > 4096:
            self._locks.pop(key, None)

    async def _write(self, events, key, obj, kind, ns, now, type_, reason, message) -> None:
        m = obj.metadata
        try:
            prev = self._seen.get(key)
            if prev is not None:
                prev.count += 1
                prev.lastTimestamp = now
                try:
                    self._seen[key] = await events.update(prev)
                    return
                except NotFound:
                    pass
            ev = v1.Event(reason=reason, message=message, type=type_, count=1,
                          firstTimestamp=now, lastTimestamp=now, reportingComponent=self.component,
                          reportingInstance=self.host)
            ev.metadata.generateName = f"{m.name}."
            ev.metadata.namespace = ns
            ev.involvedObject.kind, ev.involvedObject.name = kind.kind, m.name
            ev.involvedObject.namespace, ev.involvedObject.uid = m.namespace, m.uid
            ev.involvedObject.apiVersion = kind.api_version
            ev.involvedObject.resourceVersion = m.resourceVersion
            ev.source.component, ev.source.host = self.component, self.host
            self._seen[key] = await events.create(ev)
            if len(self._seen) > 4096:
                self._seen.pop(next(iter(self._seen)))
        except ApiError as e:
            log.debug("event %s on %s/%s not recorded: %s", reason, ns, m.name, e)
        except Exception as e:  # noqa: BLE001
            log.debug("event %s not recorded: %s", reason, e)

    async def flush(self, timeout: float = 5.0) -> None:
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=timeout)
