"""A control-plane node's first minute: the kubelet starts before any API server exists (on a
kubeadm node the API server is one of its static pods), runs the static pods from its manifest
directory through the runtime daemon (`kubelab runtime`, as the node services run it), restarts
a failing one, and registers its Node, its Lease and the mirror pods once the API answers, as
the node itself (system:node:NAME, the identity kubeadm's kubelet.conf holds).

Everything is the real thing: PKI and admin.conf from master.controlplane.setup, the runtime
daemon and the kubelet as processes, runc containers, then `kubelab control-plane` on the port
the kubelet's config has named all along. The teardown stops every process and removes the
containers, the cgroups and the bridge, pass or fail."""
from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
from pathlib import Path

import pytest

from kubelab import pki
from kubelab.client.config import ClientConfig, write_config
from master import controlplane
from worker.kubelet.podsync import LABEL_ATTEMPT, LABEL_CONTAINER, LABEL_NAME
from worker.kubelet.reset import reset_node
from worker.kubelet.staticpods import MIRROR_ANNOTATION
from worker.runtime import cgroups
from worker.runtime.remote import RemoteRuntime
from worker.runtime.runtime import ContainerError

from .conftest import KUBELAB, ROOT, free_port, launch_control_plane, stop_control_plane, stop_group, wait_for
from .test_runtime_daemon import leftovers

NODE = "klp-static"
# the node's bridge gets the podCIDR in the host's namespace: never a lab's 10.244.0.0/16
CLUSTER_CIDR = "10.203.0.0/16"
STATIC_POD = """
apiVersion: v1
kind: Pod
metadata: {name: sentinel, namespace: kube-system, labels: {tier: control-plane}}
spec:
  hostNetwork: true
  terminationGracePeriodSeconds: 1
  containers:
  - name: serve
    image: busybox
    imagePullPolicy: Never
    command: [sleep, "3600"]
  - name: flaky
    image: busybox
    imagePullPolicy: Never
    command: [sh, -c, "sleep 1; exit 1"]
"""


