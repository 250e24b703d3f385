"""The scheduler: informers for pods and nodes feed a node snapshot (cache.py) and a queue of
unscheduled pods (queue.py); for each pod it filters the nodes, scores the ones that fit, and
binds the pod to the best through the API (a Binding, compare-and-swap on the pod's
resourceVersion). Binding runs in the background after the pod is "assumed" on its node, so
the next decision does not wait for the API round trip, as in kube-scheduler.
"""
from __future__ import annotations

import asyncio
import logging
import random

from kubelab.api.v1 import objects_pb2 as v1
from kubelab.client.client import Client
from kubelab.client.events import EventRecorder
from kubelab.client.informer import Informer
from kubelab.errors import ApiError, Conflict, NotFound
from kubelab.meta import key_of

from . import plugins
from .cache import Cache, pod_request, spread_key
from .queue import SchedulingQueue

log = logging.getLogger("scheduler")
SCHEDULER_NAME = "default-scheduler"


def nodes_to_find(total: int, percentage: int = 0) -> int:
    """kube-scheduler's percentageOfNodesToScore: stop after this many feasible nodes."""
    if total <= 100:
        return total
    pct = percentage or max(5, 50 - total // 125)
    return max(100, total * pct // 100)


class Scheduler:
    def __init__(self, client: Client, *, parallel_binds: int = 64, percentage_of_nodes: int = 0,
                 rng: random.Random | None = None, identity: str = ""):
        self.client = client
        self.cache = Cache()
        self.queue = SchedulingQueue()
        self.pods = Informer(client.pods(""))
        self.nodes = Informer(client.nodes())
        # the instance in source.host, as kube-scheduler's reportingInstance: which replica bound
        self.recorder = EventRecorder(client, SCHEDULER_NAME, host=identity)
        self.binds = asyncio.Semaphore(parallel_binds)
        self.percentage = percentage_of_nodes
        self.rng = rng or random.Random()
        self._next_start = 0
        self._bind_tasks: set[asyncio.Task] = set()
        self.scheduled = 0
        self.pods.add_handler(self._pod_added, self._pod_updated, self._pod_deleted)
        self.nodes.add_handler(self._node_changed, lambda old, new: self._node_changed(new), self._node_deleted)

    # -- informer handlers: only bookkeeping and enqueueing --
    @staticmethod
    def _ours(pod: v1.Pod) -> bool:
        return (not pod.spec.nodeName and not pod.metadata.deletionTimestamp
                and (pod.spec.schedulerName or SCHEDULER_NAME) == SCHEDULER_NAME
                and pod.status.phase not in ("Succeeded", "Failed"))

    def _pod_added(self, pod: v1.Pod) -> None:
        key = key_of(pod)
        if pod.spec.nodeName:
            if pod.status.phase in ("Succeeded", "Failed"):
                self._release(key)
            else:
                self.cache.add_pod(key, pod, pod.spec.nodeName)
            self.queue.delete(key)
        elif self._ours(pod):
            self.queue.add(key)

    def _pod_updated(self, old: v1.Pod, pod: v1.Pod) -> None:
        if old.metadata.resourceVersion == pod.metadata.resourceVersion and not pod.spec.nodeName and self._ours(pod):
            if key_of(pod) in self.queue.unschedulable:
                return  # periodic resync of a parked pod: nothing changed
        self._pod_added(pod)
        if not self._ours(pod) and not pod.spec.nodeName:
            self.queue.delete(key_of(pod))

    def _pod_deleted(self, pod: v1.Pod) -> None:
        key = key_of(pod)
        self.queue.delete(key)
        if key in self.cache.pod_node:
            self._release(key)

    def _release(self, key: str) -> None:
        if key in self.cache.pod_node:
            self.cache.remove_pod(key)
            self.queue.move_all_to_active()  # freed room may fit a parked pod

    def _node_changed(self, node: v1.Node) -> None:
        self.cache.set_node(node)
        self.queue.move_all_to_active()

    def _node_deleted(self, node: v1.Node) -> None:
        self.cache.remove_node(node.metadata.name)

    # -- the loop --
    async def run(self) -> None:
        tasks = [asyncio.create_task(self.pods.run(), name="pod-informer"),
                 asyncio.create_task(self.nodes.run(), name="node-informer")]
        try:
            await self.pods.wait_synced()
            await self.nodes.wait_synced()
            log.info("caches synced: %d nodes, %d pods", len(self.nodes.store), len(self.pods.store))
            while True:
                key = await self.queue.pop()
                pod = self.pods.get(key)
                if pod is None or not self._ours(pod) or key in self.cache.pod_node:
                    continue
                self.schedule_one(key, pod)
                if self.queue.active and (self.scheduled & 63) == 0:
                    await asyncio.sleep(0)  # let informer and bind tasks breathe in long runs
        finally:
            for t in tasks + list(self._bind_tasks):
                t.cancel()
            await asyncio.gather(*tasks, *self._bind_tasks, return_exceptions=True)

    def find_nodes(self, pod: v1.Pod, req=None) -> tuple[list, dict[str, int], int]:
        req = req or pod_request(pod)
        infos = self.cache.node_list()
        total = len(infos)
        want = nodes_to_find(total, self.percentage)
        feasible, reasons = [], {}
        start = self._next_start % total if total else 0
        checked = 0
        fits = plugins.fits
        for n in range(total):
            info = infos[(start + n) % total]
            checked += 1
            if fits(pod, req, info):
                feasible.append(info)
                if len(feasible) >= want:
                    break
            else:
                for r in plugins.why_not(pod, req, info):
                    reasons[r] = reasons.get(r, 0) + 1
        self._next_start = start + checked
        return feasible, reasons, total

    def pick(self, pod: v1.Pod, feasible: list, req=None) -> str:
        req = req or pod_request(pod)
        spread = plugins.spread_scores(spread_key(pod), feasible)
        best, best_score, ties = None, -1.0, 0
        for info, s in zip(feasible, spread):
            score = plugins.least_allocated(pod, req, info) + s
            if score > best_score:
                best, best_score, ties = info, score, 1
            elif score == best_score:
                ties += 1
                if self.rng.randrange(ties) == 0:  # reservoir sampling among equal scores
                    best = info
        return best.node.metadata.name

    def schedule_one(self, key: str, pod: v1.Pod) -> None:
        req = pod_request(pod)
        feasible, reasons, total = self.find_nodes(pod, req)
        if not feasible:
            msg = plugins.explain(total, reasons)
            self.queue.park(key)
            self._spawn(self._unschedulable(pod, msg))
            return
        node = self.pick(pod, feasible, req)
        self.cache.add_pod(key, pod, node, assumed=True)
        self.queue.done(key)
        self.scheduled += 1
        self._spawn(self._bind(key, pod, node))

    def _spawn(self, coro) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._bind_tasks.add(t)
        t.add_done_callback(self._bind_tasks.discard)

    async def _bind(self, key: str, pod: v1.Pod, node: str) -> None:
        ns, name = pod.metadata.namespace, pod.metadata.name
        async with self.binds:
            try:
                await self.client.bind(ns, name, node, resource_version=pod.metadata.resourceVersion)
            except (NotFound, Conflict) as e:
                # gone, changed or bound by someone else: the informer brings the truth
                log.debug("binding %s to %s: %s", key, node, e)
                if key in self.cache.assumed:
                    self.cache.remove_pod(key)
                if isinstance(e, Conflict) and key in self.pods.store:
                    self.queue.retry(key)
                return
            except Exception as e:  # noqa: BLE001
                log.warning("binding %s to %s failed: %s", key, node, e)
                if key in self.cache.assumed:
                    self.cache.remove_pod(key)
                self.queue.retry(key)
                return
        self.recorder.event(pod, "Normal", "Scheduled", f"Successfully assigned {ns}/{name} to {node}")

    async def _unschedulable(self, pod: v1.Pod, message: str) -> None:
        self.recorder.event(pod, "Warning", "FailedScheduling", message)
        cond = next((c for c in pod.status.conditions if c.type == "PodScheduled"), None)
        if cond is not None and cond.status == "False" and cond.message == message:
            return
        try:
            fresh = await self.client.pods(pod.metadata.namespace).get(pod.metadata.name)
            if fresh.spec.nodeName:
                return
            from kubelab import meta
            c = next((c for c in fresh.status.conditions if c.type == "PodScheduled"), None)
            if c is None:
                c = fresh.status.conditions.add(type="PodScheduled")
            if c.status != "False":
                c.lastTransitionTime = meta.rfc3339()
            c.status, c.reason, c.message = "False", "Unschedulable", message
            c.lastProbeTime = ""
            await self.client.pods(pod.metadata.namespace).update_status(fresh)
        except ApiError as e:
            log.debug("status of unschedulable %s: %s", pod.metadata.name, e)
