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

import pytest

from kubelab.api.v1 import objects_pb2 as v1
from kubelab.cli.manifest import parse_doc
from kubelab.errors import NotFound
from worker.kubelet.reset import reset_node

from .conftest import KUBELAB, launch_control_plane, stop_control_plane, stop_group, wait_for
from .test_runtime import registry  # noqa: F401 - the local registry fixture

import yaml

NODE = "kl-test-node"
# The node's bridge lives in the host's own network namespace, so its podCIDR becomes a host
# route: a range of its own, never the 10.244.0.0/16 that labs on this host route into their VMs.
CLUSTER_CIDR = "10.202.0.0/16"
CP_FLAGS = ("--node-monitor-grace-period", "5", "--node-monitor-period", "1", "--cluster-cidr", CLUSTER_CIDR)


class Node:
    def __init__(self, cp, root):
        self.cp, self.root = cp, root
        self.bridge = "kltest" + secrets.token_hex(3)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = self.cp.start(
            "kubelet", "--node-name", NODE, "--node-ip", "127.0.0.1", "--port", "0",
            "--root-dir", str(self.root), "--image-dir", str(self.root / "img"),
            "--manifest-dir", str(self.root / "manifests"), "--bridge", self.bridge, "--cluster-cidr", CLUSTER_CIDR,
            "--lease-duration", "4", "--lease-renew-interval", "1", "--node-status-interval", "1",
            "--backoff-initial", "1", "--backoff-max", "4", "-v", "2", log="kubelet.log")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            if sig == signal.SIGTERM:
                stop_group(self.proc)
            else:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(30)
            if self.proc in self.cp.children:
                self.cp.children.remove(self.proc)
            self.proc = None

    def log(self) -> str:
        return (self.cp.data_dir / "kubelet.log").read_text()[-3000:]


def node_leftovers(n: Node) -> list[str]:
    """What of this node is still on the host: containers, runc state, mounts, cgroups, pod
    network namespaces and veths, the bridge and its iptables rules. Found by the node's own
    names (its root dir, its bridge, the uids of the pods it ran), so other nodes on the host
    do not count."""
    out = []
    containers = n.root / "containers"
    if containers.is_dir() and any(containers.iterdir()):
        out.append(f"container dirs: {sorted(p.name[:12] for p in containers.iterdir())}")
    r = subprocess.run(["runc", "--root", str(n.root / "runc"), "list", "-q"], capture_output=True, text=True)
    if r.stdout.strip():
        out.append(f"runc containers: {r.stdout.split()}")
    mounts = [ln.split()[1] for ln in open("/proc/self/mounts").read().splitlines()]
    out += [f"mount {m}" for m in mounts if m.startswith(str(n.root))]
    uids = [p.name for p in (n.root / "pods").iterdir()] if (n.root / "pods").is_dir() else []
    netns = set(os.listdir("/var/run/netns")) if os.path.isdir("/var/run/netns") else set()
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    from worker.network.podnet import PodNetwork
    for uid in uids:
        if PodNetwork.netns_name(uid) in netns:
            out.append(f"netns {PodNetwork.netns_name(uid)}")
        if f" {PodNetwork.host_veth_name(uid)}@" in links or f" {PodNetwork.host_veth_name(uid)}:" in links:
            out.append(f"veth {PodNetwork.host_veth_name(uid)}")
        for cg in ("/sys/fs/cgroup/kubelab", "/sys/fs/cgroup/memory/kubelab", "/sys/fs/cgroup/pids/kubelab"):
            if os.path.isdir(f"{cg}/{uid}"):
                out.append(f"cgroup {cg}/{uid}")
    if f" {n.bridge}:" in links:
        out.append(f"bridge {n.bridge}")
    for table in ("nat", "filter"):
        rules = subprocess.run(["iptables", "-w", "-t", table, "-S"], capture_output=True, text=True).stdout
        out += [f"iptables -t {table}: {ln}" for ln in rules.splitlines() if n.bridge in ln]
    return out


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    d = tmp_path_factory.mktemp("kubelet")
    cp = launch_control_plane(d, *CP_FLAGS)
    n = Node(cp, d / "node")
    try:
        subprocess.run(KUBELAB + ["image", "build-busybox", "--root-dir", str(n.root / "img")], check=True,
                       env=cp.env, capture_output=True)
        n.start()
        yield n
    finally:
        try:
            n.stop()
        finally:
            try:
                stop_control_plane(cp)  # every child too, the kubelet included if a test left it there
            finally:
                asyncio.run(reset_node(n.root, bridge=n.bridge, image_dir=n.root / "img"))
    left = node_leftovers(n)
    assert not left, f"the node left behind: {left}"


