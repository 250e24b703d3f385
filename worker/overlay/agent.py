"""The overlay agent's control loop (flanneld with the kube subnet manager and the VXLAN
backend): a Node informer whose handlers only enqueue one key, and a reconcile that reads the
whole desired state (this node's podCIDR and underlay, every other node's VTEP annotations)
and the whole actual state (the device and its entries, read back from the kernel) and
drives the one toward the other. Nothing is remembered between passes, so a restarted agent
converges to the same entries: no duplicates, no leftovers.

One pass:
1. this node's Node and spec.podCIDR (nodeipam assigns it; until then the agent waits);
2. the underlay (--iface / --node-ip, else the Node's InternalIP, else the default route);
3. flannel.1 (VNI, port 8472, local = the underlay IP, MTU 50 below the underlay's, the /32);
4. this node's annotations (backend-type, backend-data with the VTEP MAC, public-ip);
5. for every other node: route, neighbour and FDB entry, from peers.plan().
A periodic resync repairs whatever changed behind the agent's back.
"""
from __future__ import annotations

import ipaddress
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from kubelab.api.v1 import objects_pb2 as v1
from kubelab.client.client import Client
from kubelab.client.controller import Controller
from kubelab.client.informer import Informer
from kubelab.client.workqueue import WorkQueue
from worker.overlay import peers as pe
from worker.overlay.netlink import VXLAN_OVERHEAD, Netlink, UnderlayError, VxlanSpec, pick_underlay

log = logging.getLogger(__name__)
KEY = "overlay"


@dataclass
class OverlayConfig:
    node_name: str
    iface: str = ""
    node_ip: str = ""
    device: str = "flannel.1"
    vni: int = 1
    port: int = 8472
    cluster_cidr: str = "10.244.0.0/16"
    resync: float = 30.0
    # flannel's subnet file, which CNI's flannel plugin reads: the pods' MTU comes from here
    subnet_file: Path | None = Path("/run/flannel/subnet.env")


class OverlayAgent(Controller):
    name = "overlay"
    workers = 1  # one key, one pass at a time

    def __init__(self, client: Client, cfg: OverlayConfig, netlink: Netlink | None = None):
        super().__init__()
        self.queue = WorkQueue(base_delay=0.2, max_delay=10.0)
        self.client, self.cfg = client, cfg
        self.netlink = netlink or Netlink()
        self.cluster_cidr = ipaddress.IPv4Network(cfg.cluster_cidr)
        self.nodes: Informer[v1.Node] = self.watch(Informer(client.nodes()), key_fn=lambda _: KEY)
        self._waiting = "starting"  # the last "waiting for" message, logged once per change
        self._problems: dict[str, str] = {}
        self.passes = 0

    def _wait(self, why: str) -> float:
        if why != self._waiting:
            log.warning("overlay: %s", why)
            print(f"overlay: {why}", flush=True)
            self._waiting = why
        return self.cfg.resync

    async def reconcile(self, key) -> float | None:
        cfg = self.cfg
        node = self.nodes.get(cfg.node_name)
        if node is None:
            return self._wait(f'waiting for node "{cfg.node_name}" to be registered')
        try:
            subnet = pe.node_pod_cidr(node, self.cluster_cidr)
        except pe.InvalidPeer as e:
            return self._wait(f"waiting: {e}")
        interfaces, default = await self.netlink.interfaces()
        try:
            underlay = self._underlay(interfaces, default, node)
        except UnderlayError as e:
            return self._wait(str(e))
        mac = pe.vtep_mac(cfg.node_name)
        device = await self.netlink.ensure_vxlan(VxlanSpec(
            cfg.device, cfg.vni, cfg.port, underlay.ip, underlay.index, underlay.mtu - VXLAN_OVERHEAD,
            pe.vtep_ip(subnet), mac))
        self.netlink.ensure_forwarding()
        self._write_subnet_file(subnet, underlay.mtu - VXLAN_OVERHEAD)
        await self._publish(node, pe.own_annotations(device.mac, str(underlay.ip), cfg.vni))
        peers, problems = pe.desired_peers(self.nodes.list(), cfg.node_name, vni=cfg.vni,
                                           cluster_cidr=self.cluster_cidr)
        for name, why in problems.items():
            if self._problems.get(name) != why:
                log.warning("overlay: leaving node %s out: %s", name, why)
        self._problems = problems
        have = await self.netlink.entries(device.index)
        plan = pe.plan(pe.entries_for(peers), have)
        if not plan.empty():
            await self.netlink.apply(device.index, plan)
            log.info("overlay: %d peers; removed %d/%d/%d and added %d/%d/%d routes/neighbours/fdb entries",
                     len(peers), *plan.delete.counts(), *plan.add.counts())
        if self._waiting:
            print(f"overlay: {cfg.device} up on {underlay.name} ({underlay.ip}), subnet {subnet}", flush=True)
            self._waiting = ""
        self.passes += 1
        return cfg.resync

    def _write_subnet_file(self, subnet, mtu: int) -> None:
        """/run/flannel/subnet.env as flanneld writes it, replaced whole and only on change.
        IPMASQ is false: the masquerade rule is worker/network's (the kubelet's), not ours."""
        path = self.cfg.subnet_file
        if path is None:
            return
        text = (f"FLANNEL_NETWORK={self.cluster_cidr}\nFLANNEL_SUBNET={subnet.network_address + 1}/{subnet.prefixlen}\n"
                f"FLANNEL_MTU={mtu}\nFLANNEL_IPMASQ=false\n")
        try:
            if path.read_text() == text:
                return
        except OSError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)

    def _underlay(self, interfaces, default: str, node: v1.Node):
        cfg = self.cfg
        if cfg.iface or cfg.node_ip:
            return pick_underlay(interfaces, iface=cfg.iface, node_ip=cfg.node_ip)
        internal = next((a.address for a in node.status.addresses if a.type == "InternalIP"), "")
        if internal:
            try:
                return pick_underlay(interfaces, node_ip=internal)
            except UnderlayError:
                pass  # a kubelet that guessed its address; the default route's interface then
        return pick_underlay(interfaces, default_iface=default)

    async def _publish(self, node: v1.Node, want: dict[str, str]) -> None:
        """Write this node's VTEP annotations when they differ. A Conflict (the kubelet updated
        the Node meanwhile) fails the pass, which is retried with the informer's newer copy."""
        ann = node.metadata.annotations
        if all(ann.get(k) == v for k, v in want.items()):
            return
        fresh = v1.Node()
        fresh.CopyFrom(node)
        fresh.metadata.annotations.update(want)
        await self.client.nodes().update(fresh)
        log.info("overlay: published VTEP %s at %s on node %s", want[pe.BACKEND_DATA], want[pe.PUBLIC_IP],
                 node.metadata.name)
