"""Pod-to-pod TCP throughput across nodes over the VXLAN overlay ÷ node-to-node throughput on the
underlay, same run, same tool (a Python socket pump). Part of `make bench` (bench/run.py calls
`run`; `--no-overlay` skips it).

The nodes are network namespaces made as tests/integration/test_overlay.py makes them
(worker/overlay/testbed.py): an underlay namespace with a bridge, two node namespaces with
`eth1` on it (and a NAT-like `eth0` the agents must not pick). Real `kubelab overlay` agents run
in the nodes, as their nodes (system:node:NAME), against bench/run.py's API server plus a
controller manager for nodeipam, reached through a relay listening inside the underlay
namespace, so that nothing is added to the host's network namespace. The pods are namespaces
wired into a `cni0` in their node by worker/network's PodNetwork with the MTU from the agent's
subnet file. Underlay: node1's eth1 -> node2's eth1. Overlay: pod on node1 -> pod on node2 by pod
IP (cni0, flannel.1, eth1, br0 and back). Rounds alternate between the two; the medians are
compared. Every namespace (and with them every link, route and rule) and process goes at the
end, also when the benchmark fails.
"""
from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from kubelab import pki
from kubelab.api.v1 import objects_pb2 as v1
from kubelab.client.client import Client
from kubelab.client.config import ClientConfig, write_config
from worker.network import CommandRunner, PodNetwork
from worker.overlay import testbed
from worker.overlay.testbed import NETNS, sh

NET = "192.168.214"  # the underlay, inside the namespaces only
API_IP = f"{NET}.254"
SANS = [API_IP]  # the API server's certificate must name the address the agents dial
NODES = (1, 2)
PORT = 5201

# Receives one connection until EOF; prints the bytes and the seconds from the first byte to EOF.
SINK = r"""
import json, socket, sys, time
s = socket.create_server(("0.0.0.0", int(sys.argv[1])))
print("listening", flush=True)
c, _ = s.accept()
view, n, t0 = memoryview(bytearray(1 << 20)), 0, None
while k := c.recv_into(view):
    if t0 is None:
        t0 = time.perf_counter()
    n += k
print(json.dumps({"bytes": n, "seconds": time.perf_counter() - (t0 or time.perf_counter())}), flush=True)
"""

# Connects (retrying while the path comes up), sends for argv[3] seconds, closes.
SOURCE = r"""
import socket, sys, time
end = time.monotonic() + 20
while True:
    try:
        s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
        break
    except OSError:
        if time.monotonic() > end:
            raise
        time.sleep(0.1)
s.settimeout(None)
buf = bytes(256 << 10)
stop = time.monotonic() + float(sys.argv[3])
while time.monotonic() < stop:
    s.sendall(buf)
s.close()
"""


def _kill_group(p: subprocess.Popen | asyncio.subprocess.Process) -> None:
    if p.returncode is not None or (isinstance(p, subprocess.Popen) and p.poll() is not None):
        return
    try:
        os.killpg(p.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if isinstance(p, subprocess.Popen):
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


async def pump(client_ns: Path, server_ns: Path, ip: str, seconds: float) -> float:
    """Bits per second from a source in client_ns to a sink at ip in server_ns."""
    sink = await asyncio.create_subprocess_exec("nsenter", f"--net={server_ns}", "--", sys.executable, "-c", SINK,
                                                str(PORT), stdout=asyncio.subprocess.PIPE, start_new_session=True)
    source = None
    try:
        line = await asyncio.wait_for(sink.stdout.readline(), 30)
        if line.strip() != b"listening":
            raise RuntimeError(f"the sink in {server_ns} did not start: {line!r}")
        source = await asyncio.create_subprocess_exec("nsenter", f"--net={client_ns}", "--", sys.executable, "-c",
                                                      SOURCE, ip, str(PORT), str(seconds),
                                                      stderr=asyncio.subprocess.PIPE, start_new_session=True)
        _, err = await asyncio.wait_for(source.communicate(), seconds + 60)
        if source.returncode != 0:
            raise RuntimeError(f"sending to {ip}:{PORT} failed: {err.decode()[-500:]}")
        got = json.loads(await asyncio.wait_for(sink.stdout.readline(), 30))
        return got["bytes"] * 8 / got["seconds"]
    finally:
        for p in (source, sink):
            if p is not None and p.returncode is None:
                _kill_group(p)
                await p.wait()


def _node_config(cluster, i: int, path: Path) -> Path:
    ca, ca_key = (cluster.root / "pki/ca.crt").read_bytes(), (cluster.root / "pki/ca.key").read_bytes()
    cert, key = pki.issue_cert(ca, ca_key, f"system:node:node{i}", organizations=["system:nodes"])
    write_config(path, ClientConfig(f"{API_IP}:6443", ca, cert, key))
    return path


async def _wait(what: str, pred, timeout: float = 60) -> object:
    end = time.monotonic() + timeout
    while True:
        try:
            if got := await pred():
                return got
        except Exception:  # noqa: BLE001,S110 - not there yet
            pass
        if time.monotonic() > end:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.3)


