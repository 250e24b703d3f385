"""The kubelet end to end: a real control plane, a real kubelet process running real runc
containers in real network namespaces, all driven through the API and the CLI.

Everything the tests make is removed at the end, even when a test fails: the pods through
the API, then whatever the runtime and the pod network still hold, then the bridge."""
from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import time

import pytest

from kubelab.api.v1 import objects_pb2 as v1
from kubelab.cli.manifest import parse_doc
from kubelab.errors import NotFound
from worker.kubelet.reset import reset_node

from .conftest import KUBELAB, launch_control_plane, stop_control_plane, stop_group, wait_for
from .test_runtime import registry  # noqa: F401 - the local registry fixture

import yaml

NODE = "kl-test-node"


class Node:
    def __init__(self, cp, root):
        self.cp, self.root = cp, root
        self.bridge = "kltest" + secrets.token_hex(3)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = self.cp.start(
            "kubelet", "--node-name", NODE, "--node-ip", "127.0.0.1", "--port", "0",
            "--root-dir", str(self.root), "--image-dir", str(self.root / "img"),
            "--manifest-dir", str(self.root / "manifests"), "--bridge", self.bridge,
            "--lease-duration", "4", "--lease-renew-interval", "1", "--node-status-interval", "1",
            "--backoff-initial", "1", "--backoff-max", "4", "-v", "2", log="kubelet.log")

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)
            self.cp.children.remove(self.proc)
            self.proc = None

    def log(self) -> str:
        return (self.cp.data_dir / "kubelet.log").read_text()[-3000:]


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    d = tmp_path_factory.mktemp("kubelet")
    cp = launch_control_plane(d, "--node-monitor-grace-period", "5", "--node-monitor-period", "1")
    n = Node(cp, d / "node")
    try:
        subprocess.run(KUBELAB + ["image", "build-busybox", "--root-dir", str(n.root / "img")], check=True,
                       env=cp.env, capture_output=True)
        n.start()
        yield n
    finally:
        try:
            subprocess.run(KUBELAB + ["delete", "pods", "--all", "--grace-period", "0", "--timeout", "30"],
                           env=cp.env, capture_output=True, timeout=60)
        except Exception:  # noqa: BLE001
            pass
        n.stop()
        stop_control_plane(cp)
        asyncio.run(reset_node(n.root, bridge=n.bridge, image_dir=n.root / "img"))


def pod_from(text: str) -> v1.Pod:
    return parse_doc(yaml.safe_load(text), "test", 1)


async def create(client, text: str) -> v1.Pod:
    return await client.pods("default").create(pod_from(text))


async def running(client, name: str, timeout: float = 60):
    async def ok():
        p = await client.pods("default").get(name)
        return p.status.phase == "Running" and all(c.ready for c in p.status.containerStatuses) and p
    return await wait_for(ok, timeout, what=f"pod {name} Running and ready")


async def gone(client, name: str, timeout: float = 60):
    async def ok():
        try:
            await client.pods("default").get(name)
            return False
        except NotFound:
            return True
    await wait_for(ok, timeout, what=f"pod {name} gone")


async def events_of(client, name: str) -> list[str]:
    evs = (await client.events("default").list(field_selector=f"involvedObject.name={name}")).items
    return [f"{e.reason}: {e.message}" for e in evs]


async def test_node_registers_ready_with_a_pod_cidr(node):
    async with node.cp.client() as c:
        async def ready():
            n = await c.nodes().get(NODE)
            return any(x.type == "Ready" and x.status == "True" for x in n.status.conditions) and n.spec.podCIDR and n
        n = await wait_for(ready, 60, what="node Ready with a podCIDR")
        assert n.status.nodeInfo.containerRuntimeVersion.startswith("runc://")
        assert n.status.capacity["cpu"] == str(os.cpu_count())
        lease = await wait_for(lambda: c.leases("kube-node-lease").get(NODE), 30, what="the node's Lease")
        assert lease.spec.holderIdentity == NODE and lease.spec.leaseDurationSeconds == 4


