"""The node IPAM controller: gives every node a /24 of the cluster CIDR (10.244.0.0/16 by
default) in node.spec.podCIDR, as kube-controller-manager's range allocator does. The
allocation lives in the Node itself, so it is stable across restarts; the lowest free range
is taken, and a deleted node's range becomes free again.

When every range is in use, a node gets no podCIDR and a CIDRNotAvailable Warning event that
says how many ranges the cluster CIDR has; it is retried when a node is deleted (its range
is then free) and every 30 s.
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
RETRY_EXHAUSTED = 30.0  # seconds between looks for a range while none is free


class InvalidIpamConfig(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.detail = field, message


def parse_cluster_cidr(cluster_cidr: str, node_mask: int, *, names: dict[str, str] | None = None):
    """The cluster CIDR as a network, checked against the per-node mask size."""
    n = {"cluster_cidr": "cluster_cidr", "node_mask": "node_mask", **(names or {})}
    try:
        net = ipaddress.ip_network(cluster_cidr)
    except ValueError as e:
        raise InvalidIpamConfig(n["cluster_cidr"], f"{cluster_cidr!r} is not a CIDR: {e}") from None
    if not net.prefixlen <= node_mask <= net.max_prefixlen:
        raise InvalidIpamConfig(n["node_mask"], f"must be between the cluster CIDR's prefix length "
                                                f"{net.prefixlen} and {net.max_prefixlen} (got {node_mask})")
    return net


class NodeIpamController(Controller):
    name = "nodeipam"
    workers = 1  # one allocation at a time: two workers could hand out the same range

    def __init__(self, client: Client, *, cluster_cidr: str = "10.244.0.0/16", node_mask: int = 24):
        super().__init__()
        self.client = client
        self.cluster = parse_cluster_cidr(cluster_cidr, node_mask)
        self.node_mask = node_mask
        self.capacity = 2 ** (node_mask - self.cluster.prefixlen)
        self.waiting: set[str] = set()  # nodes told CIDRNotAvailable: look again when a range frees
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
        if node is None:  # deleted: its range is free now, for whoever is waiting
            self.waiting.discard(name)
            for waiting in sorted(self.waiting):
                self.queue.add(waiting)
            return None
        if node.spec.podCIDR:
            self.waiting.discard(name)
            return None
        subnet = self.next_free()
        if subnet is None:
            self.waiting.add(name)
            log.warning("node %s: no podCIDR left in %s", name, self.cluster)
            self.recorder.event(node, "Warning", "CIDRNotAvailable",
                                f"Node {name} status is now: CIDRNotAvailable: all {self.capacity} "
                                f"/{self.node_mask} ranges of the cluster CIDR {self.cluster} are in use")
            return RETRY_EXHAUSTED
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
        self.waiting.discard(name)
        log.info("node %s: podCIDR %s", name, subnet)
        self.recorder.event(updated, "Normal", "CIDRAssignmentSucceeded", f"Node {name} got podCIDR {subnet}")
        return None
