"""Cluster DNS: queries per second answered by one `kubelab dns` process and the p99 latency
under that load, with dnsmasq serving a static zone of the same names in the same run as the
peer. Part of `make bench` (bench/run.py calls `run`; `--only dns`, `--no-dns`).

The zone: SERVICES ClusterIP services and HEADLESS headless services of ENDPOINTS endpoints
each, created through bench/run.py's API server, which `kubelab dns` reads through its
informers; dnsmasq gets the same names as --host-record lines (and --local=/cluster.local/, so
it answers the domain itself and forwards nothing). Both listen on 127.0.0.1 only, and the
load generator asks only them.

The load: a separate process keeps WINDOW queries outstanding over UDP (closed loop), asking A
for names drawn from the zone, for SECONDS after a warm-up; it counts answers and the time of
each. Queries are made and answers read by dnspython; the harness reads only the reply's ID to
match it. On a 2-core machine the generator takes one core; its own CPU share is reported so a
client-bound figure (dnsmasq's) is seen as such.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kubelab.api.v1 import objects_pb2 as v1
from kubelab.client.client import Client
from kubelab.errors import AlreadyExists

SERVICES, HEADLESS, ENDPOINTS = 1000, 100, 10
WINDOW, SECONDS, WARMUP = 32, 5.0, 1.0
DOMAIN = "cluster.local"


def zone_spec() -> tuple[list[tuple[str, str]], list[tuple[str, list[str]]]]:
    """([(service, cluster ip)], [(headless service, [endpoint ips])]), all in namespace bench."""
    cip = [(f"svc-{i}", f"10.100.{i // 250}.{i % 250 + 1}") for i in range(SERVICES)]
    headless = [(f"hl-{i}", [f"10.244.{i // 20}.{(i % 20) * ENDPOINTS + j + 1}" for j in range(ENDPOINTS)])
                for i in range(HEADLESS)]
    return cip, headless


async def fill(client: Client) -> None:
    cip, headless = zone_spec()
    services, slices = client.resource("services", "bench"), client.resource("endpointslices", "bench")
    sem = asyncio.Semaphore(32)

    async def make(name: str, ip: str, eps: list[str]) -> None:
        s = v1.Service()
        s.metadata.name, s.metadata.namespace = name, "bench"
        s.spec.clusterIP = ip
        if ip != "None":
            s.spec.clusterIPs.append(ip)
        p = s.spec.ports.add(name="http", protocol="TCP", port=80)
        p.targetPort.number_value = 8080
        async with sem:
            await services.create(s)
            if eps:
                sl = v1.EndpointSlice(addressType="IPv4")
                sl.metadata.name, sl.metadata.namespace = f"{name}-1", "bench"
                sl.metadata.labels["kubernetes.io/service-name"] = name
                for a in eps:
                    sl.endpoints.add(addresses=[a]).conditions.ready = True
                sl.ports.add(name="http", protocol="TCP", port=8080)
                await slices.create(sl)
    ns = v1.Namespace()
    ns.metadata.name = "bench"
    with contextlib.suppress(AlreadyExists):  # bench/run.py's api part may have made it
        await client.namespaces().create(ns)
    await asyncio.gather(*(make(n, ip, []) for n, ip in cip), *(make(n, "None", eps) for n, eps in headless))


def query_names() -> list[str]:
    cip, headless = zone_spec()
    return [f"{n}.bench.svc.{DOMAIN}." for n, _ in cip] + [f"{n}.bench.svc.{DOMAIN}." for n, _ in headless]


def dnsmasq_conf(path: Path, port: int) -> Path:
    cip, headless = zone_spec()
    lines = [f"port={port}", "listen-address=127.0.0.1", "bind-interfaces", "no-resolv", "no-hosts",
             "no-poll", f"local=/{DOMAIN}/", "cache-size=10000", "log-facility=-"]
    lines += [f"host-record={n}.bench.svc.{DOMAIN},{ip}" for n, ip in cip]
    lines += [f"host-record={n}.bench.svc.{DOMAIN},{ip}" for n, ips in headless for ip in ips]
    path.write_text("\n".join(lines) + "\n")
    return path


# ---- the load generator (run as `python -m bench.dns load PORT`, one process)

def load(port: int, seconds: float = SECONDS, warmup: float = WARMUP, window: int = WINDOW) -> dict:
    import selectors
    import socket

    import dns.message
    names = query_names()
    rnd = random.Random(7)
    # a pool of ready-made queries, each its own ID, far more than the window: an ID is never
    # outstanding twice
    pool = []
    for qid in range(1, 8192):
        q = dns.message.make_query(rnd.choice(names), "A")
        q.id = qid
        pool.append(q.to_wire())
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.connect(("127.0.0.1", port))
    s.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(s, selectors.EVENT_READ)
    sent: dict[int, float] = {}
    lat: list[float] = []
    nxt, answered, lost = 0, 0, 0
    start = time.perf_counter()
    measure_from, end = start + warmup, start + warmup + seconds
    cpu0 = None
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        if cpu0 is None and now >= measure_from:
            cpu0, answered, lat = time.process_time(), 0, []
        while len(sent) < window:
            wire = pool[nxt]
            nxt = (nxt + 1) % len(pool)
            qid = nxt or len(pool)
            if qid in sent:  # an old query still out: count it lost and reuse its ID
                del sent[qid]
                lost += 1
            s.send(wire)
            sent[qid] = time.perf_counter()
        for _ in sel.select(0.2):
            while True:
                try:
                    data = s.recv(4096)
                except BlockingIOError:
                    break
                t = time.perf_counter()
                qid = int.from_bytes(data[:2], "big")
                t0 = sent.pop(qid, None)
                if t0 is not None:
                    answered += 1
                    if t0 >= measure_from:
                        lat.append(t - t0)
        # queries unanswered for a second are lost (UDP): free the window
        cutoff = time.perf_counter() - 1.0
        for qid in [k for k, v in sent.items() if v < cutoff]:
            del sent[qid]
            lost += 1
    cpu = time.process_time() - (cpu0 or 0)
    lat.sort()
    return {"qps": answered / seconds, "p50": lat[len(lat) // 2] if lat else None,
            "p99": lat[int(len(lat) * 0.99)] if lat else None, "lost": lost, "client_cpu": cpu / seconds}


def run_load(port: int) -> dict:
    # as a module: run as a script, this file would shadow dnspython's `dns` package
    root = str(Path(__file__).resolve().parents[1])
    p = subprocess.run([sys.executable, "-m", "bench.dns", "load", str(port)], capture_output=True, text=True, check=False,
                       timeout=SECONDS + WARMUP + 60, cwd=root, env=dict(os.environ, PYTHONPATH=root))
    if p.returncode != 0:
        raise RuntimeError(f"load generator failed: {p.stderr[-2000:]}")
    return json.loads(p.stdout)


def _figure(r: dict) -> str:
    p99 = f"{r['p99'] * 1000:.2f} ms" if r["p99"] is not None else "-"
    return f"{r['qps']:,.0f} q/s, p99 {p99} (client CPU {r['client_cpu']:.0%})"


async def wait_answers(port: int, name: str, timeout: float = 60) -> None:
    import dns.asyncquery
    import dns.message
    end = time.monotonic() + timeout
    while True:
        try:
            r = await dns.asyncquery.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=1)
            if r.answer:
                return
        except Exception as e:  # noqa: BLE001 - not up yet
            last = e
        else:
            last = f"an empty answer ({r.rcode()})"
        if time.monotonic() > end:
            raise RuntimeError(f"no answer for {name} on port {port} in {timeout:.0f}s: {last}")
        await asyncio.sleep(0.2)


def start_dnsmasq(binary: str, conf: Path, d: Path) -> subprocess.Popen:
    return subprocess.Popen([binary, "--keep-in-foreground", f"--conf-file={conf}", f"--pid-file={d}/pid",
                             "--user=root"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def run(cluster, report) -> None:
    async with Client.connect(str(cluster.config)) as c:
        t0 = time.perf_counter()
        await fill(c)
        print(f"dns: zone of {SERVICES} services + {HEADLESS} headless x {ENDPOINTS} endpoints made in "
              f"{time.perf_counter() - t0:.1f}s", flush=True)
    last = f"hl-{HEADLESS - 1}.bench.svc.{DOMAIN}."
    ours = {}
    for cache in ("0", "10000"):
        server = cluster.spawn("dns", "--config", str(cluster.config), "--listen", "127.0.0.1:0", "--cache-size", cache)
        log = cluster.root / "dns.log"
        mark = log.stat().st_size if log.exists() else 0
        end = time.monotonic() + 60
        while not (m := re.search(r"on 127\.0\.0\.1:(\d+) \(udp", log.read_text()[mark:] if log.exists() else "")):
            if server.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"kubelab dns did not start: {log.read_text()[-1000:] if log.exists() else ''}")
            await asyncio.sleep(0.2)
        port = int(m.group(1))
        try:
            await wait_answers(port, last)  # the informers have the whole zone
            ours[cache] = await asyncio.to_thread(run_load, port)
        finally:
            server.terminate()
            server.wait(15)
            cluster.procs.remove(server)
    report("DNS: kubelab dns, A q/s answered over UDP (no answer cache)", _figure(ours["0"]), "n/a", None)
    report("DNS: kubelab dns, same, answer cache on (default)", _figure(ours["10000"]), "n/a", None)
    ours = ours["10000"]

    dnsmasq = shutil.which("dnsmasq")
    if dnsmasq is None:
        report("DNS: dnsmasq peer, same zone", "dnsmasq not installed (apt-get install dnsmasq-base)", "n/a", None)
        return
    from kubelab.etcd.server import free_port
    with tempfile.TemporaryDirectory(prefix="kubelab-dnsmasq-") as d:
        mport = free_port()
        conf = dnsmasq_conf(Path(d) / "dnsmasq.conf", mport)
        peer = start_dnsmasq(dnsmasq, conf, Path(d))
        try:
            await wait_answers(mport, last)
            theirs = await asyncio.to_thread(run_load, mport)
        finally:
            peer.terminate()
            peer.wait(10)
    report("DNS: dnsmasq (static zone, same names), same load", _figure(theirs), "n/a", None)
    report("DNS: kubelab dns q/s / dnsmasq q/s", f"{ours['qps'] / theirs['qps']:.2f}", "n/a", None)


if __name__ == "__main__":
    if sys.argv[1:2] == ["load"]:
        print(json.dumps(load(int(sys.argv[2]))))