@pytest.fixture(autouse=True)
def clean_pods(request):
    """Every pod a test made goes at its end, pass or fail (the kubelet removes the containers)."""
    yield
    if "node" not in request.fixturenames:
        return
    n = request.getfixturevalue("node")
    # forced: the API forgets them at once, whatever state the test left the kubelet in, and the
    # kubelet removes their containers (the module's reset takes any it could not)
    r = n.cp.kubelab("delete", "pods", "--all", "--force", "--grace-period", "0", "--timeout", "60s",
                     check=False, timeout=90)
    assert r.returncode == 0, f"removing the test's pods: {r.stderr}"


@pytest.fixture
def static_manifests(node):
    """Write static pod manifests for this test; removed at its end, pass or fail."""
    d = node.root / "manifests"
    d.mkdir(parents=True, exist_ok=True)
    written = []

    def write(name: str, text: str):
        (d / name).write_text(text)
        written.append(d / name)
    yield write
    for f in written:
        f.unlink(missing_ok=True)


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
        assert pod.status.podIP.startswith("10.202.")
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
        await c.pods("default").delete("duo")  # graceful: the kubelet stops them and confirms
        await gone(c, "duo", 60)


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
            return cs[0].state.waiting.reason == "CreateContainerError" and cs[0]
        cs = await wait_for(cmd_error, 30, what="CreateContainerError for a missing command")
        assert "/no/such/binary" in cs.state.waiting.message, cs.state.waiting.message
        assert cs.restartCount == 0 and not cs.containerID  # nothing ran
        assert any(e.startswith("Failed: Error:") and "/no/such/binary" in e for e in await events_of(c, "nocmd"))
        # the kubelet is fine: another pod still starts
        await create(c, """
apiVersion: v1
kind: Pod
metadata: {name: fine}
spec:
  containers: [{name: c, image: busybox, imagePullPolicy: Never, command: [sleep, "3600"]}]
""")
        await running(c, "fine")


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


async def test_privileged_containers_may_change_the_pod_network(node):
    """securityContext.privileged reaches the runtime: all capabilities (CAP_NET_ADMIN here), for
    init containers too; without it, the same command in the same kind of pod is refused. (A
    bridge, not a dummy link: this kernel has no dummy module and no modprobe.)"""
    async with node.cp.client() as c:
        for name, priv in (("priv", "true"), ("unpriv", "false")):
            await create(c, f"""
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  terminationGracePeriodSeconds: 0
  initContainers:
  - name: setup
    image: busybox
    imagePullPolicy: Never
    securityContext: {{privileged: {priv}}}
    command: [sh, -c, "ip link add i0 type bridge 2>&1; true"]
  containers:
  - name: c
    image: busybox
    imagePullPolicy: Never
    securityContext: {{privileged: {priv}}}
    command: [sleep, "3600"]
""")
        await running(c, "priv")
        await running(c, "unpriv")
        k = node.cp.kubelab
        assert " i0:" in k("exec", "priv", "-c", "c", "--", "ip", "-o", "link", "show", "i0").stdout
        r = k("exec", "priv", "-c", "c", "--", "ip", "link", "add", "d0", "type", "bridge", check=False)
        assert r.returncode == 0, r.stderr
        assert " d0:" in k("exec", "priv", "-c", "c", "--", "ip", "-o", "link", "show", "d0").stdout
        assert "Operation not permitted" in k("logs", "unpriv", "-c", "setup").stdout
        r = k("exec", "unpriv", "-c", "c", "--", "ip", "link", "add", "d0", "type", "bridge", check=False)
        assert r.returncode != 0 and "Operation not permitted" in r.stdout + r.stderr
        assert " d0:" not in k("exec", "unpriv", "-c", "c", "--", "ip", "-o", "link").stdout
        host = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        assert " d0:" not in host and " i0:" not in host  # made in the pod's netns, not the node's


