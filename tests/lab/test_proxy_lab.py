"""kube-proxy on the lab (the session lab of tests/lab/conftest.py): the static pods
kube-proxy-<node>, a ClusterIP (by a named targetPort) reached from pods on both workers and
balanced over endpoints on both, from nodes and hairpin, NodePort on every node's address,
deletion removing the rules, and a killed proxy restarted by the kubelet converging on the same
rules without duplicates; then UDP through a ClusterIP across nodes, and an endpoint whose pod
stops being ready leaving the service (endpoints, slices, every node's rules, the traffic) and
coming back. Through the CLI as a user would, and `iptables-save` in the VMs."""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import psutil
import pytest

from kubeadm.manifests import environment_paths
from tests.lab.conftest import IPS, MASTER, NODES, W1, W2, wait_for

NS = "proxy-lab"


def pod(name: str, node: str, app: str) -> str:
    return f"""---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {NS}, labels: {{app: {app}}}}}
spec:
  nodeName: {node}
  containers:
  - name: web
    image: busybox
    imagePullPolicy: IfNotPresent
    command: [sh, -c, "mkdir -p /www; echo from-{name} > /www/index.html; exec httpd -f -p 8080 -h /www"]
    ports: [{{name: http, containerPort: 8080}}]
"""


SERVICES = f"""---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {NS}}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: http}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web-np, namespace: {NS}}}
spec:
  type: NodePort
  selector: {{app: web}}
  ports: [{{port: 81, targetPort: 8080}}]
"""


def nat(lab, vm: str) -> str:
    return lab.shell(vm, "iptables-save", "-t", "nat").stdout


def proxy_pids(vm: str) -> set[int]:
    netns = f"net:[{Path(f'/run/netns/{vm}').stat().st_ino}]"
    found = set()
    for p in psutil.process_iter(["pid", "name", "cmdline"]):
        try:
            argv = p.info["cmdline"] or []
            if p.info["name"] != "conmon" and "proxy" in argv and any("kubelab" in a for a in argv) \
                    and os.readlink(f"/proc/{p.pid}/ns/net") == netns:
                found.add(p.pid)
        except (psutil.Error, OSError):
            pass
    return found


def get(lab, vm_or_pod: str, url: str, *, from_pod: bool) -> str:
    if from_pod:
        p = lab.kl("exec", vm_or_pod, "-n", NS, "--", "wget", "-qO-", "-T", "3", url, check=False)
    else:
        p = lab.shell(vm_or_pod, "busybox", "wget", "-qO-", "-T", "3", url, check=False)
    return p.stdout.strip()


def test_services_through_kube_proxy(lab):
    running = lab.json("get", "pods", "-n", "kube-system")["items"]
    names = {p["metadata"]["name"]: p for p in running}
    for n in NODES:
        assert names[f"kube-proxy-{n}"]["spec"]["nodeName"] == n
    wait_for("kube-proxy Running on every node", lambda: all(
        lab.pod(f"kube-proxy-{n}", "kube-system").get("status", {}).get("phase") == "Running" for n in NODES), 60)
    lab.kl("create", "ns", NS)
    try:
        lab.apply(pod("a1", W1, "web") + pod("a2", W2, "web") + pod("c1", W1, "client") + pod("c2", W2, "client"))
        for p in ("a1", "a2", "c1", "c2"):
            lab.wait_running(p, NS)
        lab.apply(SERVICES)
        web = lab.json("get", "svc", "web", "-n", NS)
        cip = web["spec"]["clusterIP"]
        np = lab.json("get", "svc", "web-np", "-n", NS)["spec"]["ports"][0]["nodePort"]
        # the web service's chains on every node, both endpoints in them
        for n in NODES:
            wait_for(f"web's endpoints in {n}'s rules", lambda n=n: nat(lab, n).count(f'"{NS}/web:http -> ') == 2, 40)
            wait_for(f"web-np's NodePort in {n}'s rules", lambda n=n: f"--dport {np} -j KUBE-EXT-" in nat(lab, n), 40)
        # from pods on both workers, answered by endpoints on both
        for client in ("c1", "c2"):
            seen = {get(lab, client, f"http://{cip}/", from_pod=True) for _ in range(16)}
            assert {"from-a1", "from-a2"} <= seen, (client, seen)
        # from a node's own network namespace (kube-proxy's OUTPUT hook), and hairpin: a pod
        # reaching itself through its own service
        for n in (W1, MASTER):
            assert get(lab, n, f"http://{cip}/", from_pod=False) in ("from-a1", "from-a2"), n
        for _ in range(8):
            assert get(lab, "a1", f"http://{cip}/", from_pod=True) in ("from-a1", "from-a2")
        # NodePort on every node's address, from the master
        for n in NODES:
            assert get(lab, MASTER, f"http://{IPS[n]}:{np}/", from_pod=False) in ("from-a1", "from-a2"), n
        # a killed proxy, restarted by its kubelet, writes the same rules and no duplicates
        before = nat(lab, W1)
        old = proxy_pids(W1)
        assert old, f"no kube-proxy process in {W1}"
        for pid in old:
            psutil.Process(pid).send_signal(signal.SIGKILL)
        wait_for("kube-proxy restarted", lambda: proxy_pids(W1) - old, 60)
        lab.kl("delete", "svc", "web-np", "-n", NS)  # a change the new proxy must write

        def synced():
            s = nat(lab, W1)
            return s if "web-np" not in s and f'"{NS}/web:http -> ' in s else None
        after = wait_for("the restarted proxy's sync", synced, 40)
        rules = [ln for ln in after.splitlines() if ln.startswith("-A ")]
        assert len(rules) == len(set(rules)), "duplicate rules after the restart"
        # all but web-np's (every rule of it names it, but its KUBE-EXT chain's jump)
        def kept(lines):
            return {r for r in lines if r.startswith("-A ") and "web-np" not in r and "KUBE-EXT-" not in r}
        assert kept(rules) == kept(before.splitlines())
        # deleting the service removes its rules everywhere, and the cluster IP stops answering
        lab.kl("delete", "svc", "web", "-n", NS)
        for n in NODES:
            wait_for(f"web's rules gone from {n}", lambda n=n: cip not in nat(lab, n), 40)
        assert get(lab, "c1", f"http://{cip}/", from_pod=True) == ""
    finally:
        lab.kl("delete", "ns", NS, "--wait=false", check=False)