async def test_containers_share_localhost_and_an_emptydir(node):
    async with node.cp.client() as c:
        await create(c, """
apiVersion: v1
kind: Pod
metadata: {name: duo}
spec:
  terminationGracePeriodSeconds: 2
  volumes: [{name: logs, emptyDir: {}}]
  containers:
  - name: web
    image: busybox
    imagePullPolicy: IfNotPresent
    command: [sh, -c, "mkdir -p /www; echo hello-from-web > /www/index.html; (while true; do echo line >> /var/log/app/app.log; sleep 1; done) & exec httpd -f -p 8080 -h /www"]
    volumeMounts: [{name: logs, mountPath: /var/log/app}]
  - name: client
    image: busybox
    imagePullPolicy: IfNotPresent
    command: [sh, -c, "while true; do wget -qO- http://localhost:8080/; sleep 1; done"]
  - name: sidecar
    image: busybox
    imagePullPolicy: IfNotPresent
    command: [sh, -c, "tail -F /logs/app.log"]
    volumeMounts: [{name: logs, mountPath: /logs}]
""")
        pod = await running(c, "duo")
        assert pod.status.podIP.startswith("10.244.")
        k = node.cp.kubelab
        await wait_for(lambda: "hello-from-web" in k("logs", "duo", "-c", "client", check=False).stdout, 20,
                       what="client reaching web over localhost")
        await wait_for(lambda: "line" in k("logs", "duo", "-c", "sidecar", check=False).stdout, 20,
                       what="sidecar reading the app log through the emptyDir")
        assert k("exec", "duo", "-c", "web", "--", "hostname").stdout.strip() == "duo"
        r = k("exec", "duo", "-c", "web", "--", "sh", "-c", "exit 7", check=False)
        assert r.returncode == 7
        r = k("logs", "duo", check=False)
        assert r.returncode == 1 and "a container name must be specified for pod duo" in r.stderr
        ip = k("exec", "duo", "-c", "client", "--", "wget", "-qO-", f"http://{pod.status.podIP}:8080/").stdout
        assert "hello-from-web" in ip
        evs = await events_of(c, "duo")
        assert any(e.startswith("Started: Started container web") for e in evs)
        t0 = time.monotonic()
        await c.pods("default").delete("duo")
        await gone(c, "duo", 30)
        assert time.monotonic() - t0 < 25


async def test_restart_backoff_and_policies(node):
    async with node.cp.client() as c:
        for name, policy, code in (("crash", "Always", 3), ("once", "Never", 1), ("done", "OnFailure", 0)):
            await create(c, f"""
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  restartPolicy: {policy}
  containers: [{{name: c, image: busybox, imagePullPolicy: Never, command: [sh, -c, "echo run; exit {code}"]}}]
""")

        async def crashlooping():
            p = await c.pods("default").get("crash")
            cs = p.status.containerStatuses[0] if p.status.containerStatuses else None
            return cs is not None and cs.restartCount >= 2 and cs.lastState.terminated.exitCode == 3 and cs
        cs = await wait_for(crashlooping, 60, what="crash restarted twice")
        assert cs.lastState.terminated.reason == "Error"
        await wait_for(lambda: _waiting_reason(c, "crash", "CrashLoopBackOff"), 30, what="CrashLoopBackOff shown")
        assert any(e.startswith("BackOff: Back-off restarting failed container c") for e in await events_of(c, "crash"))
        await wait_for(lambda: _phase(c, "once", "Failed"), 30, what="Never + exit 1 -> Failed")
        await wait_for(lambda: _phase(c, "done", "Succeeded"), 30, what="OnFailure + exit 0 -> Succeeded")
        assert (await c.pods("default").get("done")).status.containerStatuses[0].state.terminated.reason == "Completed"
        for name in ("crash", "once", "done"):
            await c.pods("default").delete(name, grace_period=0)