def _peer_programmed(ns: str, subnet: str) -> bool:
    routes = json.loads(sh("ip", "-j", "-4", "route", "show", "dev", "flannel.1", ns=ns, check=False) or "[]")
    fdb = json.loads(sh("bridge", "-j", "fdb", "show", "dev", "flannel.1", ns=ns, check=False) or "[]")
    return any(r.get("dst") == subnet for r in routes) and any(f.get("dst", "").startswith(NET) for f in fdb)


async def run(cluster, report, *, seconds: float = 3.0, rounds: int = 3) -> None:
    suffix = secrets.token_hex(3)
    underlay, nodes = f"klbo-{suffix}-ul", {i: f"klbo-{suffix}-n{i}" for i in NODES}
    tmp = cluster.root / "overlay"
    tmp.mkdir(parents=True, exist_ok=True)
    relay, agents, nets = None, [], {}
    try:
        testbed.build_hosts(underlay, nodes, NET)
        relay = testbed.start_relay(underlay, API_IP, 6443, int(cluster.address.rsplit(":", 1)[1]))
        cluster.spawn("controller-manager", "--config", str(cluster.config), "--controllers", "nodeipam",
                      "--leader-elect", "false")
        subnets = {}
        async with Client.connect(str(cluster.config)) as c:
            for i in NODES:
                node = v1.Node()
                node.metadata.name = f"node{i}"
                await c.nodes().create(node)
            for i in NODES:
                subnets[i] = await _wait(f"node{i}'s podCIDR",
                                         lambda i=i: _pod_cidr(c, f"node{i}"))
        for i, ns in nodes.items():
            with open(tmp / f"agent{i}.log", "ab") as log:  # noqa: ASYNC230 - a moment, once per node
                agents.append(subprocess.Popen(  # noqa: ASYNC220 - it runs on, stopped in the finally
                    ["nsenter", f"--net={NETNS / ns}", "--", sys.executable, "-m", "kubelab.cli.main", "overlay",
                     "--config", str(_node_config(cluster, i, tmp / f"node{i}.conf")), "--node-name", f"node{i}",
                     "--iface", "eth1", "--subnet-file", str(tmp / f"subnet{i}.env")],
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        for i in NODES:
            other = subnets[3 - i]

            async def programmed(i=i, other=other):
                return _peer_programmed(nodes[i], other)
            try:
                await _wait(f"node{i}'s entries for the other node", programmed)
            except RuntimeError:
                raise RuntimeError(f"{(tmp / f'agent{i}.log').read_text(errors='replace')[-2000:]}") from None
        pods = {}
        for i in NODES:
            env = dict(line.split("=", 1) for line in (tmp / f"subnet{i}.env").read_text().split())
            nets[i] = PodNetwork(tmp / f"pods{i}", bridge="cni0", mtu=int(env["FLANNEL_MTU"]),
                                 runner=CommandRunner(prefix=["nsenter", f"--net={NETNS / nodes[i]}"]))
            await nets[i].ensure_bridge(subnets[i])
            pods[i] = await nets[i].setup_pod(suffix + secrets.token_hex(29), f"pod{i}", "bench")
        under, over = [], []
        await pump(pods[1].netns_path, pods[2].netns_path, pods[2].ip, 0.5)  # warm up: neighbours, caches
        for _ in range(rounds):
            under.append(await pump(NETNS / nodes[1], NETNS / nodes[2], f"{NET}.2", seconds))
            over.append(await pump(pods[1].netns_path, pods[2].netns_path, pods[2].ip, seconds))
        print("overlay rounds (Gbit/s): underlay " + " ".join(f"{x / 1e9:.2f}" for x in under)
              + ", pod to pod " + " ".join(f"{x / 1e9:.2f}" for x in over), flush=True)
        u, o = statistics.median(under), statistics.median(over)
        ratio = o / u
        report(f"8. pod-to-pod TCP across nodes over VXLAN ÷ node-to-node underlay ({rounds}×{seconds:g}s)",
               f"{o / 1e9:.2f} Gbit/s ÷ {u / 1e9:.2f} Gbit/s = {ratio:.2f}", "≥ 0.8", ratio >= 0.8)
    finally:
        for p in agents:
            _kill_group(p)
        if relay is not None:
            _kill_group(relay)
        for n in nets.values():
            try:
                await n.cleanup_all(remove_bridge=True)
            except Exception:  # noqa: BLE001,S110 - the namespaces go anyway
                pass
        left = testbed.delete_namespaces(suffix)
        if left:
            print(f"the overlay benchmark left behind: {left}", file=sys.stderr, flush=True)
            if sys.exc_info()[0] is None:
                raise RuntimeError(f"the overlay benchmark left behind: {left}")


async def _pod_cidr(c, name: str) -> str:
    return (await c.nodes().get(name)).spec.podCIDR
