"""The kubelet: the node agent. It registers its Node and keeps its Lease fresh, watches the
pods bound to it (field selector spec.nodeName) and the static pods in its manifest
directory, and runs one pod worker per pod that drives the container runtime (PodSyncer).
A relist of the runtime (PLEG) wakes the workers of pods whose containers changed; the
status manager writes what they report. On restart it adopts running containers: runc
containers outlive the kubelet, and everything it needs is in the runtime and the API.

Mirror pods are the API's read-only view of static pods: deleting one never touches the static
pod; the kubelet deletes that mirror at once (grace 0, uid precondition) and makes a new one, as
it does for an outdated mirror, and it deletes mirrors whose static pod is gone.
"""
from __future__ import annotations

import asyncio
import logging
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

from kubelab import meta
from kubelab.api.v1 import objects_pb2 as v1
from kubelab.client.client import Client
from kubelab.client.events import EventRecorder
from kubelab.client.informer import Informer
from kubelab.errors import AlreadyExists, Conflict, NotFound

from .backoff import Backoff
from .dns import DNSConfigurer
from .nodestatus import NodeConfig, NodeLease, fill_status, register_node, set_healthy_conditions
from .podsync import LABEL_UID, PodSyncer
from .podworkers import PodWorkers
from .staticpods import HASH_ANNOTATION, MIRROR_ANNOTATION, StaticPods, is_mirror, mirror_of
from .statusmanager import StatusManager

log = logging.getLogger("kubelet")


@dataclass
class KubeletConfig:
    node_name: str
    node_ip: str
    root_dir: Path = Path("/var/lib/kubelab")
    manifest_dir: Path = Path("/etc/kubelab/manifests")
    lease_duration: int = 40
    lease_renew_interval: float = 10.0
    status_interval: float = 10.0
    relist_interval: float = 1.0
    static_scan_interval: float = 2.0
    backoff_initial: float = 10.0
    backoff_max: float = 300.0
    labels: dict = field(default_factory=dict)
    taints: list = field(default_factory=list)  # [{key, value, effect}]: set when the Node is created
    port: int = 10250  # 0: any free port (several kubelets on one host, in tests)
    listen_address: str = "0.0.0.0"
    cluster_dns: list = field(default_factory=list)  # --cluster-dns: the pods' nameservers (ClusterFirst)
    cluster_domain: str = "cluster.local"
    resolv_conf: str = "/etc/resolv.conf"  # the node's resolver config, for dnsPolicy Default


def host_capacity() -> dict:
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    return {"cpu": str(os.cpu_count() or 1), "memory": f"{mem_kib}Ki", "pods": "110",
            "ephemeral-storage": "100Gi"}


def os_image() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return "Linux"


