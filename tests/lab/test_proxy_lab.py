"""kube-proxy on the lab (the session lab of tests/lab/conftest.py): the static pods
kube-proxy-<node>, a ClusterIP reached from pods on both workers and balanced over endpoints on
both, NodePort on every node's address, deletion removing the rules, and a killed proxy
restarted by the kubelet converging on the same rules without duplicates. Through the CLI as a
user would, and `iptables-save` in the VMs."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil

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
