"""Hollow nodes (like kwok): N simulated nodes in one process, for scheduler and scale tests.

Each registers its Node and keeps its Lease fresh with the same node-status code the kubelet
uses (worker/kubelet/nodestatus.py). One pod informer serves all of them: a pod bound to one
of our nodes is reported Running with a fake pod IP from that node's range, and a pod being
deleted is confirmed at once (delete with grace 0), as a kubelet does after stopping it.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging

from kubelab import meta
from kubelab.api.v1 import objects_pb2 as v1
from kubelab.client.client import Client
from kubelab.client.controller import Controller
from kubelab.client.informer import Informer
from kubelab.errors import Conflict, NotFound

from worker.kubelet.nodestatus import NodeConfig, NodeLease, register_node
from worker.kubelet.podstatus import running_status

log = logging.getLogger("hollow-nodes")


class HollowNodes(Controller):
    name = "hollow-nodes"
    workers = 16

    def __init__(self, client: Client, count: int, *, prefix: str = "hollow-node-", capacity: dict | None = None,
                 lease_duration: int = 40, renew_interval: float = 10.0, register_concurrency: int = 32):
        super().__init__()
        self.client, self.count, self.prefix = client, count, prefix
        self.capacity = capacity or {"cpu": "4", "memory": "16Gi", "pods": "110"}
        self.lease_duration, self.renew_interval = lease_duration, renew_interval
        self.register_concurrency = register_concurrency
        self.names = [f"{prefix}{i}" for i in range(count)]
        self.index = {n: i for i, n in enumerate(self.names)}
        self.leases = {n: NodeLease(client, n, duration=lease_duration) for n in self.names}
        self.next_ip: dict[str, int] = {}
        self.pods = self.watch(Informer(client.pods("")), self._key_if_ours)
        # a node the lifecycle controller marked Unknown while we were paused says Ready again,
        # as a kubelet does on its next status update
        self.nodes = self.watch(Informer(client.nodes()), self._node_key_if_not_ready)

    def node_ip(self, name: str) -> str:
        i = self.index[name]
        n = i + 1  # 127.100.0.1, 127.100.0.2, ...: loopback, unique per node
        return f"127.{100 + n // 65536}.{(n // 256) % 256}.{n % 256}"

    def pod_ip(self, name: str) -> str:
        """A fake address from the node's /24 of 10.244.0.0/14 (unique per node and pod)."""
        i = self.index[name]
        net = ipaddress.ip_network("10.244.0.0/14")
        base = int(net.network_address) + (i % 1024) * 256
        n = self.next_ip.get(name, 1)
        self.next_ip[name] = n % 253 + 1
        return str(ipaddress.ip_address(base + n + 1))

    def _key_if_ours(self, pod: v1.Pod):
        return meta.key_of(pod) if pod.spec.nodeName in self.index else None

    def _node_key_if_not_ready(self, node: v1.Node):
        if node.metadata.name not in self.index:
            return None
        ready = next((c for c in node.status.conditions if c.type == "Ready"), None)
        return None if ready is not None and ready.status == "True" else ("node", node.metadata.name)

    async def register(self) -> None:
        sem = asyncio.Semaphore(self.register_concurrency)

        async def one(name):
            async with sem:
                cfg = NodeConfig(name, self.node_ip(name), capacity=dict(self.capacity),
                                 labels={"type": "hollow"},
                                 node_info={"containerRuntimeVersion": "hollow://0.1",
                                            "osImage": "Hollow Node", "kernelVersion": "hollow"})
                node = await register_node(self.client, cfg)
                self.leases[name].node_uid = node.metadata.uid
                await self.leases[name].renew()
        await asyncio.gather(*(one(n) for n in self.names))
        log.info("registered %d hollow nodes", self.count)

    async def heartbeat(self) -> None:
        """Renew every lease once per interval, spread over the interval."""
        while True:
            gap = self.renew_interval / max(1, self.count)
            for name in self.names:
                asyncio.create_task(self._renew(name))
                await asyncio.sleep(gap)

    async def _renew(self, name: str) -> None:
        try:
            await self.leases[name].renew()
        except Exception as e:  # noqa: BLE001 - the next round retries
            log.debug("lease %s: %s", name, e)

    async def reconcile(self, key) -> float | None:
        if isinstance(key, tuple):
            return await self._report_ready(key[1])
        pod = self.pods.get(key)
        if pod is None or pod.spec.nodeName not in self.index:
            return None
        pods = self.client.pods(pod.metadata.namespace)
        if pod.metadata.deletionTimestamp:
            try:
                await pods.delete(pod.metadata.name, grace_period=0, uid=pod.metadata.uid)
            except NotFound:
                pass
            return None
        if pod.status.phase == "Running" and pod.status.podIP:
            return None
        node = pod.spec.nodeName
        pod.status.CopyFrom(running_status(pod, self.pod_ip(node), self.node_ip(node), meta.now()))
        try:
            await pods.update_status(pod)
        except (NotFound, Conflict):
            pass  # the informer will bring the newer version
        return None

    async def _report_ready(self, name: str) -> float | None:
        from worker.kubelet.nodestatus import set_healthy_conditions
        try:
            node = await self.client.nodes().get(name)
        except NotFound:
            return None
        set_healthy_conditions(node, meta.now())
        try:
            await self.client.nodes().update_status(node)
        except Conflict:
            return 0.5
        return None

    async def run(self) -> None:
        await self.register()
        hb = asyncio.create_task(self.heartbeat())
        try:
            await super().run()
        finally:
            hb.cancel()
            await asyncio.gather(hb, return_exceptions=True)


__all__ = ["HollowNodes"]