async def test_oom_killed(node):
    async with node.cp.client() as c:
        await create(c, """
apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  restartPolicy: Never
  containers:
  - name: hog
    image: busybox
    imagePullPolicy: Never
    command: [sh, -c, "x=$(head -c 200000000 /dev/zero | tr '\\\\0' a); echo survived"]
    resources: {limits: {memory: 32Mi}}
""")

        async def oom():
            p = await c.pods("default").get("hog")
            cs = p.status.containerStatuses
            return cs and cs[0].state.terminated.reason == "OOMKilled" and cs[0]
        cs = await wait_for(oom, 60, what="OOMKilled")
        assert cs.state.terminated.exitCode == 137
        await c.pods("default").delete("hog", grace_period=0)


async def test_init_containers_sidecars_and_probes(node):
    async with node.cp.client() as c:
        await create(c, """
apiVersion: v1
kind: Pod
metadata: {name: layered}
spec:
  volumes: [{name: work, emptyDir: {}}]
  initContainers:
  - {name: prepare, image: busybox, imagePullPolicy: Never, command: [sh, -c, "echo prepared > /work/state"],
     volumeMounts: [{name: work, mountPath: /work}]}
  - {name: helper, image: busybox, imagePullPolicy: Never, restartPolicy: Always, command: [sh, -c, "sleep 3600"]}
  containers:
  - name: app
    image: busybox
    imagePullPolicy: Never
    command: [sh, -c, "cat /work/state; exec sleep 3600"]
    volumeMounts: [{name: work, mountPath: /work}]
    readinessProbe: {exec: {command: [test, -f, /tmp/ready]}, periodSeconds: 1, failureThreshold: 1}
""")

        async def up_not_ready():
            p = await c.pods("default").get("layered")
            return p.status.phase == "Running" and p
        p = await wait_for(up_not_ready, 60, what="layered Running")
        assert [s.state.terminated.reason for s in p.status.initContainerStatuses[:1]] == ["Completed"]
        assert not next(x for x in p.status.conditions if x.type == "Ready").status == "True"
        assert "prepared" in node.cp.kubelab("logs", "layered", "-c", "app").stdout
        node.cp.kubelab("exec", "layered", "-c", "app", "--", "touch", "/tmp/ready")

        async def ready():
            p = await c.pods("default").get("layered")
            return next(x for x in p.status.conditions if x.type == "Ready").status == "True"
        await wait_for(ready, 30, what="readiness probe passing makes the pod Ready")

        await create(c, """
apiVersion: v1
kind: Pod
metadata: {name: sick}
spec:
  containers:
  - name: app
    image: busybox
    imagePullPolicy: Never
    command: [sh, -c, "sleep 3600"]
    livenessProbe: {tcpSocket: {port: 9999}, periodSeconds: 1, failureThreshold: 2}
""")

        async def restarted():
            p = await c.pods("default").get("sick")
            return p.status.containerStatuses and p.status.containerStatuses[0].restartCount >= 1
        await wait_for(restarted, 60, what="liveness failure restarts the container")
        assert any(e.startswith("Unhealthy: Liveness probe failed") for e in await events_of(c, "sick"))
        for name in ("layered", "sick"):
            await c.pods("default").delete(name, grace_period=0)


async def test_bad_input_is_reported_not_fatal(node):
    async with node.cp.client() as c:
        await create(c, """
apiVersion: v1
kind: Pod
metadata: {name: noimage}
spec:
  containers: [{name: c, image: "nosuchimage:1", imagePullPolicy: Never}]
""")
        await create(c, """
apiVersion: v1
kind: Pod
metadata: {name: nocmd}
spec:
  containers: [{name: c, image: busybox, imagePullPolicy: Never, command: [/no/such/binary]}]
""")
        await wait_for(lambda: _waiting_reason(c, "noimage", "ErrImageNeverPull"), 30, what="ErrImageNeverPull")

        async def cmd_error():
            p = await c.pods("default").get("nocmd")
            cs = p.status.containerStatuses
            if not cs:
                return False
            st = cs[0].state
            text = st.waiting.message + st.terminated.message + cs[0].lastState.terminated.message
            return (st.waiting.reason in ("CreateContainerError", "RunContainerError", "CrashLoopBackOff")
                    or st.terminated.exitCode) and (text or True)
        await wait_for(cmd_error, 30, what="a clear reason for a missing command")
        # the kubelet is fine: another pod still starts
        await create(c, """
apiVersion: v1
kind: Pod
metadata: {name: fine}
spec:
  containers: [{name: c, image: busybox, imagePullPolicy: Never, command: [sleep, "3600"]}]
""")
        await running(c, "fine")
        for name in ("noimage", "nocmd", "fine"):
            await c.pods("default").delete(name, grace_period=0)