async def test_static_pod_and_mirror(node, static_manifests):
    """Deleting a mirror pod the ordinary way (graceful) returns at once: the kubelet deletes
    that mirror and makes a new one; the static pod's container keeps running."""
    static_manifests("static-web.yaml", """
apiVersion: v1
kind: Pod
metadata: {name: static-web, namespace: default}
spec:
  containers: [{name: web, image: busybox, command: [sleep, "3600"]}]
""")
    static_manifests("broken.yaml", "apiVersion: v1\nkind: Pod\nspec: [not, a, mapping\n")
    mirror = f"static-web-{NODE}"
    async with node.cp.client() as c:
        p = await running(c, mirror)
        assert p.metadata.annotations["kubernetes.io/config.mirror"]
        cid = p.status.containerStatuses[0].containerID
        r = node.cp.kubelab("delete", "pod", mirror, "--timeout", "60s", check=False, timeout=90)
        assert r.returncode == 0, f"deleting the mirror pod: {r.stderr}"

        async def back():
            try:
                q = await c.pods("default").get(mirror)
            except NotFound:
                return False
            return (q.metadata.uid != p.metadata.uid and not q.metadata.deletionTimestamp
                    and q.status.containerStatuses and q)
        q = await wait_for(back, 30, what="mirror pod recreated")
        assert q.status.containerStatuses[0].containerID == cid  # the static pod kept running
        assert q.status.containerStatuses[0].restartCount == 0
        assert "static pod manifest" in node.log() and "broken.yaml" in node.log()
        (node.root / "manifests" / "static-web.yaml").unlink()
        await gone(c, mirror, 30)


async def test_outdated_and_orphaned_mirrors_are_replaced(node, static_manifests):
    """A mirror pod that does not match its static pod (left by an older manifest) is replaced
    by a current one; a mirror pod whose static pod is gone, even one already marked for a
    graceful deletion, is deleted."""
    mirror = f"static-two-{NODE}"
    orphan = f"static-gone-{NODE}"
    async with node.cp.client() as c:
        pods = c.pods("default")
        stale = pod_from(f"""
apiVersion: v1
kind: Pod
metadata:
  name: {mirror}
  annotations: {{kubernetes.io/config.mirror: "0000", kubernetes.io/config.hash: "0000"}}
spec:
  nodeName: {NODE}
  containers: [{{name: web, image: busybox, command: [sleep, "3600"]}}]
""")
        stale = await pods.create(stale)
        lost = pod_from(f"""
apiVersion: v1
kind: Pod
metadata:
  name: {orphan}
  annotations: {{kubernetes.io/config.mirror: "1111", kubernetes.io/config.hash: "1111"}}
spec:
  nodeName: {NODE}
  containers: [{{name: web, image: busybox, command: [sleep, "3600"]}}]
""")
        await pods.create(lost)
        try:
            await pods.delete(orphan)  # graceful: marked, and only the kubelet can finish it
        except NotFound:
            pass  # the kubelet found the orphan first
        static_manifests("static-two.yaml", """
apiVersion: v1
kind: Pod
metadata: {name: static-two, namespace: default}
spec:
  containers: [{name: web, image: busybox, command: [sleep, "3600"]}]
""")

        async def replaced():
            q = await pods.get(mirror)
            return q.metadata.uid != stale.metadata.uid and q.metadata.annotations[
                "kubernetes.io/config.mirror"] != "0000" and q
        q = await wait_for(replaced, 60, what="the outdated mirror replaced by a current one")
        assert q.metadata.annotations["kubernetes.io/config.mirror"] == q.metadata.annotations[
            "kubernetes.io/config.hash"]
        await gone(c, orphan, 30)
        (node.root / "manifests" / "static-two.yaml").unlink()
        await gone(c, mirror, 30)