class Kubelet:
    def __init__(self, client: Client, cfg: KubeletConfig, *, runtime, images, network, runtime_version: str,
                 cluster_ca: bytes = b""):
        self.client, self.cfg, self.cluster_ca = client, cfg, cluster_ca
        self.runtime, self.images, self.network = runtime, images, network
        self.recorder = EventRecorder(client, "kubelet", cfg.node_name)
        self.status = StatusManager(client)
        self.syncer = PodSyncer(runtime=runtime, images=images, network=network, recorder=self.recorder,
                                status=self.status, root_dir=cfg.root_dir, node_ip=cfg.node_ip,
                                backoff=Backoff(cfg.backoff_initial, cfg.backoff_max),
                                pull_backoff=Backoff(cfg.backoff_initial, cfg.backoff_max),
                                dns=DNSConfigurer(cluster_dns=cfg.cluster_dns, cluster_domain=cfg.cluster_domain,
                                                  resolv_conf=cfg.resolv_conf))
        self.workers = PodWorkers(self.syncer.sync, self._terminate)
        self.pods = Informer(client.pods(""), field_selector=f"spec.nodeName={cfg.node_name}")
        self.static = StaticPods(cfg.manifest_dir, cfg.node_name)
        self.static_pods: dict[str, v1.Pod] = {}
        self._scanned = False  # static pods read once: until then no mirror is judged an orphan
        self._mirrors_dirty = asyncio.Event()
        self.lease = NodeLease(client, cfg.node_name, duration=cfg.lease_duration)
        self.node_cfg = NodeConfig(cfg.node_name, cfg.node_ip, capacity=host_capacity(), labels=dict(cfg.labels),
                                   taints=list(cfg.taints),
                                   node_info={"kernelVersion": platform.release(), "osImage": os_image(),
                                              "containerRuntimeVersion": runtime_version,
                                              "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(
                                                  platform.machine(), platform.machine())},
                                   kubelet_port=cfg.port)
        self.node: v1.Node | None = None
        self.pod_cidr = ""
        self._last_containers: dict[str, str] = {}

    def find_pod(self, namespace: str, name: str) -> v1.Pod | None:
        for pod in list(self.static_pods.values()) + self.pods.list():
            if pod.metadata.namespace == namespace and pod.metadata.name == name and not is_mirror(pod):
                return pod
        return None

    # -- the desired pods: API pods bound here, plus static pods --
    def _api_pod(self, pod: v1.Pod, deleted: bool = False) -> None:
        if is_mirror(pod):
            # a mirror marked for deletion, outdated, orphaned or gone: only the mirror changes,
            # never the static pod's containers
            self._mirrors_dirty.set()
            return
        self.workers.update(pod.metadata.uid, None if deleted else pod)

    async def _terminate(self, pod: v1.Pod | None, uid: str) -> None:
        await self.syncer.terminate(pod, uid)
        self.status.forget(uid)
        if pod is not None and pod.metadata.deletionTimestamp and uid not in self.static_pods:
            try:  # the containers are gone: confirm, and the API server removes the pod
                await self.client.pods(pod.metadata.namespace).delete(pod.metadata.name, grace_period=0, uid=uid)
            except NotFound:
                pass
            except Conflict:  # another pod of that name now: ours is gone already
                pass
            # anything else (the API server away) raises: the pod worker retries the confirmation

    async def _scan_static(self) -> None:
        while True:
            found = self.static.scan()
            for uid, pod in found.items():
                if uid not in self.static_pods:
                    log.info("static pod %s/%s from %s", pod.metadata.namespace, pod.metadata.name, self.cfg.manifest_dir)
                self.status.static.add(uid)
                self.workers.update(uid, pod)
            removed = set(self.static_pods) - set(found)
            self.static_pods = found  # before the mirrors are reconciled: they are judged against it
            for uid in removed:
                self.workers.update(uid, None)
                self.status.static.discard(uid)
            self._scanned = True
            self._mirrors_dirty.set()
            await asyncio.sleep(self.cfg.static_scan_interval)

    async def _mirror_loop(self) -> None:
        """Keep one current mirror pod per static pod, and none for static pods that are gone."""
        while True:
            await self._mirrors_dirty.wait()
            self._mirrors_dirty.clear()
            if not self._scanned:
                continue
            try:
                await self._reconcile_mirrors()
            except Exception as e:  # noqa: BLE001 - no API server yet: static pods run anyway
                log.debug("mirror pods: %s; retrying", e)
                await asyncio.sleep(1)
                self._mirrors_dirty.set()

    async def _reconcile_mirrors(self) -> None:
        wanted = {(p.metadata.namespace, p.metadata.name): p for p in self.static_pods.values()}
        if self.pods.synced.is_set():  # mirrors whose static pod is gone (the manifest was removed)
            for live in self.pods.list():
                key = (live.metadata.namespace, live.metadata.name)
                if is_mirror(live) and key not in wanted:
                    log.info("deleting mirror pod %s/%s: its static pod is gone", *key)
                    await self._delete_mirror(live)
        for (ns, name), pod in wanted.items():
            pods = self.client.pods(ns)
            try:
                live = await pods.get(name)
            except NotFound:
                live = None
            if live is not None:
                current = is_mirror(live) and live.metadata.annotations[MIRROR_ANNOTATION] == \
                    pod.metadata.annotations[HASH_ANNOTATION] and not live.metadata.deletionTimestamp
                if current:
                    continue
                if not is_mirror(live):
                    log.warning("pod %s/%s exists and is not a mirror pod: static pod %s not mirrored",
                                ns, name, pod.metadata.uid)
                    continue
                # deleted by someone (a graceful delete waits for us) or outdated: replace it
                await self._delete_mirror(live)
            try:
                await pods.create(mirror_of(pod))
            except AlreadyExists:
                self._mirrors_dirty.set()  # made again meanwhile: look once more

    async def _delete_mirror(self, live: v1.Pod) -> None:
        """Delete a mirror pod at once, and only the one we looked at (the uid precondition)."""
        try:
            await self.client.pods(live.metadata.namespace).delete(live.metadata.name, grace_period=0,
                                                                   uid=live.metadata.uid)
        except (NotFound, Conflict):
            pass  # gone already, or replaced

    # -- PLEG: relist the runtime, wake the workers of pods whose containers changed --
    async def _pleg(self) -> None:
        while True:
            try:
                containers = await self.runtime.list()
                now = {c.id: f"{c.state}/{c.exit_code}" for c in containers}
                changed = {c.labels.get(LABEL_UID) for c in containers if self._last_containers.get(c.id) != now[c.id]}
                changed |= {uid for cid, uid in self._uids.items() if cid not in now}
                self._uids = {c.id: c.labels.get(LABEL_UID) for c in containers}
                self._last_containers = now
                for uid in changed:
                    if uid:
                        self.workers.poke(uid)
                await self._housekeeping(containers)
            except Exception as e:  # noqa: BLE001
                log.warning("runtime relist failed: %s", e)
            await asyncio.sleep(self.cfg.relist_interval)

    _uids: dict = {}

    async def _housekeeping(self, containers) -> None:
        """Containers of pods that no source wants any more (deleted while we were down)."""
        if not self.pods.synced.is_set():
            return
        for uid in {c.labels.get(LABEL_UID) for c in containers} - {None}:
            if not self._wanted(uid):  # asked again for each: the loop awaits, pods come and go
                log.info("removing containers of pod %s, which no longer exists", uid)
                await self.syncer.terminate(None, uid, grace=2)
        for uid in await self.runtime.list_sandboxes():  # a teardown cut short by a restart
            if not self._wanted(uid):
                await self.syncer.terminate(None, uid, grace=0)

    def _wanted(self, uid: str) -> bool:
        return uid in self.workers.workers or uid in self.static_pods or any(
            p.metadata.uid == uid for p in self.pods.list())

    # -- node --
    async def _register(self) -> None:
        last = ""
        while True:
            try:
                self.node = await register_node(self.client, self.node_cfg)
                self.lease.node_uid = self.node.metadata.uid
                await self.lease.renew()
                log.info("registered node %s (%s)", self.cfg.node_name, self.cfg.node_ip)
                return
            except Exception as e:  # noqa: BLE001 - the API server may not be up yet
                # said once per distinct reason: on a control-plane node the wait is expected
                (log.info if str(e) != last else log.debug)("registering node %s: %s; retrying",
                                                            self.cfg.node_name, e)
                last = str(e)
                await asyncio.sleep(2)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.lease_renew_interval)
            try:
                await self.lease.renew()
            except Exception as e:  # noqa: BLE001
                log.debug("lease renewal: %s", e)

    async def _node_status(self) -> None:
        last_full = 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                node = await self.client.nodes().get(self.cfg.node_name)
                ready = next((c for c in node.status.conditions if c.type == "Ready"), None)
                if node.spec.podCIDR and node.spec.podCIDR != self.pod_cidr:
                    await self.network.ensure_bridge(node.spec.podCIDR)
                    self.pod_cidr = node.spec.podCIDR
                    for w in self.workers.workers.values():
                        w.wake.set()
                if ready is None or ready.status != "True" or loop.time() - last_full > 60:
                    fill_status(node, self.node_cfg)
                    set_healthy_conditions(node, meta.now())
                    await self.client.nodes().update_status(node)
                    last_full = loop.time()
            except Exception as e:  # noqa: BLE001
                log.debug("node status: %s", e)
            await asyncio.sleep(self.cfg.status_interval)

    async def _register_then_watch(self, tasks: list[asyncio.Task]) -> None:
        await self._register()
        self.pods.add_handler(self._api_pod, lambda old, new: self._api_pod(new),
                              lambda pod: self._api_pod(pod, deleted=True))
        tasks += [asyncio.create_task(self.pods.run(), name="pod-informer"),
                  asyncio.create_task(self._heartbeat(), name="lease"),
                  asyncio.create_task(self._node_status(), name="node-status")]
        await asyncio.gather(*tasks[-3:])

    async def _sync_when_network_ready(self, pod: v1.Pod) -> float | None:
        if not pod.spec.hostNetwork and not self.pod_cidr:
            return 1.0  # no podCIDR yet (the node IPAM controller gives one): wait
        return await self.syncer.sync(pod)

    async def run(self) -> None:
        from .server import SERVING_CERT_ANNOTATION, KubeletServer, serving_cert
        self.workers.sync = self._sync_when_network_ready
        ca, cert, key = serving_cert(self.cfg.root_dir, self.cfg.node_name, self.cfg.node_ip)
        self.node_cfg.annotations = {SERVING_CERT_ANNOTATION: ca.decode()}
        server = KubeletServer(self, cluster_ca=self.cluster_ca, listen=f"{self.cfg.listen_address}:{self.cfg.port}")
        port = await server.start(cert, key)
        self.node_cfg.kubelet_port = port
        log.info("kubelet API on %s:%d", self.cfg.listen_address, port)
        # Everything that needs only the runtime and the manifest directory starts at once: on a
        # control-plane node the API server is itself one of the static pods, so nothing here may
        # wait for it. What needs the API waits in the background for the registration.
        tasks = [asyncio.create_task(self.status.run(), name="status-manager"),
                 asyncio.create_task(self._scan_static(), name="static-pods"),
                 asyncio.create_task(self._mirror_loop(), name="mirror-pods"),
                 asyncio.create_task(self._pleg(), name="pleg")]
        try:
            tasks.append(asyncio.create_task(self._register_then_watch(tasks), name="register"))
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.workers.stop()
            await server.stop()
