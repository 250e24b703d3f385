"""Node registration, node status and the node Lease: the kubelet's heartbeat.

The kubelet (and the hollow nodes that stand in for it in scale tests) register their Node,
keep a Lease in kube-node-lease renewed (the cheap heartbeat the node lifecycle controller
watches), and write the node's status (conditions, addresses, capacity) when it changes or
every report interval.
"""
from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Callable

from kubelab import meta
from kubelab.api.v1 import objects_pb2 as v1
from kubelab.client.client import Client
from kubelab.errors import AlreadyExists, Conflict, NotFound

log = logging.getLogger(__name__)
KUBELET_VERSION = "v1.32.0-kubelab"
NODE_LEASE_NAMESPACE = "kube-node-lease"


@dataclass
class NodeConfig:
    name: str
    internal_ip: str = ""
    capacity: dict = field(default_factory=lambda: {"cpu": "4", "memory": "16Gi", "pods": "110",
                                                    "ephemeral-storage": "100Gi"})
    allocatable: dict | None = None
    labels: dict = field(default_factory=dict)
    taints: list = field(default_factory=list)
    node_info: dict = field(default_factory=dict)
    kubelet_port: int = 10250
    annotations: dict = field(default_factory=dict)


def build_node(cfg: NodeConfig) -> v1.Node:
    node = v1.Node()
    node.metadata.name = cfg.name
    node.metadata.labels.update({"kubernetes.io/hostname": cfg.name, "kubernetes.io/os": "linux",
                                 "kubernetes.io/arch": cfg.node_info.get("architecture", "amd64"),
                                 **cfg.labels})
    node.metadata.annotations.update(cfg.annotations)
    for t in cfg.taints:
        node.spec.taints.add(**t)
    fill_status(node, cfg)
    return node


def fill_status(node: v1.Node, cfg: NodeConfig) -> None:
    st = node.status
    st.capacity.clear()
    st.capacity.update(cfg.capacity)
    st.allocatable.clear()
    st.allocatable.update(cfg.allocatable or cfg.capacity)
    del st.addresses[:]
    if cfg.internal_ip:
        st.addresses.add(type="InternalIP", address=cfg.internal_ip)
    st.addresses.add(type="Hostname", address=cfg.name)
    info = {"kubeletVersion": KUBELET_VERSION, "kubeProxyVersion": KUBELET_VERSION,
            "operatingSystem": "linux", "architecture": "amd64", **cfg.node_info}
    st.nodeInfo.Clear()
    for k, v in info.items():
        setattr(st.nodeInfo, k, v)
    st.daemonEndpoints.kubeletEndpoint.Port = cfg.kubelet_port


def set_condition(node: v1.Node, ctype: str, status: str, reason: str, message: str,
                  now: dt.datetime) -> bool:
    """Set a node condition; True when its status changed (a transition)."""
    ts = meta.rfc3339(now)
    for c in node.status.conditions:
        if c.type == ctype:
            changed = c.status != status
            if changed:
                c.lastTransitionTime = ts
            c.status, c.reason, c.message, c.lastHeartbeatTime = status, reason, message, ts
            return changed
    node.status.conditions.add(type=ctype, status=status, reason=reason, message=message,
                               lastHeartbeatTime=ts, lastTransitionTime=ts)
    return True


def set_healthy_conditions(node: v1.Node, now: dt.datetime, *, ready: bool = True,
                           not_ready_message: str = "container runtime is down") -> None:
    for ctype, reason, msg in (("MemoryPressure", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                               ("DiskPressure", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                               ("PIDPressure", "KubeletHasSufficientPID", "kubelet has sufficient PID available")):
        set_condition(node, ctype, "False", reason, msg, now)
    if ready:
        set_condition(node, "Ready", "True", "KubeletReady", "kubelet is posting ready status", now)
    else:
        set_condition(node, "Ready", "False", "KubeletNotReady", not_ready_message, now)


async def register_node(client: Client, cfg: NodeConfig, *, clock: Callable[[], dt.datetime] = meta.now) -> v1.Node:
    """Create the Node, or adopt the existing one (a restarted kubelet) and refresh its status."""
    node = build_node(cfg)
    set_healthy_conditions(node, clock())
    nodes = client.nodes()
    try:
        created = await nodes.create(node)
        return await nodes.update_status(_with_status(created, node))
    except (AlreadyExists, Conflict):
        pass  # it exists (a restarted kubelet), or changed under us (nodeipam set podCIDR): adopt it
    for _ in range(10):
        live = await nodes.get(cfg.name)
        for k, v in node.metadata.labels.items():
            live.metadata.labels[k] = v
        live.metadata.annotations.update(cfg.annotations)
        try:
            live = await nodes.update(live)
            fill_status(live, cfg)
            set_healthy_conditions(live, clock())
            return await nodes.update_status(live)
        except Conflict:
            continue
    raise Conflict(f'nodes "{cfg.name}": could not register after repeated conflicts')


def _with_status(live: v1.Node, desired: v1.Node) -> v1.Node:
    """The status a fresh registration posts (create leaves status to the status verb)."""
    live.status.CopyFrom(desired.status)
    return live


class NodeLease:
    """The node's Lease in kube-node-lease, renewed by `renew()` every renew interval."""

    def __init__(self, client: Client, node_name: str, *, duration: int = 40,
                 clock: Callable[[], dt.datetime] = meta.now):
        self.leases = client.leases(NODE_LEASE_NAMESPACE)
        self.node_name, self.duration, self.clock = node_name, duration, clock
        self.lease: v1.Lease | None = None
        self.node_uid = ""

    async def renew(self) -> v1.Lease:
        now = meta.rfc3339_micro(self.clock())
        if self.lease is not None:
            self.lease.spec.renewTime = now
            try:
                self.lease = await self.leases.update(self.lease)
                return self.lease
            except (Conflict, NotFound):
                self.lease = None  # someone touched it: start from the live object
        try:
            lease = await self.leases.get(self.node_name)
        except NotFound:
            lease = v1.Lease()
            lease.metadata.name = self.node_name
            lease.metadata.namespace = NODE_LEASE_NAMESPACE
            if self.node_uid:
                lease.metadata.ownerReferences.add(apiVersion="v1", kind="Node", name=self.node_name,
                                                   uid=self.node_uid)
            lease.spec.holderIdentity = self.node_name
            lease.spec.leaseDurationSeconds = self.duration
            lease.spec.renewTime = now
            self.lease = await self.leases.create(lease)
            return self.lease
        lease.spec.holderIdentity = self.node_name
        lease.spec.leaseDurationSeconds = self.duration
        lease.spec.renewTime = now
        self.lease = await self.leases.update(lease)
        return self.lease