# ---- UDP, and an endpoint that stops being ready (pods shared by both tests)

NS2 = "proxy-lab-2"
# busybox's nc here has no -u, so the UDP ends are this Python, run in busybox pods with the
# host's interpreter mounted read-only (as kubeadm's static pods run kubelab)
UDP_ECHO = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 9000))
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(b"from-u1:" + data, peer)
"""
UDP_ASK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.connect((sys.argv[1], int(sys.argv[2])))
s.send(b"ping")
try:
    print(s.recv(2048).decode())
except socket.timeout:
    print("no answer")
except ConnectionRefusedError:  # the ICMP port unreachable of a port nothing listens on
    print("refused")
"""


def python_pod(name: str, node: str, app: str, script: str, ports: str = "[]") -> str:
    paths = list(enumerate(environment_paths()))
    mounts = "".join(f"\n    - {{name: env-{i}, mountPath: {p}, readOnly: true}}" for i, p in paths)
    vols = "".join(f"\n  - {{name: env-{i}, hostPath: {{path: {p}}}}}" for i, p in paths)
    command = [sys.executable, "-u", "-c", script] if script else ["sleep", "100000"]
    return f"""---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {NS2}, labels: {{app: {app}}}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: busybox
    imagePullPolicy: IfNotPresent
    command: {json.dumps(command)}
    ports: {ports}
    volumeMounts:{mounts}
  volumes:{vols}
"""


def ready_pod(name: str, node: str) -> str:
    """An httpd that is ready while /tmp/ready exists (an exec probe every second)."""
    return f"""---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {NS2}, labels: {{app: ready}}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: busybox
    imagePullPolicy: IfNotPresent
    command: [sh, -c, "touch /tmp/ready; mkdir -p /www; echo from-{name} > /www/index.html;
              exec httpd -f -p 8080 -h /www"]
    ports: [{{name: http, containerPort: 8080}}]
    readinessProbe:
      exec: {{command: [cat, /tmp/ready]}}
      periodSeconds: 1
      failureThreshold: 1
"""


SERVICES2 = f"""---
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: {NS2}}}
spec:
  selector: {{app: echo}}
  ports: [{{name: echo, protocol: UDP, port: 90, targetPort: echo}}]
---
apiVersion: v1
kind: Service
metadata: {{name: ready, namespace: {NS2}}}
spec:
  selector: {{app: ready}}
  ports: [{{name: http, port: 80, targetPort: http}}]
"""


