"""What a Service costs a connection: requests per second over short TCP connections (one
HTTP/1.0 GET per connection: connect, request, read to EOF, close) straight to a pod's IP and
through its ClusterIP (kube-proxy's DNAT and its conntrack entry on every new connection), in
the same run from the same client, as a ratio: goal ClusterIP ÷ pod IP ≥ 0.9. Part of `make
bench` (bench/run.py calls `run`; `--only svcconn`, `--no-svcconn`).

Setup, through the CLI a user types, on a lab of its own names (prefix klb, bridge klb0,
192.168.76.0/24, pods 10.76/16, services 10.77/16, its own lab dir and HOME): a busybox httpd
pod on worker2 behind a ClusterIP Service (its only endpoint, so both paths end at the same
server) and a client pod on worker1 running this machine's Python (mounted read-only, as
kubeadm's static pods run kubelab), so both paths cross the overlay and differ only by the
Service. The client alternates the two targets round by round (which goes first switches
every round) and the figure is the median over the rounds of ClusterIP's rate ÷ the pod IP's
in the same round: on a loaded machine the rates of single rounds swing several times over,
but the two rounds of a pair see about the same load. `lab down` runs at the end, also
when the benchmark fails.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kubeadm.manifests import environment_paths

KUBELAB = [sys.executable, "-m", "kubelab.cli.main"]
PREFIX, BRIDGE, NET = "klb", "klb0", 76
SUBNET, POD_CIDR, SERVICE_CIDR = f"192.168.{NET}.0/24", f"10.{NET}.0.0/16", f"10.{NET + 1}.0.0/16"
W1, W2 = f"{PREFIX}-worker1", f"{PREFIX}-worker2"
NS = "svcconn"
ROUNDS, CONNECTIONS = 40, 100  # per target; short rounds, so a pair of them sees the same load

# runs in the client pod: argv = rounds, connections, then (label, ip, port) per target
CLIENT = r"""
import json, socket, sys, time
rounds, n = int(sys.argv[1]), int(sys.argv[2])
targets = [(sys.argv[i], sys.argv[i + 1], int(sys.argv[i + 2])) for i in range(3, len(sys.argv), 3)]
req = b"GET / HTTP/1.0\r\nHost: svcconn\r\n\r\n"

def one(addr):
    s = socket.create_connection(addr, timeout=5)
    try:
        s.sendall(req)
        got = b""
        while chunk := s.recv(4096):
            got += chunk
    finally:
        s.close()
    if not got.startswith(b"HTTP/1.") or b" 200 " not in got.split(b"\r\n", 1)[0]:
        raise SystemExit(f"bad answer from {addr}: {got[:80]!r}")

out = {label: [] for label, _, _ in targets}
for label, ip, port in targets:  # warm up: ARP, the FDB, the first conntrack entries
    for _ in range(20):
        one((ip, port))
for r in range(rounds):
    for label, ip, port in (targets if r % 2 == 0 else targets[::-1]):
        t0 = time.perf_counter()
        for _ in range(n):
            one((ip, port))
        out[label].append(n / (time.perf_counter() - t0))
print(json.dumps(out))
"""


def manifests() -> str:
    paths = list(enumerate(environment_paths()))
    mounts = "".join(f"\n    - {{name: env-{i}, mountPath: {p}, readOnly: true}}" for i, p in paths)
    vols = "".join(f"\n  - {{name: env-{i}, hostPath: {{path: {p}}}}}" for i, p in paths)
    return f"""---
apiVersion: v1
kind: Namespace
metadata: {{name: {NS}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: web, namespace: {NS}, labels: {{app: web}}}}
spec:
  nodeName: {W2}
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: busybox
    imagePullPolicy: IfNotPresent
    command: [sh, -c, "mkdir -p /www; echo hello > /www/index.html; exec httpd -f -p 8080 -h /www"]
    ports: [{{name: http, containerPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {NS}}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: http}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {NS}}}
spec:
  nodeName: {W1}
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: busybox
    imagePullPolicy: IfNotPresent
    command: [sleep, "100000"]
    volumeMounts:{mounts}
  volumes:{vols}
"""


class Lab:
    def __init__(self, root: Path):
        self.dir = root / "lab"
        self.env = dict(os.environ, HOME=str(root / "home"))
        self.env.pop("KUBELAB_CONFIG", None)
        self.env.pop("KUBELAB_LAB_DIR", None)

    def kl(self, *args: str, stdin: str | None = None, timeout: float = 300) -> str:
        p = subprocess.run([*KUBELAB, *args], input=stdin, capture_output=True, text=True, env=self.env,
                           timeout=timeout, check=False)
        if p.returncode != 0:
            raise RuntimeError(f"kubelab {' '.join(args[:3])}: exit {p.returncode}: {(p.stderr or p.stdout)[-2000:]}")
        return p.stdout

    def until(self, what: str, fn, timeout: float = 120):
        deadline = time.monotonic() + timeout
        while not (got := fn()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: not so after {timeout}s")
            time.sleep(0.5)
        return got


def measure(lab: Lab) -> tuple[dict[str, list[float]], str, str]:
    lab.kl("apply", "-f", "-", stdin=manifests())

    def running(name: str):
        p = json.loads(lab.kl("get", "pod", name, "-n", NS, "-o", "json"))
        return p["status"].get("podIP") if p.get("status", {}).get("phase") == "Running" else None
    pod_ip = lab.until("web Running", lambda: running("web"))
    lab.until("client Running", lambda: running("client"))
    cip = json.loads(lab.kl("get", "svc", "web", "-n", NS, "-o", "json"))["spec"]["clusterIP"]
    lab.until(f"kube-proxy's rules for {cip} on {W1}", lambda: f'"{NS}/web:http -> {pod_ip}:8080"' in lab.kl(
        "lab", "shell", W1, "--lab-dir", str(lab.dir), "--", "iptables-save", "-t", "nat"))
    out = lab.kl("exec", "client", "-n", NS, "--", sys.executable, "-c", CLIENT, str(ROUNDS), str(CONNECTIONS),
                 "pod", pod_ip, "8080", "clusterip", cip, "80", timeout=1200)
    return json.loads(out.strip().splitlines()[-1]), pod_ip, cip


async def run(report) -> None:
    with tempfile.TemporaryDirectory(prefix="kubelab-bench-svcconn-") as tmp:
        lab = Lab(Path(tmp))
        try:
            lab.kl("lab", "up", "--lab-dir", str(lab.dir), "--workers", "2", "--prefix", PREFIX, "--bridge", BRIDGE,
                   "--subnet", SUBNET, "--pod-network-cidr", POD_CIDR, "--service-cidr", SERVICE_CIDR, timeout=600)
            rates, pod_ip, cip = measure(lab)
        finally:
            lab.kl("lab", "down", "--lab-dir", str(lab.dir), timeout=600)
    pod, svc = statistics.median(rates["pod"]), statistics.median(rates["clusterip"])
    ratio = statistics.median(s / p for s, p in zip(rates["clusterip"], rates["pod"]))
    report(f"short TCP connections, ClusterIP ÷ pod IP (median of {ROUNDS} paired rounds of {CONNECTIONS})",
           f"{ratio:.2f} (medians {svc:.0f} vs {pod:.0f} conn/s)", "≥ 0.9", ratio >= 0.9)
    print(f"svcconn: pod {pod_ip} rounds {', '.join(f'{r:.0f}' for r in rates['pod'])}; "
          f"ClusterIP {cip} rounds {', '.join(f'{r:.0f}' for r in rates['clusterip'])}", flush=True)
