"""The local lab's speed: `kubelab lab up` to every node Ready (1 master + 2 workers: goal
≤ 20 s; kind takes about a minute for three nodes), and `kubelab join` to the node Ready (goal
≤ 5 s). Part of `make bench` (bench/run.py calls `run`; `--only lab`, `--no-lab`).

Everything goes through the CLI a user types, in a lab of its own names (prefix kll2, bridge
kll20, 192.168.66.0/24, its own lab dir and HOME), so it never meets a real lab. The join is
timed the way a node is replaced: `kubelab reset` in a worker, `kubelab delete node`, then a
fresh `kubelab token create --print-join-command` run in the worker; the clock runs from the
join command's start until the API shows the Node Ready. `lab down` runs at the end, also when
the benchmark fails; its time is printed too.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kubelab.lab import cluster

KUBELAB = [sys.executable, "-m", "kubelab.cli.main"]
PREFIX, BRIDGE, SUBNET = "kll2", "kll20", "192.168.66.0/24"
WORKER, WORKER_IP = f"{PREFIX}-worker2", "192.168.66.12"
JOINS = 3
STEP = re.compile(r"^\[\s*([0-9.]+)s\] (.*)$")


class Lab:
    def __init__(self, root: Path):
        self.dir = root / "lab"
        self.env = dict(os.environ, HOME=str(root / "home"))
        self.env.pop("KUBELAB_CONFIG", None)
        self.env.pop("KUBELAB_LAB_DIR", None)

    def kl(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        p = subprocess.run([*KUBELAB, *args], capture_output=True, text=True, env=self.env, timeout=timeout,
                           check=False)
        if p.returncode != 0:
            raise RuntimeError(f"kubelab {' '.join(args[:3])}: exit {p.returncode}: {(p.stderr or p.stdout)[-2000:]}")
        return p

    def lab(self, verb: str, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.kl("lab", verb, "--lab-dir", str(self.dir), *args, **kw)

    def ready(self, node: str) -> bool:
        p = subprocess.run([*KUBELAB, "get", "node", node, "-o", "json"], capture_output=True, text=True,
                           env=self.env, check=False)
        if p.returncode != 0:
            return False
        conds = json.loads(p.stdout).get("status", {}).get("conditions", [])
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)


def steps(output: str) -> str:
    """lab up's own step clock: '[  1.2s] kubelab init in ...' lines -> 'init 1.2s, join ...'."""
    marks = [(float(m[1]), m[2]) for line in output.splitlines() if (m := STEP.match(line))]
    names = {"seeding": "seed", "kubelab init": "init", "kubelab join": "join", "admin config": "Ready",
             "routes": "routes"}
    parts = []
    for (t, text), (t_next, _) in itertools.pairwise(marks):
        name = next((v for k, v in names.items() if text.startswith(k)), text.split()[0])
        parts.append(f"{name} {t_next - t:.1f}s")
    return ", ".join(parts)


def join_once(lab: Lab) -> tuple[float, float]:
    """(join command's own time, join start to Node Ready) for the worker, after a reset."""
    line = lab.kl("token", "create", "--print-join-command").stdout.strip().splitlines()[-1]
    lab.lab("shell", WORKER, "--", *cluster.reset_argv())
    lab.kl("delete", "node", WORKER)
    t0 = time.perf_counter()
    lab.lab("shell", WORKER, "--", "kubelab", *line.split()[1:], "--node-name", WORKER, "--node-ip", WORKER_IP,
            "--iface", "eth0")
    joined = time.perf_counter() - t0
    deadline = t0 + 120
    while not lab.ready(WORKER):
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{WORKER} not Ready 120 s after join")
        time.sleep(0.1)
    return joined, time.perf_counter() - t0


async def run(report) -> None:
    with tempfile.TemporaryDirectory(prefix="kubelab-bench-lab-") as tmp:
        lab = Lab(Path(tmp))
        t0 = time.perf_counter()
        try:
            p = lab.lab("up", "--workers", "2", "--prefix", PREFIX, "--bridge", BRIDGE, "--subnet", SUBNET,
                        timeout=600)
            up = time.perf_counter() - t0
            report("lab up, 1 + 2 nodes, to all nodes Ready", f"{up:.1f}s ({steps(p.stdout)})", "≤ 20 s", up <= 20)
            joins = [join_once(lab) for _ in range(JOINS)]
            med_ready = statistics.median(j[1] for j in joins)
            med_cmd = statistics.median(j[0] for j in joins)
            report(f"join to node Ready (reset + delete node + join, median of {JOINS})",
                   f"{med_ready:.1f}s (join command {med_cmd:.1f}s; all {', '.join(f'{j[1]:.1f}' for j in joins)})",
                   "≤ 5 s", med_ready <= 5)
        finally:
            t1 = time.perf_counter()
            try:
                lab.lab("down", timeout=600)
                report("lab down (reset in each VM, then every namespace, link, rule)",
                       f"{time.perf_counter() - t1:.1f}s", "-", None)
            except RuntimeError as e:
                print(f"lab down failed: {e}", file=sys.stderr)
                raise
