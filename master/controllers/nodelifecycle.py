"""The node lifecycle controller: notices nodes whose kubelet went quiet and evicts their pods.

Every monitor period it compares each node's Lease renewTime (kube-node-lease/<node>) with the
grace period. A node silent for longer gets Ready=Unknown ("Kubelet stopped posting node
status.") and the taints node.kubernetes.io/unreachable NoSchedule (the scheduler skips it)
and NoExecute; its pods are marked not Ready. Pods that do not tolerate the NoExecute taint
are deleted at once, the others when their tolerationSeconds (300 by default) run out. When
the kubelet reports Ready again the taints go away. Events: NodeNotReady, NodeReady,
TaintManagerEviction.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Callable

from kubelab import meta
from kubelab.api.tolerations import tolerates
from kubelab.api.v1 import objects_pb2 as v1
from kubelab.client.client import Client
from kubelab.client.events import EventRecorder
from kubelab.client.informer import Informer
from kubelab.errors import ApiError, Conflict, NotFound

log = logging.getLogger("nodelifecycle")
UNREACHABLE = "node.kubernetes.io/unreachable"
NOT_READY = "node.kubernetes.io/not-ready"


def eviction_delay(pod: v1.Pod, taints: list[v1.Taint]) -> float | None:
    """Seconds a pod may stay on a node with these NoExecute taints; None: forever, 0: now."""
    delay: float | None = None
    for taint in taints:
        if taint.effect != "NoExecute":
            continue
        matching = [t for t in pod.spec.tolerations if tolerates(t, taint)]
        if not matching:
            return 0.0
        limits = [t.tolerationSeconds for t in matching if t.HasField("tolerationSeconds")]
        if limits and len(limits) == len(matching):
            d = max(0, min(limits))
            delay = d if delay is None else min(delay, d)
    return delay


class NodeLifecycleController:
    name = "nodelifecycle"

    def __init__(self, client: Client, *, grace_period: float = 50.0, monitor_period: float = 5.0,
                 clock: Callable[[], dt.datetime] = meta.now):
        self.client, self.grace, self.period, self.clock = client, grace_period, monitor_period, clock
        self.nodes = Informer(client.nodes())
        self.leases = Informer(client.leases("kube-node-lease"))
        self.pods = Informer(client.pods(""))
        self.recorder = EventRecorder(client, "node-controller")
        self.first_seen: dict[str, dt.datetime] = {}

    async def run(self) -> None:
        tasks = [asyncio.create_task(i.run()) for i in (self.nodes, self.leases, self.pods)]
        try:
            for i in (self.nodes, self.leases, self.pods):
                await i.wait_synced()
            while True:
                try:
                    await self.monitor()
                except ApiError as e:
                    log.info("monitor pass: %s", e)
                await asyncio.sleep(self.period)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def last_heartbeat(self, node: v1.Node) -> dt.datetime:
        name = node.metadata.name
        lease = self.leases.get(f"kube-node-lease/{name}")
        times = [meta.parse_time(lease.spec.renewTime)] if lease is not None else []
        ready = next((c for c in node.status.conditions if c.type == "Ready"), None)
        if ready is not None and ready.status != "Unknown":
            times.append(meta.parse_time(ready.lastHeartbeatTime))
        times = [t for t in times if t is not None]
        if times:
            return max(times)
        # never heard from: count from when we first saw it, as Kubernetes does
        return self.first_seen.setdefault(name, self.clock())

    async def monitor(self) -> None:
        now = self.clock()
        for node in self.nodes.list():
            silent = (now - self.last_heartbeat(node)).total_seconds() > self.grace
            ready = next((c for c in node.status.conditions if c.type == "Ready"), None)
            tainted = any(t.key == UNREACHABLE for t in node.spec.taints)
            if silent and (ready is None or ready.status != "Unknown"):
                await self.mark_unknown(node, now)
            elif silent and not tainted:
                await self.set_taints(node.metadata.name, add=True, now=now)
            elif not silent and ready is not None and ready.status == "True" and tainted:
                await self.set_taints(node.metadata.name, add=False, now=now)
                self.recorder.event(node, "Normal", "NodeReady", f"Node {node.metadata.name} status is now: NodeReady")
        await self.evict(now)

    async def mark_unknown(self, node: v1.Node, now: dt.datetime) -> None:
        name = node.metadata.name
        try:
            fresh = await self.client.nodes().get(name)
            ts = meta.rfc3339(now)
            for ctype in ("Ready", "MemoryPressure", "DiskPressure", "PIDPressure"):
                c = next((c for c in fresh.status.conditions if c.type == ctype), None)
                if c is None:
                    c = fresh.status.conditions.add(type=ctype, lastHeartbeatTime=ts)
                if c.status != "Unknown":
                    c.lastTransitionTime = ts
                c.status, c.reason, c.message = "Unknown", "NodeStatusUnknown", "Kubelet stopped posting node status."
            await self.client.nodes().update_status(fresh)
        except (NotFound, Conflict):
            return
        log.warning("node %s: no heartbeat for %.0fs, Ready=Unknown", name, self.grace)
        self.recorder.event(node, "Normal", "NodeNotReady", f"Node {name} status is now: NodeNotReady")
        await self.set_taints(name, add=True, now=now)
        await self.mark_pods_not_ready(name)

    async def set_taints(self, name: str, *, add: bool, now: dt.datetime) -> None:
        for _ in range(5):
            try:
                fresh = await self.client.nodes().get(name)
            except NotFound:
                return
            keep = [t for t in fresh.spec.taints if t.key not in (UNREACHABLE, NOT_READY)]
            del fresh.spec.taints[:]
            fresh.spec.taints.extend(keep)
            if add:
                for effect in ("NoSchedule", "NoExecute"):
                    fresh.spec.taints.add(key=UNREACHABLE, effect=effect, timeAdded=meta.rfc3339(now))
            try:
                await self.client.nodes().update(fresh)
                return
            except Conflict:
                continue

    async def mark_pods_not_ready(self, node_name: str) -> None:
        for pod in self.pods.list():
            if pod.spec.nodeName != node_name:
                continue
            pods = self.client.pods(pod.metadata.namespace)
            try:
                fresh = await pods.get(pod.metadata.name)
                changed = False
                for c in fresh.status.conditions:
                    if c.type in ("Ready", "ContainersReady") and c.status != "False":
                        c.status, c.lastTransitionTime = "False", meta.rfc3339()
                        changed = True
                for cs in fresh.status.containerStatuses:
                    cs.ready = False
                if changed:
                    await pods.update_status(fresh)
            except (NotFound, Conflict):
                pass

    async def evict(self, now: dt.datetime) -> None:
        for node in self.nodes.list():
            taints = [t for t in node.spec.taints if t.effect == "NoExecute"]
            if not taints:
                continue
            added = min((meta.parse_time(t.timeAdded) or now for t in taints), default=now)
            for pod in self.pods.list():
                if pod.spec.nodeName != node.metadata.name or pod.metadata.deletionTimestamp:
                    continue
                delay = eviction_delay(pod, taints)
                if delay is None or (now - added).total_seconds() < delay:
                    continue
                try:
                    await self.client.pods(pod.metadata.namespace).delete(pod.metadata.name)
                    self.recorder.event(pod, "Normal", "TaintManagerEviction",
                                        f"Marking for deletion Pod {pod.metadata.namespace}/{pod.metadata.name}")
                except NotFound:
                    pass