async def test_kubelet_restart_adopts_running_containers(node, tmp_path):
    """A restarted kubelet adopts the running container (same id, no restart) and goes on
    probing it: the readiness file appears while the kubelet is down, so only the new kubelet
    can report Ready. Then `logs -f` streams lines written after the follow began."""
    data = tmp_path / "data"
    data.mkdir()
    async with node.cp.client() as c:
        await create(c, f"""
apiVersion: v1
kind: Pod
metadata: {{name: steady}}
spec:
  volumes: [{{name: data, hostPath: {{path: "{data}"}}}}]
  containers:
  - name: c
    image: busybox
    imagePullPolicy: Never
    command: [sh, -c, "while true; do echo tick; if [ -f /data/say ]; then cat /data/say; rm /data/say; fi; sleep 0.5; done"]
    volumeMounts: [{{name: data, mountPath: /data}}]
    readinessProbe: {{exec: {{command: [test, -f, /data/ready]}}, periodSeconds: 1, failureThreshold: 1}}
""")

        async def up_not_ready():
            p = await c.pods("default").get("steady")
            cs = p.status.containerStatuses
            return p.status.phase == "Running" and cs and cs[0].state.running.startedAt and not cs[0].ready and cs[0]
        before = await wait_for(up_not_ready, 60, what="steady running, not ready")
        node.stop()
        (data / "ready").touch()
        node.start()
        after = (await running(c, "steady")).status.containerStatuses[0]
        assert after.containerID == before.containerID and after.restartCount == 0

        follow = await asyncio.create_subprocess_exec(*KUBELAB, "logs", "-f", "steady", env=node.cp.env,
                                                      stdout=asyncio.subprocess.PIPE)
        try:
            first = await asyncio.wait_for(follow.stdout.readline(), 30)
            assert first.strip() == b"tick"  # the stream is open: what comes now is new
            token = secrets.token_hex(8)
            (data / "say").write_text(token + "\n")

            async def token_arrives():
                while True:
                    line = await follow.stdout.readline()
                    if not line:
                        return False
                    if line.strip() == token.encode():
                        return True
            assert await asyncio.wait_for(token_arrives(), 30), "logs -f ended before the new line came"
        finally:
            follow.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(follow.wait(), 10)
            except asyncio.TimeoutError:
                follow.kill()
                await follow.wait()


async def test_pod_deleted_while_the_kubelet_was_down_loses_its_containers(node):
    async with node.cp.client() as c:
        await create(c, """
apiVersion: v1
kind: Pod
metadata: {name: forgotten}
spec:
  containers: [{name: c, image: busybox, imagePullPolicy: Never, command: [sleep, "3600"]}]
""")
        pod = await running(c, "forgotten")
        cid = pod.status.containerStatuses[0].containerID.removeprefix("runc://")
        assert (node.root / "containers" / cid).is_dir()
        node.stop()
        try:
            await c.pods("default").delete("forgotten", grace_period=0)  # nobody there to confirm
            await gone(c, "forgotten", 30)
            assert (node.root / "containers" / cid).is_dir()  # it outlives the kubelet
        finally:
            node.start()
        await wait_for(lambda: not (node.root / "containers" / cid).exists(), 60,
                       what="the restarted kubelet removing the deleted pod's container")
        from worker.network.podnet import PodNetwork
        await wait_for(lambda: not os.path.exists(f"/var/run/netns/{PodNetwork.netns_name(pod.metadata.uid)}"), 30,
                       what="the deleted pod's network namespace removed")
        assert f"removing containers of pod {pod.metadata.uid}" in node.log()


async def test_logs_previous(node):
    async with node.cp.client() as c:
        await create(c, """
apiVersion: v1
kind: Pod
metadata: {name: twice}
spec:
  volumes: [{name: state, emptyDir: {}}]
  containers:
  - name: c
    image: busybox
    imagePullPolicy: Never
    command: [sh, -c, "if [ -f /state/once ]; then echo second-run; exec sleep 3600; fi; touch /state/once; echo first-run; exit 1"]
    volumeMounts: [{name: state, mountPath: /state}]
""")

        async def restarted_once():
            p = await c.pods("default").get("twice")
            cs = p.status.containerStatuses
            return cs and cs[0].restartCount == 1 and cs[0].state.running.startedAt
        await wait_for(restarted_once, 60, what="twice restarted once and running")
        k = node.cp.kubelab
        await wait_for(lambda: "second-run" in k("logs", "twice").stdout, 20, what="the current run's log")
        assert "first-run" not in k("logs", "twice").stdout
        prev = k("logs", "twice", "--previous").stdout
        assert "first-run" in prev and "second-run" not in prev


