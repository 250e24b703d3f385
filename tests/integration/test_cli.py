"""The `kubelab` CLI as a user runs it: a real `kubelab control-plane` (etcd, API server,
scheduler, controller manager) and, where pods must run, `kubelab hollow-nodes`; every
command is a subprocess, checked for kubectl's output, wording and exit codes.

Uses the `control_plane` fixture (tests/integration/conftest.py): an object with `.config`
(the admin client config) and `.env` (environment with KUBELAB_CONFIG set).
"""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest
import yaml

KUBELAB = [sys.executable, "-m", "kubelab.cli.main"]


def kl(cp, *args, ok: bool | None = True, stdin: str | None = None, env: dict | None = None,
       timeout: float = 120) -> subprocess.CompletedProcess:
    r = subprocess.run(KUBELAB + list(args), env=env or cp.env, input=stdin, capture_output=True, text=True,
                       timeout=timeout)
    assert "Traceback" not in r.stderr, r.stderr
    if ok is True:
        assert r.returncode == 0, f"kubelab {' '.join(args)}: {r.stderr}"
    elif ok is False:
        assert r.returncode == 1, f"kubelab {' '.join(args)} exited {r.returncode}: {r.stdout} {r.stderr}"
    return r


def until(pred, timeout: float = 180, what: str = "condition"):  # generous: a shared, busy machine
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def hollow(control_plane, tmp_path_factory):
    """One simulated node, so that pods get scheduled and reported Running."""
    log = open(tmp_path_factory.mktemp("hollow") / "hollow.log", "wb")
    # room for more than the 110 pods of a real node: test_apply_many_pods leaves 120 behind
    p = subprocess.Popen(KUBELAB + ["hollow-nodes", "--count", "1", "--pods", "1000"], env=control_plane.env,
                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        until(lambda: " Ready " in kl(control_plane, "get", "nodes", ok=None).stdout, what="a Ready hollow node")
        yield "hollow-node-0"
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def test_namespaces_create_get_and_errors(control_plane):
    cp = control_plane
    out = kl(cp, "get", "ns").stdout
    assert out.splitlines()[0].split() == ["NAME", "STATUS", "AGE"]
    for n in ("default", "kube-system", "kube-public", "kube-node-lease"):
        assert f"\n{n} " in out
    assert kl(cp, "create", "ns", "cli-a").stdout == "namespace/cli-a created\n"
    assert kl(cp, "create", "namespace", "cli-a", ok=False).stderr == \
        'Error from server (AlreadyExists): namespaces "cli-a" already exists\n'
    assert kl(cp, "create", "ns", "Bad_Name", ok=False).stderr.startswith(
        'Error from server (Invalid): namespaces "Bad_Name" is invalid: metadata.name')
    assert kl(cp, "get", "pod", "nosuch", "-n", "cli-a", ok=False).stderr == \
        'Error from server (NotFound): pods "nosuch" not found\n'
    assert kl(cp, "get", "foo", ok=False).stderr == 'error: the server doesn\'t have a resource type "foo"\n'
    empty = kl(cp, "get", "pods", "-n", "cli-a")
    assert empty.stdout == "" and empty.stderr == "No resources found in cli-a namespace.\n"
    assert kl(cp, "get", "ns", "cli-a", "-o", "name").stdout == "namespace/cli-a\n"


def test_run_then_get_in_every_output(control_plane):
    cp = control_plane
    kl(cp, "create", "ns", "cli-run")
    assert kl(cp, "run", "nginx", "--image=nginx", "-n", "cli-run", "--port", "80", "--env", "A=1",
              "--", "nginx", "-g", "daemon off;").stdout == "pod/nginx created\n"
    rows = kl(cp, "get", "pods", "-n", "cli-run").stdout.splitlines()
    assert rows[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert rows[1].split()[:3] == ["nginx", "0/1", "Pending"]  # no node yet
    pod = json.loads(kl(cp, "get", "pod", "nginx", "-n", "cli-run", "-o", "json").stdout)
    assert (pod["apiVersion"], pod["kind"]) == ("v1", "Pod")
    assert pod["metadata"]["labels"] == {"run": "nginx"}
    c = pod["spec"]["containers"][0]
    assert (c["name"], c["image"], c["args"], c["ports"][0]["containerPort"]) == \
        ("nginx", "nginx", ["nginx", "-g", "daemon off;"], 80)
    assert pod["spec"]["terminationGracePeriodSeconds"] == 30  # a number, as in Kubernetes
    listed = yaml.safe_load(kl(cp, "get", "pods", "-A", "-o", "yaml").stdout)
    assert listed["kind"] == "List" and any(p["metadata"]["name"] == "nginx" for p in listed["items"])
    wide = kl(cp, "get", "pods", "-A", "-o", "wide").stdout.splitlines()[0].split()
    assert wide[:2] == ["NAMESPACE", "NAME"] and wide[-2:] == ["READINESS", "GATES"]
    assert kl(cp, "get", "po", "-n", "cli-run", "-l", "run=nginx", "-o", "name").stdout == "pod/nginx\n"
    assert kl(cp, "get", "po", "-n", "cli-run", "-l", "run=other", ok=None).stdout == ""
    page = kl(cp, "describe", "pod", "nginx", "-n", "cli-run").stdout.splitlines()
    field = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip() for line in page if ":" in line}
    assert (field["Name"], field["Namespace"], field["Node"], field["Status"]) == ("nginx", "cli-run", "<none>",
                                                                                 "Pending")
    assert field["Port"] == "80/TCP" and field["A"] == "1"
    args = page.index("    Args:")
    assert page[args + 1:args + 4] == ["      nginx", "      -g", "      daemon off;"]  # one per line, as kubectl
    assert page[-1].startswith("  Warning  FailedScheduling ") or page[-1].startswith("Events:")


MANIFEST = """apiVersion: v1
kind: Namespace
metadata:
  name: cli-apply
---
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: cli-apply
  labels: {app: web, version: 1}
spec:
  containers:
  - name: c
    image: busybox:1
    resources: {requests: {cpu: 10m, memory: 16Mi}, limits: {memory: 134217728}}
"""


def test_apply_create_unchanged_configured_and_rejected(control_plane, tmp_path):
    cp = control_plane
    f = tmp_path / "web.yaml"
    f.write_text(MANIFEST)
    assert kl(cp, "apply", "-f", str(f)).stdout == "namespace/cli-apply created\npod/web created\n"
    assert kl(cp, "apply", "-f", str(f)).stdout == "namespace/cli-apply unchanged\npod/web unchanged\n"
    f.write_text(MANIFEST.replace("busybox:1", "busybox:2"))
    assert kl(cp, "apply", "-f", str(f)).stdout == "namespace/cli-apply unchanged\npod/web configured\n"
    pod = json.loads(kl(cp, "get", "pod", "web", "-n", "cli-apply", "-o", "json").stdout)
    assert pod["spec"]["containers"][0]["image"] == "busybox:2"
    assert pod["spec"]["containers"][0]["resources"]["limits"] == {"memory": "134217728"}
    f.write_text(MANIFEST.replace("version: 1", "version: 1, extra: 'yes'"))
    assert kl(cp, "apply", "-f", str(f)).stdout == "namespace/cli-apply unchanged\npod/web configured\n"
    assert kl(cp, "get", "pods", "-n", "cli-apply", "-l", "extra=yes", "-o", "name").stdout == "pod/web\n"
    f.write_text(MANIFEST.replace("- name: c\n", "- name: d\n"))  # a pod's containers cannot change
    r = kl(cp, "apply", "-f", str(f), ok=False)
    assert r.stdout == "namespace/cli-apply unchanged\n"
    assert r.stderr.startswith(f'Error from server (Invalid): error when applying "{f}": pods "web" is invalid')
    bad = kl(cp, "apply", "-f", "-", stdin=MANIFEST.replace("image:", "imagee:"), ok=False)
    assert bad.stderr == ('error: error parsing STDIN (document 2): Pod in version "v1" cannot be handled as a Pod: '
                          'strict decoding error: unknown field "spec.containers[0].imagee"\n')
    assert kl(cp, "create", "-f", str(f), ok=False).stderr.startswith(
        f'Error from server (AlreadyExists): error when creating "{f}": namespaces "cli-apply" already exists')


def test_apply_many_pods_keeps_document_order(control_plane, tmp_path):
    cp = control_plane
    docs = ["apiVersion: v1\nkind: Namespace\nmetadata: {name: cli-many}\n"] + [
        f"apiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: cli-many, labels: {{app: many}}}}\n"
        f"spec: {{containers: [{{name: c, image: busybox}}]}}\n" for i in range(120)]
    # the namespace comes last in the file: apply still writes it before the pods that live in it
    f = tmp_path / "many.yaml"
    f.write_text("---\n".join(docs[1:] + docs[:1]))
    out = kl(cp, "apply", "-f", str(f)).stdout.splitlines()
    assert out == [f"pod/p{i} created" for i in range(120)] + ["namespace/cli-many created"]
    assert len(kl(cp, "get", "pods", "-n", "cli-many", "-l", "app=many", "--no-headers").stdout.splitlines()) == 120


def test_scheduled_pod_describe_and_delete(control_plane, hollow):
    cp = control_plane
    kl(cp, "create", "ns", "cli-life")
    kl(cp, "run", "web", "--image=nginx", "-n", "cli-life")
    until(lambda: "Running" in kl(cp, "get", "pods", "-n", "cli-life").stdout, what="web Running")
    wide = kl(cp, "get", "pods", "-n", "cli-life", "-o", "wide").stdout.splitlines()[1].split()
    assert wide[6] == hollow
    page = until(lambda: (lambda t: t if "Scheduled" in t else None)(
        kl(cp, "describe", "pod", "web", "-n", "cli-life").stdout), what="a Scheduled event")
    for line in ("Name:", "Namespace:", "Node:", "Containers:", "Conditions:", "Events:", "Tolerations:"):
        assert any(row.startswith(line) for row in page.splitlines()), line
    assert f"Successfully assigned cli-life/web to {hollow}" in page
    node = kl(cp, "describe", "node", hollow).stdout
    assert "Non-terminated Pods:" in node and "cli-life" in node and "HolderIdentity:" in node
    assert kl(cp, "delete", "pod", "web", "-n", "cli-life").stdout == 'pod "web" deleted\n'
    # kubectl's delete waits until the pod is gone
    assert kl(cp, "get", "pod", "web", "-n", "cli-life", ok=False).stderr.startswith("Error from server (NotFound)")
    assert kl(cp, "delete", "ns", "cli-life").stdout == 'namespace "cli-life" deleted\n'
    kl(cp, "get", "ns", "cli-life", ok=False)


class Lines:
    """A child's stdout, line by line, with a deadline on every read (a thread does the
    blocking reads, so a silent child fails the test instead of hanging it)."""

    def __init__(self, stream):
        self.q: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream):
        for line in stream:
            self.q.put(line)
        self.q.put(None)

    def until(self, pred, timeout: float, what: str) -> str:
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            try:
                line = self.q.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(f"output ended before {what}: {self.seen}")
            self.seen.append(line)
            if pred(line):
                return line
        raise AssertionError(f"timed out waiting for {what}: {self.seen}")


