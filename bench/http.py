"""`python -m bench.run --only http` (part of `make bench`): the API server's HTTP face
(master/apiserver/rest) against its gRPC face, on one cluster of its own (bench.run.Cluster:
a real etcd and the API server as a process), in the same run:

- JSON pod creates per second over HTTP (aiohttp, the admin certificate, POST
  /api/v1/namespaces/bench/pods) ÷ gRPC creates (kubelab's Client) at the same concurrency, in
  alternating rounds;
  goal >= 0.8: the translator costs little next to the store, validation and etcd behind it.
- `kubectl get pods -A` over 10,000 pods, the whole command (its discovery cache warm, as a
  person's is), ÷ `kubelab get pods -A` over the same pods: both ask the server for a Table in
  pages of 500 and print it; the ratio is how the real kubectl fares next to kubelab's own CLI.

The HTTP API listens where the API server puts it by default (--listen's port + 1); kubectl
gets a kubeconfig pointing there, written here, so this file needs nothing of the client
config's own HTTP fields.
"""
from __future__ import annotations

import asyncio
import base64
import os
import ssl
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import yaml

from kubelab.cli.manifest import to_dict
from kubelab.client.client import Client

KUBECTL = str(Path(sys.executable).with_name("kubectl"))
KUBELAB = [sys.executable, "-m", "kubelab.cli.main"]


def http_address(cluster) -> str:
    host, _, port = cluster.address.rpartition(":")
    return f"{host}:{int(port) + 1}"


def write_kubeconfig(cluster, path: Path) -> Path:
    pki_dir = cluster.root / "pki"
    ca = (pki_dir / "ca.crt").read_bytes()
    doc = yaml.safe_load(cluster.config.read_text())
    user = doc["users"][0]["user"]
    def b64(b: bytes) -> str:
        return base64.b64encode(b).decode()
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "bench",
        "clusters": [{"name": "bench", "cluster": {"server": f"https://{http_address(cluster)}",
                                                   "certificate-authority-data": b64(ca)}}],
        "users": [{"name": "admin", "user": {"client-certificate-data": user["client-certificate-data"],
                                             "client-key-data": user["client-key-data"]}}],
        "contexts": [{"name": "bench", "context": {"cluster": "bench", "user": "admin"}}]}))
    path.chmod(0o600)
    return path


def ssl_context(cluster) -> ssl.SSLContext:
    """The admin's client certificate, the cluster CA: what kubectl presents."""
    doc = yaml.safe_load(cluster.config.read_text())
    user = doc["users"][0]["user"]
    d = cluster.root / "http-bench"
    d.mkdir(exist_ok=True)
    (d / "admin.crt").write_bytes(base64.b64decode(user["client-certificate-data"]))
    (d / "admin.key").write_bytes(base64.b64decode(user["client-key-data"]))
    ctx = ssl.create_default_context(cafile=str(cluster.root / "pki" / "ca.crt"))
    ctx.load_cert_chain(d / "admin.crt", d / "admin.key")
    return ctx


async def wait_http(session: aiohttp.ClientSession, base: str, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while True:
        try:
            async with session.get(f"{base}/readyz") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        if time.monotonic() > end:
            raise RuntimeError(f"the HTTP API at {base} did not answer /readyz")
        await asyncio.sleep(0.3)


async def create_rates(cluster, bounded, bench_pod, n: int, concurrency: int,
                       rounds: int = 4) -> tuple[float, float]:
    base = f"https://{http_address(cluster)}"

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl_context(cluster),
                                                                    limit=concurrency)) as session:
        await wait_http(session, base)
        url = f"{base}/api/v1/namespaces/bench/pods"

        async def post(body: dict):
            async with session.post(url, json=body) as r:
                if r.status != 201:
                    raise RuntimeError(f"POST {url}: {r.status} {await r.text()}")
                await r.read()
        async with Client.connect(str(cluster.config)) as c:
            pods = c.pods("bench")
            # warm both paths (connections, caches) before either is timed
            await bounded(200, concurrency, lambda i: pods.create(bench_pod(f"warm-grpc-{i}")))
            await bounded(200, concurrency, lambda i: post(to_dict(bench_pod(f"warm-http-{i}"))))
            # the objects made beforehand: neither client's encoding of its own input is timed
            msgs = [bench_pod(f"grpc-{i}") for i in range(n)]
            bodies = [to_dict(bench_pod(f"http-{i}")) for i in range(n)]
            # alternating rounds, so a burst of load on the shared machine falls on both legs
            per, grpc_t, http_t = n // rounds, 0.0, 0.0
            for r in range(rounds):
                grpc_t += await bounded(per, concurrency, lambda i, r=r: pods.create(msgs[r * per + i]))
                http_t += await bounded(per, concurrency, lambda i, r=r: post(bodies[r * per + i]))
    return per * rounds / http_t, per * rounds / grpc_t


def timed(cmd: list[str], env: dict, expect: int) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {r.returncode}: {r.stderr.decode()[-500:]}")
    lines = r.stdout.count(b"\n") - 1  # the header
    if lines < expect:
        raise RuntimeError(f"{' '.join(cmd)} printed {lines} pods, want at least {expect}")
    return dt


async def run(cluster, report, bounded, bench_pod, *, total: int = 10000, creates: int = 2000,
              concurrency: int = 64) -> None:
    http_rate, grpc_rate = await create_rates(cluster, bounded, bench_pod, creates, concurrency)
    ratio = http_rate / grpc_rate
    report(f"h1. JSON pod create over HTTP ÷ gRPC (concurrency {concurrency}, 4 alternating rounds)",
           f"{http_rate:.0f}/s ÷ {grpc_rate:.0f}/s = {ratio:.2f}", "≥ 0.8", ratio >= 0.8)

    async with Client.connect(str(cluster.config)) as c:
        have = len((await c.pods("bench").list_all(page_size=500)).items)
        pods = c.pods("bench")
        await bounded(max(0, total - have), concurrency, lambda i: pods.create(bench_pod(f"fill-http-{i}")))
    home = cluster.root / "kubectl-home"
    home.mkdir(exist_ok=True)
    kenv = dict(os.environ, HOME=str(home), KUBECONFIG=str(write_kubeconfig(cluster, cluster.root / "kubectl.conf")))
    lenv = dict(os.environ, KUBELAB_CONFIG=str(cluster.config))
    kubectl, kubelab = [KUBECTL, "get", "pods", "-A"], KUBELAB + ["get", "pods", "-A"]
    timed(kubectl, kenv, total)  # fills kubectl's discovery cache, as a person's is
    k_times, l_times = [], []
    for _ in range(3):  # interleaved, so a slow moment of the machine falls on both
        k_times.append(timed(kubectl, kenv, total))
        l_times.append(timed(kubelab, lenv, total))
    k_med, l_med = statistics.median(k_times), statistics.median(l_times)
    report(f"h2. kubectl get pods -A ÷ kubelab get pods -A ({total} pods, whole command)",
           f"{k_med:.2f}s ÷ {l_med:.2f}s = {k_med / l_med:.2f}", "n/a", None)