async def test_startup_and_http_probes(node):
    """httpGet startup and readiness probes gate started and ready; a startup probe that never
    passes restarts the container."""
    async with node.cp.client() as c:
        await create(c, """
apiVersion: v1
kind: Pod
metadata: {name: slowstart}
spec:
  containers:
  - name: web
    image: busybox
    imagePullPolicy: Never
    command: [sh, -c, "mkdir -p /www; exec httpd -f -p 8080 -h /www"]
    ports: [{name: http, containerPort: 8080}]
    startupProbe: {httpGet: {path: /started, port: http}, periodSeconds: 1, failureThreshold: 1000}
    readinessProbe: {httpGet: {path: /ready, port: 8080}, periodSeconds: 1, failureThreshold: 1}
""")

        async def container(pred):
            p = await c.pods("default").get("slowstart")
            cs = p.status.containerStatuses
            return cs and pred(cs[0]) and cs[0]
        await wait_for(lambda: container(lambda cs: cs.state.running.startedAt), 60, what="slowstart running")
        cs = await container(lambda cs: True)
        assert not cs.started and not cs.ready  # the startup probe has not passed yet
        node.cp.kubelab("exec", "slowstart", "--", "touch", "/www/started")
        await wait_for(lambda: container(lambda cs: cs.started), 30, what="started once /started answers 200")
        cs = await container(lambda cs: True)
        assert not cs.ready and cs.restartCount == 0  # /ready still 404
        node.cp.kubelab("exec", "slowstart", "--", "touch", "/www/ready")
        await wait_for(lambda: container(lambda cs: cs.ready), 30, what="ready once /ready answers 200")

        await create(c, """
apiVersion: v1
kind: Pod
metadata: {name: neverstarts}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: busybox
    imagePullPolicy: Never
    command: [sh, -c, "mkdir -p /www; exec httpd -f -p 8080 -h /www"]
    startupProbe: {httpGet: {path: /started, port: 8080}, periodSeconds: 1, failureThreshold: 2}
""")

        async def restarted():
            p = await c.pods("default").get("neverstarts")
            return p.status.containerStatuses and p.status.containerStatuses[0].restartCount >= 1
        await wait_for(restarted, 60, what="a failing startup probe restarts the container")
        evs = await events_of(c, "neverstarts")
        assert any(e.startswith("Unhealthy: Startup probe failed: HTTP probe failed with statuscode: 404")
                   for e in evs), evs


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
    from worker.runtime.images import ImageStore
    from worker.runtime.runtime import Runtime
    async with node.cp.client() as c:
        await create(c, """
apiVersion: v1
kind: Pod
metadata: {name: patient}
spec:
  restartPolicy: Never
  containers: [{name: c, image: busybox, imagePullPolicy: Never, command: [sh, -c, "sleep 6; exit 0"]}]
""")
        cid = (await running(c, "patient")).status.containerStatuses[0].containerID.removeprefix("runc://")
    cp, kubelet = node.cp, node.proc
    cp.children.remove(kubelet)  # keep the kubelet running while the control plane goes
    try:
        stop_control_plane(cp)
        rt = Runtime(node.root, runc_root=node.root / "runc", images=ImageStore(node.root / "img"))

        async def exited():  # the container exits while nobody can be told
            return (await rt.status(cid)).state == "exited"
        await wait_for(exited, 60, what="the container exiting with the control plane away")
        assert kubelet.poll() is None, "the kubelet must survive the API server's absence"
        fresh = launch_control_plane(cp.data_dir, *CP_FLAGS, port=cp.port)
        cp.proc = fresh.proc
    finally:
        cp.children.append(kubelet)  # whatever happened, the fixture's teardown stops it
    async with cp.client() as c:
        await wait_for(lambda: _phase(c, "patient", "Succeeded"), 60, what="status caught up: Succeeded")