class Node:
    """The node's directories and processes; the control plane comes later, on `port`."""

    def __init__(self, base: Path):
        self.base, self.root, self.img = base, base / "node", base / "img"
        self.runc_root, self.manifests = base / "node" / "runc", base / "manifests"
        self.sock = base / "rt.sock"
        self.endpoint = f"unix://{self.sock}"
        self.cgroup_parent = "/klp-static-" + secrets.token_hex(3)
        self.bridge = "klps" + secrets.token_hex(3)
        self.port = free_port()
        self.env = dict(os.environ, PYTHONPATH=str(ROOT), KUBELAB_CONFIG=str(base / "admin.conf"))
        self.procs: list[subprocess.Popen] = []
        self.cp = None

    def spawn(self, args: list[str], log: str) -> subprocess.Popen:
        with open(self.base / log, "ab") as out:
            p = subprocess.Popen(KUBELAB + args, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        self.procs.append(p)
        return p

    def log(self, name: str) -> str:
        try:
            return (self.base / name).read_text()[-3000:]
        except OSError:
            return ""

    def api_answers(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    n = Node(tmp_path_factory.mktemp("static"))
    try:
        controlplane.setup(n.base, f"127.0.0.1:{n.port}")  # PKI and admin.conf, no process yet
        # the kubelet as the node, as kubeadm's kubelet.conf makes it: system:node:NAME in system:nodes
        ca, ca_key = (n.base / "pki" / "ca.crt").read_bytes(), (n.base / "pki" / "ca.key").read_bytes()
        cert, key = pki.issue_cert(ca, ca_key, f"system:node:{NODE}", organizations=["system:nodes"])
        write_config(n.base / "kubelet.conf", ClientConfig(server=f"127.0.0.1:{n.port}", ca_pem=ca, cert_pem=cert,
                                                           key_pem=key), user=f"system:node:{NODE}")
        subprocess.run(KUBELAB + ["image", "build-busybox", "--root-dir", str(n.img)], check=True,
                       env=n.env, capture_output=True)
        n.manifests.mkdir()
        (n.manifests / "sentinel.yaml").write_text(STATIC_POD)
        n.spawn(["runtime", "--root-dir", str(n.root), "--image-dir", str(n.img), "--runc-root", str(n.runc_root),
                 "--cgroup-parent", n.cgroup_parent, "--listen", n.endpoint], "runtime.log")
        n.kubelet = n.spawn(
            ["kubelet", "--config", str(n.base / "kubelet.conf"), "--node-name", NODE, "--node-ip", "127.0.0.1", "--port", "0", "--root-dir", str(n.root),
             "--manifest-dir", str(n.manifests), "--bridge", n.bridge, "--cluster-cidr", CLUSTER_CIDR,
             "--container-runtime-endpoint", n.endpoint,
             "--lease-duration", "4", "--lease-renew-interval", "1", "--node-status-interval", "1",
             "--backoff-initial", "1", "--backoff-max", "2", "-v", "2",
             "--node-labels", "node-role.kubernetes.io/control-plane=",
             "--register-with-taints", "node-role.kubernetes.io/control-plane:NoSchedule"], "kubelet.log")
        yield n
    finally:
        try:
            for p in reversed(n.procs):  # the kubelet first, the runtime daemon last
                stop_group(p)
            if n.cp is not None:
                stop_control_plane(n.cp)
        finally:
            asyncio.run(reset_node(n.root, bridge=n.bridge, image_dir=n.img, runc_root=n.runc_root,
                                   cgroup_parent=n.cgroup_parent))
            busy = cgroups.remove(n.cgroup_parent)
    left = leftovers(n.base, n.runc_root, n.cgroup_parent) + [f"cgroup {b} is busy" for b in busy]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    left += [f"bridge {n.bridge}"] if f" {n.bridge}:" in links else []
    assert not left, f"the node left behind: {left}"


async def sentinel_containers(n: Node) -> dict[str, list]:
    rt = RemoteRuntime(n.endpoint)
    try:
        out: dict[str, list] = {}
        try:
            listed = await rt.list()
        except ContainerError:  # the daemon is not listening yet
            return out
        for c in listed:
            if c.labels.get(LABEL_NAME) == f"sentinel-{NODE}":
                out.setdefault(c.labels[LABEL_CONTAINER], []).append(c)
        return out
    finally:
        await rt.close()


async def test_static_pods_run_before_any_api_server(node):
    assert not node.api_answers()

    async def serving_and_restarted():
        assert node.kubelet.poll() is None, f"the kubelet exited: {node.log('kubelet.log')}"
        cs = await sentinel_containers(node)
        serve = [c for c in cs.get("serve", []) if c.state == "running"]
        attempts = {int(c.labels[LABEL_ATTEMPT]) for c in cs.get("flaky", [])}
        return serve and attempts and max(attempts) >= 1 and cs
    await wait_for(serving_and_restarted, 60, interval=0.5,
                   what="the static pod running, and its failing container restarted, with no API server")
    assert not node.api_answers()
    assert "registering node klp-static" in node.log("kubelet.log")  # it tried, and goes on trying


async def test_node_lease_and_mirror_pod_once_the_api_server_answers(node):
    node.cp = launch_control_plane(node.base, "--node-monitor-grace-period", "5", "--node-monitor-period", "1",
                                   "--cluster-cidr", CLUSTER_CIDR, port=node.port)
    async with node.cp.client() as c:
        async def ready():
            n = await c.nodes().get(NODE)
            return any(x.type == "Ready" and x.status == "True" for x in n.status.conditions) and n.spec.podCIDR and n
        n = await wait_for(ready, 60, interval=0.5, what=f"node {NODE} registered and Ready")
        assert n.spec.podCIDR.startswith("10.203.")
        assert "node-role.kubernetes.io/control-plane" in n.metadata.labels  # as kubeadm marks it
        assert [(t.key, t.effect) for t in n.spec.taints if t.key.startswith("node-role")] == \
            [("node-role.kubernetes.io/control-plane", "NoSchedule")]
        lease = await wait_for(lambda: c.leases("kube-node-lease").get(NODE), 30, what="the node's Lease")
        assert lease.spec.holderIdentity == NODE

        async def mirror_running():
            p = await c.pods("kube-system").get(f"sentinel-{NODE}")
            running = {s.name for s in p.status.containerStatuses if s.state.HasField("running")}
            return p.status.phase == "Running" and "serve" in running and p
        mirror = await wait_for(mirror_running, 60, interval=0.5, what="the mirror pod with the static pod's status")
        assert MIRROR_ANNOTATION in mirror.metadata.annotations
        assert mirror.spec.nodeName == NODE and mirror.metadata.labels["tier"] == "control-plane"
        flaky = next(s for s in mirror.status.containerStatuses if s.name == "flaky")
        assert flaky.restartCount >= 1  # the restarts made before the API existed count
    assert node.kubelet.poll() is None
