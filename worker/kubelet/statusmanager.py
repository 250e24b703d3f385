"""The status manager: the one writer of pod status from this node. Pod workers hand it the
status they computed; it writes only what changed, retries on conflict, and keeps the
latest status per pod so that, with the API server down, pods keep running and the status
catches up when it returns."""
from __future__ import annotations

import asyncio
import logging

from kubelab.api.v1 import objects_pb2 as v1
from kubelab.client.client import Client
from kubelab.errors import ApiError, Conflict, NotFound

log = logging.getLogger("kubelet.status")


class StatusManager:
    def __init__(self, client: Client):
        self.client = client
        self.pending: dict[str, tuple[str, str, v1.PodStatus]] = {}  # uid -> (ns, name, status)
        self.static: set[str] = set()  # uids of static pods: their status goes to the mirror pod
        self.written: dict[str, bytes] = {}  # uid -> last status bytes written
        self._wake = asyncio.Event()

    def set(self, pod: v1.Pod, status: v1.PodStatus) -> None:
        uid = pod.metadata.uid
        raw = _comparable(status)
        if self.written.get(uid) == raw and uid not in self.pending:
            return
        self.pending[uid] = (pod.metadata.namespace, pod.metadata.name, status)
        self._wake.set()

    def forget(self, uid: str) -> None:
        self.pending.pop(uid, None)
        self.written.pop(uid, None)

    async def run(self) -> None:
        backoff = 0.5
        while True:
            await self._wake.wait()
            self._wake.clear()
            failed = False
            for uid, (ns, name, status) in list(self.pending.items()):
                try:
                    await self._write(uid, ns, name, status)
                    if self.pending.get(uid, (None, None, None))[2] is status:
                        del self.pending[uid]
                except NotFound:
                    if uid in self.static:  # no mirror pod yet (no API server yet): it will come
                        failed = True
                    else:
                        self.pending.pop(uid, None)
                except ApiError as e:
                    log.debug("status of %s/%s: %s", ns, name, e)
                    failed = True
                except Exception as e:  # noqa: BLE001 - the API server may be away: keep it for later
                    log.debug("status of %s/%s: %s", ns, name, e)
                    failed = True
            if failed:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                self._wake.set()
            else:
                backoff = 0.5

    async def _write(self, uid: str, ns: str, name: str, status: v1.PodStatus) -> None:
        pods = self.client.pods(ns)
        for _ in range(5):
            live = await pods.get(name)
            if live.metadata.uid != uid and uid not in self.static:
                raise NotFound(f'pods "{name}" not found')
            live.status.CopyFrom(status)
            try:
                await pods.update_status(live)
                self.written[uid] = _comparable(status)
                return
            except Conflict:
                continue


def _comparable(status: v1.PodStatus) -> bytes:
    return status.SerializeToString(deterministic=True)