async def test_host_network_and_host_path(node, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "from-host.txt").write_text("written on the node\n")
    async with node.cp.client() as c:
        await create(c, f"""
apiVersion: v1
kind: Pod
metadata: {{name: hostly}}
spec:
  hostNetwork: true
  volumes: [{{name: data, hostPath: {{path: "{shared}"}}}}]
  containers:
  - name: c
    image: busybox
    imagePullPolicy: Never
    command: [sh, -c, "cat /data/from-host.txt; echo from-pod > /data/from-pod.txt; exec sleep 3600"]
    volumeMounts: [{{name: data, mountPath: /data}}]
""")
        pod = await running(c, "hostly")
        assert pod.status.podIP == "127.0.0.1"  # the node's IP: it shares the node's network
        assert "written on the node" in node.cp.kubelab("logs", "hostly").stdout
        await wait_for(lambda: (shared / "from-pod.txt").exists(), 20, what="the pod writing to the hostPath")
        links = node.cp.kubelab("exec", "hostly", "--", "ip", "-o", "link").stdout
        host = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        host_ifaces = {ln.split(":")[1].strip().split("@")[0] for ln in host.splitlines()}
        pod_ifaces = {ln.split(":")[1].strip().split("@")[0] for ln in links.splitlines()}
        assert pod_ifaces - {"lo"} and pod_ifaces <= host_ifaces  # the node's own interfaces, not eth0 of a pod
        await c.pods("default").delete("hostly", grace_period=0)
        await gone(c, "hostly", 30)


async def test_static_pod_and_mirror(node):
    manifests = node.root / "manifests"
    manifests.mkdir(parents=True, exist_ok=True)
    (manifests / "static-web.yaml").write_text("""
apiVersion: v1
kind: Pod
metadata: {name: static-web, namespace: default}
spec:
  containers: [{name: web, image: busybox, command: [sleep, "3600"]}]
""")
    (manifests / "broken.yaml").write_text("apiVersion: v1\nkind: Pod\nspec: [not, a, mapping\n")
    mirror = f"static-web-{NODE}"
    async with node.cp.client() as c:
        p = await running(c, mirror)
        assert p.metadata.annotations["kubernetes.io/config.mirror"]
        cid = p.status.containerStatuses[0].containerID
        await c.pods("default").delete(mirror, grace_period=0)

        async def back():
            try:
                q = await c.pods("default").get(mirror)
            except NotFound:
                return False
            return q.metadata.uid != p.metadata.uid and q.status.containerStatuses and q
        q = await wait_for(back, 30, what="mirror pod recreated")
        assert q.status.containerStatuses[0].containerID == cid  # the static pod kept running
        assert "static pod manifest" in node.log() and "broken.yaml" in node.log()
        (manifests / "static-web.yaml").unlink()
        (manifests / "broken.yaml").unlink()
        await gone(c, mirror, 30)


async def test_kubelet_restart_adopts_running_containers(node):
    async with node.cp.client() as c:
        await create(c, """
apiVersion: v1
kind: Pod
metadata: {name: steady}
spec:
  containers: [{name: c, image: busybox, imagePullPolicy: Never, command: [sh, -c, "while true; do echo tick; sleep 1; done"]}]
""")
        before = (await running(c, "steady")).status.containerStatuses[0]
        node.stop()
        await asyncio.sleep(1)
        node.start()
        await asyncio.sleep(4)
        after = (await running(c, "steady")).status.containerStatuses[0]
        assert after.containerID == before.containerID and after.restartCount == 0
        follow = subprocess.Popen(KUBELAB + ["logs", "-f", "steady"], env=node.cp.env, stdout=subprocess.PIPE, text=True)
        try:
            await asyncio.sleep(3)
        finally:
            follow.send_signal(signal.SIGINT)
            out, _ = follow.communicate(timeout=10)
        assert out.count("tick") >= 3
        await c.pods("default").delete("steady", grace_period=0)