@pytest.fixture(scope="module")
def pods2(lab):
    """u1: the UDP echo on worker1; cl: a Python client on worker2; r1 (worker1) and r2
    (worker2): httpds behind `ready`. Their IPs by name."""
    lab.kl("create", "ns", NS2)
    try:
        lab.apply(python_pod("u1", W1, "echo", UDP_ECHO, "[{name: echo, containerPort: 9000, protocol: UDP}]")
                  + python_pod("cl", W2, "client", "") + ready_pod("r1", W1) + ready_pod("r2", W2) + SERVICES2)
        yield {p: lab.wait_running(p, NS2)["status"]["podIP"] for p in ("u1", "cl", "r1", "r2")}
    finally:
        lab.kl("delete", "ns", NS2, "--timeout", "120s", check=False, timeout=150)


def cluster_ip(lab, svc: str) -> str:
    return lab.json("get", "svc", svc, "-n", NS2)["spec"]["clusterIP"]


def test_udp_through_a_cluster_ip(lab, pods2):
    cip = cluster_ip(lab, "echo")
    for n in NODES:
        wait_for(f"echo's UDP endpoint in {n}'s rules", lambda n=n: f'"{NS2}/echo:echo -> {pods2["u1"]}:9000"'
                 in nat(lab, n), 40)
    rules = nat(lab, W2)
    assert f"-d {cip}/32 -p udp -m comment --comment \"{NS2}/echo:echo cluster IP\" -m udp --dport 90" in rules, rules

    def ask(dst: str, port: int) -> str:
        return lab.kl("exec", "cl", "-n", NS2, "--", sys.executable, "-c", UDP_ASK, dst, str(port),
                      check=False, timeout=30).stdout.strip()
    # from worker2 through the ClusterIP to the pod on worker1, the answer back from the ClusterIP
    assert ask(cip, 90) == "from-u1:ping"
    # the pod itself listens on 9000 only: the service port was translated on the way
    assert ask(pods2["u1"], 9000) == "from-u1:ping"
    assert ask(pods2["u1"], 90) == "refused"


def endpoints_of(lab, svc: str) -> tuple[set[str], set[str]]:
    ep = lab.json("get", "endpoints", svc, "-n", NS2)
    ready, not_ready = set(), set()
    for sub in ep.get("subsets") or []:
        ready |= {a["ip"] for a in sub.get("addresses") or []}
        not_ready |= {a["ip"] for a in sub.get("notReadyAddresses") or []}
    return ready, not_ready


def test_an_endpoint_leaves_while_its_pod_is_not_ready(lab, pods2):
    r1, r2 = pods2["r1"], pods2["r2"]
    cip = cluster_ip(lab, "ready")

    def sep(n: str, ip: str) -> bool:
        return f'"{NS2}/ready:http -> {ip}:8080"' in nat(lab, n)

    def get_all() -> set[str]:  # 16 GETs from worker2's client through the ClusterIP, one exec
        loop = f"for i in $(seq 16); do wget -qO- -T 3 http://{cip}/ || echo failed; done"
        return set(lab.kl("exec", "cl", "-n", NS2, "--", "sh", "-c", loop, check=False).stdout.split())
    wait_for("both endpoints ready", lambda: endpoints_of(lab, "ready") == ({r1, r2}, set()), 60)
    for n in NODES:
        wait_for(f"both ready endpoints in {n}'s rules", lambda n=n: sep(n, r1) and sep(n, r2), 40)
    assert get_all() == {"from-r1", "from-r2"}
    # r1 fails its probe: its address moves to notReadyAddresses (and its slice endpoint is
    # ready: false), its KUBE-SEP leaves every node, only r2 answers
    lab.kl("exec", "r1", "-n", NS2, "--", "rm", "/tmp/ready")
    wait_for("r1 not ready in the endpoints", lambda: endpoints_of(lab, "ready") == ({r2}, {r1}), 60)
    (sl,) = [s for s in lab.json("get", "endpointslices", "-n", NS2)["items"]
             if s["metadata"]["labels"].get("kubernetes.io/service-name") == "ready"]
    assert {e["addresses"][0]: e["conditions"].get("ready") for e in sl["endpoints"]} == {r1: False, r2: True}, sl
    for n in NODES:
        wait_for(f"r1's rules gone from {n}", lambda n=n: not sep(n, r1) and sep(n, r2), 40)
    assert get_all() == {"from-r2"}
    # ready again: back in the endpoints, the rules, the answers
    lab.kl("exec", "r1", "-n", NS2, "--", "touch", "/tmp/ready")
    wait_for("r1 ready again", lambda: endpoints_of(lab, "ready") == ({r1, r2}, set()), 60)
    for n in NODES:
        wait_for(f"r1's rules back in {n}", lambda n=n: sep(n, r1), 40)
    assert get_all() == {"from-r1", "from-r2"}
