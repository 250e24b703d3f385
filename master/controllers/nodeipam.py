"""The node IPAM controller: gives every node a /24 of the cluster CIDR (10.244.0.0/16 by
default) in node.spec.podCIDR, as kube-controller-manager's range allocator does. The
allocation lives in the Node itself, so it is stable across restarts; the lowest free range
is taken, and a deleted node's range becomes free again.
"""
from __future__ import annotations

import ipaddress
import logging

from kubelab.client.client import Client
from kubelab.client.controller import Controller
from kubelab.client.events import EventRecorder
from kubelab.client.informer import Informer
from kubelab.errors import Conflict, NotFound

log = logging.getLogger("nodeipam")


class NodeIpamController(Controller):
    name = "nodeipam"
    workers = 1  # one allocation at a time: two workers could hand out the same range

    def __init__(self, client: Client, *, cluster_cidr: str = "10.244.0.0/16", node_mask: int = 24):
        super().__init__()
        self.client = client
        self.cluster = ipaddress.ip_network(cluster_cidr)
        self.node_mask = node_mask
        self.nodes = self.watch(Informer(client.nodes()))
        self.recorder = EventRecorder(client, "node-ipam-controller")

    def used(self) -> set:
        out = set()
        for n in self.nodes.list():
            for c in list(n.spec.podCIDRs) + [n.spec.podCIDR]:
                if c:
                    try:
                        out.add(ipaddress.ip_network(c))
                    except ValueError:
                        pass
        return out

    def next_free(self):
        used = self.used()
        for subnet in self.cluster.subnets(new_prefix=self.node_mask):
            if subnet not in used:
                return subnet
        return None

    async def reconcile(self, name: str) -> float | None:
        node = self.nodes.get(name)
        if node is None or node.spec.podCIDR:
            return None
        subnet = self.next_free()
        if subnet is None:
            self.recorder.event(node, "Warning", "CIDRNotAvailable",
                                f"Node {name} status is now: CIDRNotAvailable")
            return 30.0
        try:
            fresh = await self.client.nodes().get(name)
        except NotFound:
            return None
        if fresh.spec.podCIDR:
            return None
        fresh.spec.podCIDR = str(subnet)
        del fresh.spec.podCIDRs[:]
        fresh.spec.podCIDRs.append(str(subnet))
        try:
            updated = await self.client.nodes().update(fresh)
        except Conflict:
            return 0.1  # the kubelet wrote meanwhile: read again
        self.nodes.store[name] = updated  # count it as used before the watch brings it
        log.info("node %s: podCIDR %s", name, subnet)
        self.recorder.event(updated, "Normal", "CIDRAssignmentSucceeded", f"Node {name} got podCIDR {subnet}")
        return None