async def test_image_pull_from_a_local_registry(node, registry):  # noqa: F811
    from worker.runtime.images import ImageStore
    src = ImageStore(node.root / "img").get("busybox")
    assert src is not None
    subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false",
                    f"oci:{node.root / 'img' / 'images'}:{src.ref}", f"docker://{registry}/lab/busybox:1.0"],
                   check=True)
    async with node.cp.client() as c:
        await create(c, f"""
apiVersion: v1
kind: Pod
metadata: {{name: pulled}}
spec:
  containers: [{{name: c, image: "{registry}/lab/busybox:1.0", imagePullPolicy: Always, command: [sleep, "3600"]}}]
""")
        await running(c, "pulled")
        evs = await events_of(c, "pulled")
        assert any(e.startswith("Pulling") for e in evs) and any(e.startswith("Pulled") for e in evs)
        await create(c, f"""
apiVersion: v1
kind: Pod
metadata: {{name: missing}}
spec:
  containers: [{{name: c, image: "{registry}/lab/nothere:1.0", command: [sleep, "3600"]}}]
""")
        await wait_for(lambda: _waiting_reason(c, "missing", "ErrImagePull"), 60, what="ErrImagePull")
        await wait_for(lambda: _waiting_reason(c, "missing", "ImagePullBackOff"), 60, what="ImagePullBackOff")
        for name in ("pulled", "missing"):
            await c.pods("default").delete(name, grace_period=0)


async def test_node_goes_not_ready_when_the_kubelet_stops(node):
    async with node.cp.client() as c:
        node.stop()
        try:
            async def unknown():
                n = await c.nodes().get(NODE)
                return any(x.type == "Ready" and x.status == "Unknown" for x in n.status.conditions)
            await wait_for(unknown, 60, what="node Ready=Unknown after the kubelet stopped")
            assert "NotReady" in node.cp.kubelab("get", "nodes").stdout
        finally:
            node.start()

        async def ready():
            n = await c.nodes().get(NODE)
            return any(x.type == "Ready" and x.status == "True" for x in n.status.conditions) and not n.spec.taints
        await wait_for(ready, 60, what="node Ready again with the kubelet back")


async def _phase(c, name, phase):
    return (await c.pods("default").get(name)).status.phase == phase


async def _waiting_reason(c, name, reason):
    p = await c.pods("default").get(name)
    return any(cs.state.waiting.reason == reason for cs in p.status.containerStatuses)


async def test_pods_keep_running_while_the_api_server_is_away(node):
    """Stop the whole control plane: containers keep running, and what happened meanwhile
    (a container that finished) reaches the API once the control plane is back."""
    from .conftest import launch_control_plane, stop_control_plane
    async with node.cp.client() as c:
        await create(c, """
apiVersion: v1
kind: Pod
metadata: {name: patient}
spec:
  restartPolicy: Never
  containers: [{name: c, image: busybox, imagePullPolicy: Never, command: [sh, -c, "sleep 6; exit 0"]}]
""")
        await running(c, "patient")
    cp = node.cp
    children, kubelet = list(cp.children), node.proc
    cp.children.clear()  # keep the kubelet running while the control plane goes
    stop_control_plane(cp)
    await asyncio.sleep(9)  # the container exits while nobody can be told
    assert kubelet.poll() is None, "the kubelet must survive the API server's absence"
    fresh = launch_control_plane(cp.data_dir, "--node-monitor-grace-period", "5", "--node-monitor-period", "1",
                                 port=cp.port)
    cp.proc = fresh.proc
    cp.children.extend(children)
    async with cp.client() as c:
        await wait_for(lambda: _phase(c, "patient", "Succeeded"), 60, what="status caught up: Succeeded")
        await c.pods("default").delete("patient", grace_period=0)