def test_watch_prints_a_row_per_change(control_plane):
    cp = control_plane
    kl(cp, "create", "ns", "cli-watch")
    kl(cp, "run", "w0", "--image=busybox", "-n", "cli-watch")
    w = subprocess.Popen(KUBELAB + ["get", "pods", "-n", "cli-watch", "-w"], env=cp.env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        out = Lines(w.stdout)
        out.until(lambda line: line.startswith("w0 "), 60, "the listed pod w0")
        assert out.seen[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
        # everything after the list was printed can only reach the output through the watch
        kl(cp, "run", "w1", "--image=busybox", "-n", "cli-watch")
        out.until(lambda line: line.startswith("w1 "), 60, "a row for w1, created after the list")
    finally:
        w.send_signal(signal.SIGINT)
        try:
            w.wait(10)
        except subprocess.TimeoutExpired:
            w.kill()
            w.wait()
    assert "Traceback" not in w.stderr.read()


def test_config_and_connection_errors(control_plane, tmp_path):
    cp = control_plane
    missing = kl(cp, "get", "ns", env={**cp.env, "KUBELAB_CONFIG": str(tmp_path / "nope.conf")}, ok=False)
    assert missing.stderr.startswith("error: config ")
    conf = yaml.safe_load(open(cp.config))
    conf["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:1"
    (tmp_path / "down.conf").write_text(yaml.safe_dump(conf))
    down = kl(cp, "get", "ns", "--config", str(tmp_path / "down.conf"), ok=False)
    assert down.stderr.startswith("error: the server at 127.0.0.1:1 is unavailable: ")


SERVICE = """apiVersion: v1
kind: Service
metadata:
  name: applied
  namespace: cli-svc
spec:
  type: NodePort
  selector: {run: web}
  ports:
  - port: 8000
    targetPort: http
"""


def test_services_expose_get_describe_apply_delete(control_plane, hollow, tmp_path):
    cp = control_plane
    kl(cp, "create", "ns", "cli-svc")
    kl(cp, "run", "web", "--image=busybox", "--port", "8080", "-n", "cli-svc")
    kl(cp, "apply", "-f", "-", stdin="apiVersion: v1\nkind: Pod\nmetadata: {name: bare, namespace: cli-svc}\n"
                                     "spec: {containers: [{name: c, image: busybox}]}\n")
    def running_ip():
        row = kl(cp, "get", "pod", "web", "-n", "cli-svc", "-o", "wide", "--no-headers").stdout.split()
        return row[2] == "Running" and row[5]
    ip = until(running_ip, what="web Running with an IP")

    assert kl(cp, "expose", "pod", "web", "--port", "80", "--target-port", "8080", "-n", "cli-svc").stdout == \
        "service/web exposed\n"
    assert kl(cp, "expose", "pod/web", "--port", "81", "--type", "NodePort", "--name", "web-np",
              "-n", "cli-svc").stdout == "service/web-np exposed\n"
    assert kl(cp, "expose", "pod", "bare", "--port", "80", "-n", "cli-svc", ok=False).stderr == \
        ("error: couldn't retrieve selectors via --selector flag or introspection: "
         "the pod has no labels and cannot be exposed\n")
    assert kl(cp, "expose", "node", hollow, "--port", "80", ok=False).stderr == "error: cannot expose a Node\n"
    assert kl(cp, "expose", "pod", "nosuch", "--port", "80", "-n", "cli-svc", ok=False).stderr == \
        'Error from server (NotFound): pods "nosuch" not found\n'

    rows = [r.split() for r in kl(cp, "get", "svc", "-n", "cli-svc").stdout.splitlines()]
    assert rows[0] == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    by_name = {r[0]: r for r in rows[1:]}
    assert by_name["web"][1:5] == ["ClusterIP", by_name["web"][2], "<none>", "80/TCP"]
    assert by_name["web"][2].startswith("10.") and by_name["web-np"][1] == "NodePort"
    node_port = int(by_name["web-np"][4].removeprefix("81:").removesuffix("/TCP"))
    assert 30000 <= node_port <= 32767
    wide = kl(cp, "get", "services", "web", "-n", "cli-svc", "-o", "wide").stdout.splitlines()
    assert wide[0].split()[-1] == "SELECTOR" and wide[1].split()[-1] == "run=web"

    def output_with(text, *args):
        out = kl(cp, *args).stdout
        return text in out and out
    ep = until(lambda: output_with(f"{ip}:8080", "get", "ep", "web", "-n", "cli-svc"), what="the Endpoints of web")
    assert ep.splitlines()[0].split() == ["NAME", "ENDPOINTS", "AGE"]
    assert ep.splitlines()[1].split()[:2] == ["web", f"{ip}:8080"]
    slices = until(lambda: output_with(f" {ip}", "get", "endpointslices", "-n", "cli-svc",
                                       "-l", "kubernetes.io/service-name=web"), what="the EndpointSlice of web")
    assert slices.splitlines()[0].split() == ["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"]
    assert slices.splitlines()[1].split()[1:4] == ["IPv4", "8080", ip]

    page = kl(cp, "describe", "svc", "web", "-n", "cli-svc").stdout.splitlines()
    field = {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in page if ":" in line}
    assert (field["Name"], field["Namespace"], field["Labels"], field["Selector"], field["Type"]) == \
        ("web", "cli-svc", "run=web", "run=web", "ClusterIP")
    assert field["IP"] == by_name["web"][2] and field["IPs"] == by_name["web"][2]
    assert field["Port"].split() == ["<unset>", "80/TCP"] and field["TargetPort"] == "8080/TCP"
    assert field["Endpoints"] == f"{ip}:8080" and field["Session Affinity"] == "None"
    assert page[-1].startswith("Events:")
    np_page = kl(cp, "describe", "service/web-np", "-n", "cli-svc").stdout
    assert ["NodePort:", "<unset>", f"{node_port}/TCP"] in [line.split() for line in np_page.splitlines()]

    # Service YAML through apply (named targetPort kept a string, the node port kept) and create
    f = tmp_path / "svc.yaml"
    f.write_text(SERVICE)
    assert kl(cp, "apply", "-f", str(f)).stdout == "service/applied created\n"
    assert kl(cp, "apply", "-f", str(f)).stdout == "service/applied unchanged\n"
    applied = yaml.safe_load(kl(cp, "get", "svc", "applied", "-n", "cli-svc", "-o", "yaml").stdout)
    port = applied["spec"]["ports"][0]
    assert (port["port"], port["targetPort"], port["protocol"]) == (8000, "http", "TCP")
    f.write_text(SERVICE.replace("targetPort: http", "targetPort: 8080"))
    assert kl(cp, "apply", "-f", str(f)).stdout == "service/applied configured\n"
    again = yaml.safe_load(kl(cp, "get", "svc", "applied", "-n", "cli-svc", "-o", "yaml").stdout)
    assert again["spec"]["ports"][0]["targetPort"] == 8080
    assert again["spec"]["ports"][0]["nodePort"] == port["nodePort"]  # merged by port: not reallocated
    f.write_text(SERVICE.replace("name: applied", "name: created"))
    assert kl(cp, "create", "-f", str(f)).stdout == "service/created created\n"

    assert kl(cp, "delete", "svc", "web", "-n", "cli-svc").stdout == 'service "web" deleted\n'
    until(lambda: kl(cp, "get", "ep", "web", "-n", "cli-svc", ok=None).returncode == 1,
          what="the Endpoints deleted with the service")
    assert kl(cp, "get", "svc", "web", "-n", "cli-svc", ok=False).stderr == \
        'Error from server (NotFound): services "web" not found\n'