MIXED = """
apiVersion: v1
kind: Pod
metadata: {name: m-init, labels: {mix: "y"}}
spec:
  # long enough that a status showing it running is written even on a loaded machine (with
  # `sleep 1` the kubelet may report it only once it has terminated, and the moment is missed)
  initContainers: [{name: i, image: busybox, imagePullPolicy: Never, command: [sh, -c, "sleep 8"]}]
  containers: [{name: c, image: busybox, imagePullPolicy: Never, command: [sh, -c, "sleep 100000"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: m-side, labels: {mix: "y"}}
spec:
  initContainers: [{name: s, image: busybox, imagePullPolicy: Never, restartPolicy: Always, command: [sleep, "100000"]}]
  containers: [{name: c, image: busybox, imagePullPolicy: Never, command: [sleep, "100000"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: m-crash, labels: {mix: "y"}}
spec:
  containers: [{name: c, image: busybox, imagePullPolicy: Never, command: [sh, -c, "exit 1"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: m-oom, labels: {mix: "y"}}
spec:
  containers: [{name: c, image: busybox, imagePullPolicy: Never, command: [sh, -c, "x=a; while true; do x=$x$x; done"],
                resources: {limits: {memory: 32Mi}}}]
---
apiVersion: v1
kind: Pod
metadata: {name: m-live, labels: {mix: "y"}}
spec:
  terminationGracePeriodSeconds: 600
  containers:
  - name: c
    image: busybox
    imagePullPolicy: Never
    command: [sh, -c, "touch /tmp/ok; sleep 2; rm /tmp/ok; sleep 100000"]
    livenessProbe: {exec: {command: [cat, /tmp/ok]}, initialDelaySeconds: 1, periodSeconds: 1, failureThreshold: 1}
"""


async def test_graceful_delete_of_a_mixed_set_always_completes(node):
    """Pods mid init container, native sidecar, crash-loop backoff, OOM loop and a liveness
    kill (whose own grace period is 10 minutes) all go within a 1 s grace period, round after
    round, each caught at a different moment of its life."""
    docs = [pod_from(yaml.safe_dump(d)) for d in yaml.safe_load_all(MIXED)]
    async with node.cp.client() as c:
        pods = c.pods("default")

        async def status(name):
            return (await pods.get(name)).status

        async def restarted(name, n=1):
            st = await status(name)
            return st.containerStatuses and st.containerStatuses[0].restartCount >= n

        moments = [
            ("just created", None),
            ("m-init's init container running", lambda: _init_running(c, "m-init")),
            ("m-crash in back-off", lambda: _waiting_reason(c, "m-crash", "CrashLoopBackOff")),
            ("m-live being killed by its liveness probe", lambda: _liveness_kill_started(c, "m-live")),
        ]
        for rnd, (moment, reached) in enumerate(moments * 2):  # each moment twice
            for d in docs:
                await pods.create(d)
            if reached is not None:
                await wait_for(reached, 90, what=f"round {rnd}: {moment}")
            uids = {}
            for d in docs:
                uids[d.metadata.name] = (await pods.delete(d.metadata.name, grace_period=1)).metadata.uid

            async def all_gone():
                left = [p for p in (await pods.list(label_selector="mix=y")).items if p.metadata.uid in uids.values()]
                return not left or None
            try:
                await wait_for(all_gone, 60, interval=0.5, what=f"round {rnd} ({moment}): every mixed pod gone")
            except AssertionError:
                left = [(p.metadata.name, p.status.phase, [cs.state for cs in p.status.containerStatuses])
                        for p in (await pods.list(label_selector="mix=y")).items]
                raise AssertionError(f"round {rnd} ({moment}): still there {left}\n{node.log()}") from None


async def _init_running(c, name):
    p = await c.pods("default").get(name)
    return any(s.state.running.startedAt for s in p.status.initContainerStatuses)


async def _liveness_kill_started(c, name):
    evs = await events_of(c, name)
    return any(e.startswith("Killing: Container c failed liveness probe") for e in evs)
