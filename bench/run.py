"""`make bench`: the control plane's speed and memory, as ratios against baselines measured in
the same run on the same machine (raw etcd writes), plus the absolute goals of the issue.

Everything runs on loopback: a real etcd, the API server and scheduler as their own
processes (as `kubelab control-plane` runs them), hollow nodes, and this process as the client;
the overlay (bench/overlay.py) and node memory (bench/nodememory.py) benchmarks make network
namespaces of their own and add nothing to the host's; the lab benchmark (bench/lab.py) brings
up a lab of its own names and takes it down. `--only api,overlay,...` runs some parts
(api, scheduling, kubelet, overlay, node-memory, lab); `--no-kubelet` (both real-kubelet
parts), `--no-overlay`, `--no-node-memory` and `--no-lab` skip some.
Results go to stdout and bench/last-run.md (copy them into docs/benchmarks.md with the date).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from kubelab import pki
from kubelab.api.v1 import objects_pb2 as v1
from kubelab.client.client import Client
from kubelab.client.config import ClientConfig, write_config
from kubelab.etcd.client import Compare, EtcdClient, Op
from kubelab.etcd.server import EtcdServer, free_port

KUBELAB = [sys.executable, "-m", "kubelab.cli.main"]
VALUE = b"x" * 1500  # about the size of a small pod
results: list[tuple[str, str, str, str]] = []  # (benchmark, figure, goal, verdict)
PARTS = ("api", "scheduling", "kubelet", "overlay", "node-memory", "lab", "dns", "proxy", "http", "svcconn")  # --only's names, in the order they run


def report(name: str, figure: str, goal: str, ok: bool | None) -> None:
    verdict = "n/a" if ok is None else ("met" if ok else "MISSED")
    results.append((name, figure, goal, verdict))
    print(f"{name:<58} {figure:<40} goal {goal:<14} {verdict}", flush=True)


def bench_pod(name: str, ns: str = "bench") -> v1.Pod:
    p = v1.Pod()
    p.metadata.name, p.metadata.namespace = name, ns
    p.metadata.labels.update({"app": "bench", "tier": "backend", "bench": "yes"})
    c = p.spec.containers.add(name="app", image="registry.local/bench/app:1.0")
    c.resources.requests.update({"cpu": "10m", "memory": "16Mi"})
    for i in range(8):
        c.env.add(name=f"VAR_{i}", value="v" * 60)
    c.ports.add(containerPort=8080, name="http")
    return p


async def bounded(n: int, concurrency: int, fn) -> float:
    """Run fn(i) for i < n with `concurrency` workers; return seconds taken."""
    it = iter(range(n))

    async def worker():
        for i in it:
            await fn(i)
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - t0


class Cluster:
    """etcd + API server process (+ scheduler, hollow nodes when asked) in a temp dir."""

    def __init__(self, root: Path, sans: list[str] = ()):
        self.root, self.sans = root, list(sans)
        self.procs: list[subprocess.Popen] = []

    async def start(self) -> None:
        self.etcd = EtcdServer(self.root / "etcd", log_path=self.root / "etcd.log", quota_bytes=8 << 30)
        await self.etcd.start()
        pki.ensure_control_plane_pki(self.root / "pki", sans=self.sans)
        self.address = f"127.0.0.1:{free_port()}"
        ca, key = (self.root / "pki/ca.crt").read_bytes(), (self.root / "pki/ca.key").read_bytes()
        cert, k = pki.issue_cert(ca, key, "kubernetes-admin", organizations=["system:masters"])
        self.config = self.root / "admin.conf"
        write_config(self.config, ClientConfig(self.address, ca, cert, k))
        self.apiserver = self.spawn("apiserver", "--etcd-servers", self.etcd.endpoint, "--listen", self.address,
                                    "--pki-dir", str(self.root / "pki"))
        end = time.monotonic() + 60
        while True:
            try:
                async with Client.connect(str(self.config), timeout=2) as c:
                    await c.namespaces().get("default")
                    ns = v1.Namespace()
                    ns.metadata.name = "bench"
                    await c.namespaces().create(ns)
                    return
            except Exception:  # noqa: BLE001
                if time.monotonic() > end:
                    raise
                await asyncio.sleep(0.3)

    def spawn(self, *args: str) -> subprocess.Popen:
        log = open(self.root / f"{args[0]}.log", "ab")
        env = dict(os.environ, KUBELAB_CONFIG=str(self.root / "admin.conf"))
        p = subprocess.Popen(KUBELAB + list(args), stdout=log, stderr=subprocess.STDOUT, env=env)
        self.procs.append(p)
        return p

    async def stop(self) -> None:
        for p in reversed(self.procs):
            p.terminate()
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        await self.etcd.stop()


async def raw_etcd_rates(endpoint: str, n: int, concurrency: int) -> tuple[float, float]:
    async with EtcdClient(endpoint) as e:
        puts = n / await bounded(n, concurrency, lambda i: e.put(f"/bench/raw/{i}", VALUE))

        async def txn(i):
            key = f"/bench/txn/{i}"
            await e.txn([Compare.create_revision(key, "==", 0)], [Op.put(key, VALUE)])
        txns = n / await bounded(n, concurrency, txn)
        await e.delete("/bench/", prefix=True)
    return puts, txns


async def bench_creates(cluster: Cluster, n: int, concurrency: int, raw_puts: float) -> None:
    async with Client.connect(str(cluster.config)) as c:
        pods = c.pods("bench")
        rate = n / await bounded(n, concurrency, lambda i: pods.create(bench_pod(f"create-{i}")))
    ratio = rate / raw_puts
    report(f"1. pod create via API ÷ raw etcd put (concurrency {concurrency})",
           f"{rate:.0f}/s ÷ {raw_puts:.0f}/s = {ratio:.2f}", "≥ 0.7", ratio >= 0.7)


async def fill(cluster: Cluster, total: int, concurrency: int) -> None:
    async with Client.connect(str(cluster.config)) as c:
        have = len((await c.pods("bench").list_all()).items)
        pods = c.pods("bench")
        await bounded(max(0, total - have), concurrency, lambda i: pods.create(bench_pod(f"fill-{i}")))


async def bench_list(cluster: Cluster, total: int) -> None:
    async with Client.connect(str(cluster.config)) as c:
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            got = await c.pods("bench").list_all(page_size=500)
            times.append(time.perf_counter() - t0)
        assert len(got.items) >= total, len(got.items)
    best, med = min(times), statistics.median(times)
    report(f"4. paginated LIST of {len(got.items)} pods (limit 500), full walk",
           f"median {med:.2f}s (best {best:.2f}s)", "≤ 2 s", med <= 2.0)


def bench_memory(cluster: Cluster, total: int) -> None:
    rss = psutil.Process(cluster.apiserver.pid).memory_info().rss / 2**20
    report(f"5. API server resident memory with {total} pods", f"{rss:.0f} MB", "≤ 200 MB", rss <= 200)


async def bench_watchers(cluster: Cluster, watchers: int, events: int, procs: int = 1) -> None:
    """Watch streams in `procs` separate processes; this process writes the events."""
    async with Client.connect(str(cluster.config)) as c:
        rv = (await c.pods("bench").list(limit=1)).resource_version
        per = watchers // procs
        children = [await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.watchers", "--config", str(cluster.config), "--count", str(per),
            "--events", str(events), "--rv", rv, stdout=asyncio.subprocess.PIPE) for _ in range(procs)]
        for ch in children:
            json.loads(await ch.stdout.readline())  # {"ready": n}: every stream is open
        await asyncio.sleep(1)
        for i in range(events):
            p = bench_pod(f"watched-{i}")
            p.metadata.labels["app"] = "watched"
            p.metadata.annotations["sent"] = repr(time.time())
            await c.pods("bench").create(p)
            await asyncio.sleep(0.05)
        lat: list[float] = []
        for ch in children:
            out, _ = await ch.communicate()
            lat += json.loads(out.decode().strip().splitlines()[-1])["latencies"]
    expected = per * procs * events
    lat.sort()
    p99 = lat[max(0, int(len(lat) * 0.99) - 1)] * 1000 if lat else float("inf")
    p50 = lat[len(lat) // 2] * 1000 if lat else float("inf")
    report(f"3. {per * procs} watchers ({procs} client processes), {events} events: delivery latency",
           f"p50 {p50:.0f} ms, p99 {p99:.0f} ms ({len(lat)}/{expected} delivered)", "p99 ≤ 100 ms",
           p99 <= 100 and len(lat) == expected)


async def bench_scheduling(root: Path, pods: int, nodes: int, concurrency: int, raw_txn: float) -> None:
    cluster = Cluster(root / "sched")
    await cluster.start()
    try:
        cluster.spawn("hollow-nodes", "--count", str(nodes), "--pods", "110", "--cpu", "32", "--memory", "256Gi")
        async with Client.connect(str(cluster.config)) as c:
            end = time.monotonic() + 300
            while len((await c.nodes().list()).items) < nodes:
                if time.monotonic() > end:
                    raise RuntimeError("hollow nodes did not register")
                await asyncio.sleep(1)
            pc = c.pods("bench")
            await bounded(pods, concurrency, lambda i: pc.create(bench_pod(f"s-{i}")))
            t0 = time.perf_counter()
            cluster.spawn("scheduler", "--leader-elect", "false")
            while True:
                bound = len((await c.pods("bench").list(field_selector="spec.nodeName!=",
                                                          resource_version="0")).items)
                if bound >= pods:
                    break
                if time.perf_counter() - t0 > 900:
                    break
                await asyncio.sleep(0.5)
            dt = time.perf_counter() - t0
    finally:
        await cluster.stop()
    rate = bound / dt
    ratio = rate / raw_txn
    report(f"2. {pods} pods onto {nodes} hollow nodes: bound pods/s ÷ raw etcd txn",
           f"{rate:.0f}/s ÷ {raw_txn:.0f}/s = {ratio:.2f} ({bound} bound in {dt:.1f}s)", "≥ 0.5", ratio >= 0.5)


async def with_scheduler(root: Path, bench) -> None:
    """Run bench(cluster) on a cluster of its own with a scheduler and a controller manager."""
    cluster = Cluster(root)
    await cluster.start()
    try:
        for component in ("scheduler", "controller-manager"):
            cluster.spawn(component, "--config", str(cluster.config), "--leader-elect", "false")
        await bench(cluster)
    finally:
        await cluster.stop()


async def main(args) -> int:
    print(f"kubelab bench on {platform.node()} ({os.cpu_count()} cpus, "
          f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()})", flush=True)
    parts = set(args.only.split(",")) if args.only else set(PARTS)
    if unknown := parts - set(PARTS):
        print(f"--only: unknown part(s) {', '.join(sorted(unknown))} (parts: {', '.join(PARTS)})", file=sys.stderr)
        return 2
    for part in PARTS:
        if getattr(args, "no_" + part.replace("-", "_")):
            parts.discard(part)
    if args.no_kubelet:  # node-memory runs a real kubelet too
        parts.discard("node-memory")
    with tempfile.TemporaryDirectory(prefix="kubelab-bench-") as tmp:
        root = Path(tmp)
        if "api" in parts or "scheduling" in parts:
            cluster = Cluster(root / "api")
            await cluster.start()
            try:
                raw_puts, raw_txn = await raw_etcd_rates(cluster.etcd.endpoint, args.raw, args.concurrency)
                print(f"baseline: raw etcd put {raw_puts:.0f}/s, txn {raw_txn:.0f}/s at concurrency "
                      f"{args.concurrency}")
                if "api" in parts:
                    await bench_creates(cluster, args.creates, args.concurrency, raw_puts)
                    await fill(cluster, args.pods, args.concurrency)
                    await bench_list(cluster, args.pods)
                    bench_memory(cluster, args.pods)
                    await bench_watchers(cluster, args.watchers, args.events)
            finally:
                await cluster.stop()
        if "scheduling" in parts:
            await bench_scheduling(root, args.sched_pods, args.nodes, args.concurrency, raw_txn)
        if "kubelet" in parts:
            from bench import podstartup
            await with_scheduler(root / "node-cluster", lambda c: podstartup.run(c, report, pods=args.startup_pods))
        if "overlay" in parts:
            from bench import overlay
            overlay_cluster = Cluster(root / "overlay-cluster", sans=overlay.SANS)
            await overlay_cluster.start()
            try:
                await overlay.run(overlay_cluster, report)
            finally:
                await overlay_cluster.stop()
        if "node-memory" in parts:
            from bench import nodememory
            await with_scheduler(root / "memory-cluster", lambda c: nodememory.run(c, report, pods=args.startup_pods))
        if "lab" in parts:
            from bench import lab
            await lab.run(report)
        if "dns" in parts:  # bench/dns.py: kubelab dns q/s and p99, dnsmasq beside it
            from bench import dns as dns_bench
            dns_cluster = Cluster(root / "dns-cluster")
            await dns_cluster.start()
            try:
                await dns_bench.run(dns_cluster, report)
            finally:
                await dns_cluster.stop()
        if "proxy" in parts:  # bench/proxy.py: kube-proxy's full resync, 1,000 services x 10 endpoints
            from bench import proxy as proxy_bench
            await proxy_bench.run(report)
        if "http" in parts:  # bench/http.py: HTTP ÷ gRPC creates, kubectl ÷ kubelab get pods -A over 10,000 pods
            from bench import http as http_bench
            http_cluster = Cluster(root / "http-cluster")
            await http_cluster.start()
            try:
                await http_bench.run(http_cluster, report, bounded, bench_pod, total=args.pods,
                                     concurrency=args.concurrency)
            finally:
                await http_cluster.stop()
        if "svcconn" in parts:  # bench/svcconn.py: short TCP connections, ClusterIP ÷ pod IP, on a lab of its own
            from bench import svcconn
            await svcconn.run(report)
    lines = ["| benchmark | figure | goal | verdict |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in results]
    Path(__file__).with_name("last-run.md").write_text(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.node()}, {os.cpu_count()} cpus\n\n"
        + "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--raw", type=int, default=3000)
    ap.add_argument("--creates", type=int, default=3000)
    ap.add_argument("--pods", type=int, default=10000)
    ap.add_argument("--watchers", type=int, default=1000)
    ap.add_argument("--events", type=int, default=100)
    ap.add_argument("--sched-pods", type=int, default=10000)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--startup-pods", type=int, default=30)
    ap.add_argument("--no-kubelet", action="store_true", help="skip the real-kubelet benchmarks, node-memory's too (need root, runc)")
    ap.add_argument("--no-overlay", action="store_true",
                    help="skip the VXLAN throughput benchmark (needs root, iproute2, nsenter)")
    ap.add_argument("--no-node-memory", action="store_true",
                    help="skip the runtime daemon + conmon memory benchmark (needs root, runc, conmon)")
    ap.add_argument("--no-lab", action="store_true",
                    help="skip the local lab benchmark (lab up, join; needs root, runc, conmon)")
    ap.add_argument("--no-dns", action="store_true", help="skip the cluster DNS benchmark")
    ap.add_argument("--no-proxy", action="store_true", help="skip the kube-proxy resync benchmark")
    ap.add_argument("--no-svcconn", action="store_true",
                    help="skip the ClusterIP ÷ pod IP short-connection benchmark (a lab of its own; needs root)")
    ap.add_argument("--no-http", action="store_true", help="skip the HTTP API benchmarks (HTTP ÷ gRPC creates, kubectl get)")
    ap.add_argument("--no-api", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no-scheduling", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--only", default="", help=f"comma-separated parts to run: {', '.join(PARTS)} (default: all)")
    sys.exit(asyncio.run(main(ap.parse_args())))
