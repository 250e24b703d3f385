"""The overlay agent (worker/overlay) on real kernel networking, against a real control plane.

The hosts are network namespaces this module makes (with worker/overlay/testbed.py):
`klov-<rand>-ul` holds the underlay, a bridge with 192.168.213.254/24, and every "node"
`klov-<rand>-nI` has its underlay interface
`eth1` (192.168.213.I) on that bridge, plus an `eth0` holding 10.0.2.15 with the default route,
as Vagrant's NAT interface does on every VM (the agent must not pick it: it runs with
`--iface eth1`). The control plane (`kubelab control-plane`: etcd, API server, nodeipam) runs
on the host's loopback; the agents reach it at 192.168.213.254:6443 through a relay process
that listens inside the underlay namespace and connects to the host's loopback, so no address
or route is added to the host's namespace. Pods are namespaces wired into a `cni0` inside their
node's namespace by worker/network's PodNetwork. Teardown removes every namespace (and with
them every link, route and rule) and checks that none is left, even when a test fails.
"""
from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kubelab import pki
from kubelab.api.v1 import objects_pb2 as v1
from kubelab.errors import NotFound
from tests.integration.conftest import (
    ROOT,
    admin_config,
    launch_control_plane,
    stop_control_plane,
    stop_group,
    wait_for,
)
from worker.network import CommandRunner, PodNetwork
from worker.overlay import testbed
from worker.overlay.testbed import NETNS, sh

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("bridge")
                                or not shutil.which("iptables") or not shutil.which("nsenter"),
                                reason="needs root, iproute2, iptables and nsenter")

NET = "192.168.213"
API = f"{NET}.254:6443"
NODES = (1, 2, 3)
BACKEND_DATA = "flannel.alpha.coreos.com/backend-data"
PUBLIC_IP = "flannel.alpha.coreos.com/public-ip"
# the names of the links this module makes (inside its namespaces only)
OUR_LINKS = {"flannel.1", "br0", "eth0", "eth0nat", "eth1", "cni0", *(f"v{i}" for i in NODES)}

# One TCP connection accepted; prints the peer's address (what the receiver sees as source).
SERVER = r"""
import socket, sys
s = socket.create_server(("0.0.0.0", int(sys.argv[1])))
print("listening", flush=True)
c, peer = s.accept()
print(peer[0], flush=True)
c.close()
"""

CLIENT = r"""
import socket, sys, time
end = time.monotonic() + 20
while True:
    try:
        socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()
        break
    except OSError:
        if time.monotonic() > end:
            raise
        time.sleep(0.1)
"""


def js(*argv: str, ns: str) -> list:
    return json.loads(sh(*argv, ns=ns) or "[]")


@dataclass
class Cluster:
    suffix: str
    tmp: Path
    cp: object
    agents: dict = field(default_factory=dict)

    def agent_config(self, i: int) -> Path:
        return self.tmp / f"node{i}.conf"

    def ns(self, i: int) -> str:
        return f"klov-{self.suffix}-n{i}"

    @property
    def underlay(self) -> str:
        return f"klov-{self.suffix}-ul"

    def start_agent(self, i: int, *flags: str) -> subprocess.Popen:
        log = open(self.tmp / f"agent{i}.log", "ab")
        p = subprocess.Popen(["nsenter", f"--net={NETNS / self.ns(i)}", "--", sys.executable, "-m", "kubelab.cli.main",
                              "overlay", "--config", str(self.agent_config(i)), "--node-name", f"node{i}",
                              "--iface", "eth1", "--subnet-file", str(self.tmp / f"subnet{i}.env"), "-v", "2", *flags],
                             env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
        self.agents[i] = p
        return p

    def log(self, i: int) -> str:
        return (self.tmp / f"agent{i}.log").read_text(errors="replace")[-3000:]


def _host_state() -> tuple[set, str]:
    links = {link["ifname"] for link in json.loads(sh("ip", "-j", "link", "show") or "[]")}
    return links, sh("ip", "-4", "route", "show", "table", "all")


def _teardown(c: Cluster, relay: subprocess.Popen | None) -> list[str]:
    for p in c.agents.values():
        stop_group(p)
    if relay is not None:
        stop_group(relay)
    return testbed.delete_namespaces(c.suffix)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("overlay")
    host_links, host_routes = _host_state()
    c = Cluster(secrets.token_hex(3), tmp, None)
    relay = None
    try:
        testbed.build_hosts(c.underlay, {i: c.ns(i) for i in NODES}, NET)
        # the serving certificate must name the address the agents dial; the control plane
        # keeps the SANs it finds
        pki.ensure_control_plane_pki(tmp / "cp" / "pki", sans=[API.split(":")[0]])
        c.cp = launch_control_plane(tmp / "cp")
        relay = testbed.start_relay(c.underlay, API.split(":")[0], 6443, c.cp.port)
        # each agent runs as its node (system:node:NAME): it reads Nodes and writes only its own
        for i in NODES:
            admin_config(tmp / "cp" / "pki", API, c.agent_config(i), cn=f"system:node:node{i}", orgs=("system:nodes",))
        asyncio.run(_create_nodes(c))
        for i in NODES:
            c.start_agent(i)
        yield c
    finally:
        left = _teardown(c, relay)
        if c.cp is not None:
            stop_control_plane(c.cp)
        # only what this module makes counts: other tests may add links and routes meanwhile
        links, routes = _host_state()
        left += [f"host link {name}" for name in (links - host_links) & OUR_LINKS]
        left += [f"host route {r}" for r in set(routes.splitlines()) - set(host_routes.splitlines())
                 if "flannel.1" in r or NET in r]
    assert not left, f"overlay test left behind: {left}"


async def _create_nodes(c: Cluster) -> None:
    async with c.cp.client() as client:
        for i in NODES:
            node = v1.Node()
            node.metadata.name = f"node{i}"
            await client.nodes().create(node)
        # nodeipam assigns each node its /24
        for i in NODES:
            await wait_for(lambda i=i: _pod_cidr(client, f"node{i}"), timeout=30, what=f"node{i}'s podCIDR")


async def _pod_cidr(client, name: str) -> str:
    return (await client.nodes().get(name)).spec.podCIDR


@dataclass(frozen=True)
class NodeFacts:
    i: int
    subnet: str  # 10.244.X.0/24
    vtep_ip: str  # 10.244.X.0
    mac: str
    public_ip: str


def vxlan_device(c: Cluster, i: int) -> dict | None:
    r = subprocess.run(["nsenter", f"--net={NETNS / c.ns(i)}", "--", "ip", "-j", "-d", "addr", "show", "dev",
                        "flannel.1"], capture_output=True, text=True)
    return json.loads(r.stdout)[0] if r.returncode == 0 else None


async def facts(c: Cluster, nodes=NODES) -> dict[int, NodeFacts]:
    """What each node is: its podCIDR from the API, its VTEP MAC as its kernel shows it."""
    out = {}
    async with c.cp.client() as client:
        for i in nodes:
            subnet = await _pod_cidr(client, f"node{i}")
            dev = await wait_for(lambda i=i: vxlan_device(c, i), timeout=30, what=f"flannel.1 on node{i}")
            out[i] = NodeFacts(i, subnet, subnet.split("/")[0], dev["address"], f"{NET}.{i}")
    return out


def entries(c: Cluster, i: int) -> tuple[list, list, list]:
    """Node i's routes, neighbours and FDB entries on flannel.1, as iproute2 lists them."""
    ns = c.ns(i)
    routes = sorted((r["dst"], r.get("gateway"), tuple(r.get("flags", [])))
                    for r in js("ip", "-j", "-4", "route", "show", "table", "main", "dev", "flannel.1", ns=ns))
    neighs = sorted((n["dst"], n.get("lladdr"), tuple(n.get("state", [])))
                    for n in js("ip", "-j", "-4", "neigh", "show", "dev", "flannel.1", ns=ns))
    fdbs = sorted((f["mac"], f.get("dst"), tuple(sorted(f.get("flags", []))), f.get("state"))
                  for f in js("bridge", "-j", "fdb", "show", "dev", "flannel.1", ns=ns))
    return routes, neighs, fdbs


def expected(peers: list[NodeFacts]) -> tuple[list, list, list]:
    """Exactly one route, one permanent neighbour and one FDB entry per other node."""
    return (sorted((p.subnet, p.vtep_ip, ("onlink",)) for p in peers),
            sorted((p.vtep_ip, p.mac, ("PERMANENT",)) for p in peers),
            sorted((p.mac, p.public_ip, ("self",), "permanent") for p in peers))


async def wait_entries(c: Cluster, i: int, peers: list[NodeFacts], timeout: float = 30) -> None:
    want = expected(peers)
    end = time.monotonic() + timeout
    while (have := entries(c, i)) != want:
        if time.monotonic() > end:
            raise AssertionError(f"node{i}: entries on flannel.1\n  have {have}\n  want {want}\n{c.log(i)}")
        await asyncio.sleep(0.2)


async def test_device_and_annotations(cluster):
    f = await facts(cluster)
    async with cluster.cp.client() as client:
        for i in NODES:
            dev = vxlan_device(cluster, i)
            info = dev["linkinfo"]["info_data"]
            assert dev["linkinfo"]["info_kind"] == "vxlan"
            assert (info["id"], info["port"], info["local"], info["link"], info["learning"]) == \
                (1, 8472, f"{NET}.{i}", "eth1", False), f"node{i}: {info}"
            assert dev["mtu"] == 1450  # 50 below eth1's 1500
            assert [(a["local"], a["prefixlen"]) for a in dev["addr_info"] if a["family"] == "inet"] == \
                [(f[i].vtep_ip, 32)]
            node = await wait_for(lambda i=i: _annotated(client, f"node{i}"), timeout=30, what=f"node{i} annotations")
            ann = node.metadata.annotations
            assert ann["flannel.alpha.coreos.com/backend-type"] == "vxlan"
            assert json.loads(ann[BACKEND_DATA]) == {"VNI": 1, "VtepMAC": f[i].mac}
            assert ann[PUBLIC_IP] == f"{NET}.{i}"  # eth1's, never the NAT interface's 10.0.2.15
            assert ann["flannel.alpha.coreos.com/kube-subnet-manager"] == "true"
            # what CNI's flannel plugin reads: the pods' gateway address and MTU
            assert (cluster.tmp / f"subnet{i}.env").read_text() == (
                f"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={f[i].vtep_ip[:-1]}1/24\n"
                "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n")


async def _annotated(client, name: str):
    node = await client.nodes().get(name)
    return node if PUBLIC_IP in node.metadata.annotations else None


async def test_one_route_neighbour_and_fdb_entry_per_other_node(cluster):
    f = await facts(cluster)
    async with cluster.cp.client() as client:
        # a node whose annotations are garbage is left out; the agents keep running
        bad = v1.Node()
        bad.metadata.name = "bogus"
        bad.metadata.annotations.update({"flannel.alpha.coreos.com/backend-type": "vxlan", BACKEND_DATA: "{not json",
                                         PUBLIC_IP: f"{NET}.99"})
        await client.nodes().create(bad)
        try:
            for i in NODES:
                await wait_entries(cluster, i, [f[j] for j in NODES if j != i])
            for i in NODES:
                assert cluster.agents[i].poll() is None, cluster.log(i)
        finally:
            await client.nodes().delete("bogus")


async def test_pod_to_pod_across_nodes_keeps_the_source_ip(cluster):
    f = await facts(cluster)
    for i in (1, 2):
        await wait_entries(cluster, i, [f[j] for j in NODES if j != i])
    nets = {i: PodNetwork(cluster.tmp / f"pods{i}", bridge="cni0", mtu=1450,
                          runner=CommandRunner(prefix=["nsenter", f"--net={NETNS / cluster.ns(i)}"])) for i in (1, 2)}
    try:
        pods = {}
        for i in (1, 2):
            await nets[i].ensure_bridge(f[i].subnet)  # cni0, forwarding, masquerade out of the cluster CIDR
            pods[i] = await nets[i].setup_pod(cluster.suffix + secrets.token_hex(29), f"pod{i}", "default")
        # pod on node1 -> pod on node2 by pod IP: the receiver sees the sender's pod IP
        assert await connect(pods[1].netns_path, pods[2].netns_path, pods[2].ip, 8080) == pods[1].ip
        # and back
        assert await connect(pods[2].netns_path, pods[1].netns_path, pods[1].ip, 8080) == pods[2].ip
        # leaving the cluster CIDR (to an underlay host): masqueraded behind node1's address
        assert await connect(pods[1].netns_path, NETNS / cluster.underlay, f"{NET}.254", 8081) == f"{NET}.1"
    finally:
        for n in nets.values():
            await n.cleanup_all(remove_bridge=True)


async def connect(client_ns: Path, server_ns: Path, ip: str, port: int) -> str:
    """Connect from one namespace to a server in another; the address the server saw."""
    server = await asyncio.create_subprocess_exec("nsenter", f"--net={server_ns}", "--", sys.executable, "-c", SERVER,
                                                  str(port), stdout=asyncio.subprocess.PIPE)
    try:
        assert (await asyncio.wait_for(server.stdout.readline(), 30)).strip() == b"listening"
        client = await asyncio.create_subprocess_exec("nsenter", f"--net={client_ns}", "--", sys.executable, "-c",
                                                      CLIENT, ip, str(port), stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(client.communicate(), 60)
        assert client.returncode == 0, f"connecting to {ip}:{port} failed: {err.decode()[-500:]}"
        return (await asyncio.wait_for(server.stdout.readline(), 30)).decode().strip()
    finally:
        if server.returncode is None:
            server.kill()
        await server.wait()


async def test_agent_restart_leaves_no_duplicates_and_removes_stale_entries(cluster):
    f = await facts(cluster)
    peers = [f[2], f[3]]
    await wait_entries(cluster, 1, peers)
    stop_group(cluster.agents[1])
    ns = cluster.ns(1)
    # behind the stopped agent: a stale peer's entries, a missing FDB entry, a changed MTU
    sh("ip", "route", "add", "10.244.250.0/24", "via", "10.244.250.0", "dev", "flannel.1", "onlink", ns=ns)
    sh("ip", "neigh", "add", "10.244.250.0", "lladdr", "02:00:00:00:00:fa", "dev", "flannel.1", "nud", "permanent",
       ns=ns)
    sh("bridge", "fdb", "append", "02:00:00:00:00:fa", "dev", "flannel.1", "dst", f"{NET}.250", ns=ns)
    sh("bridge", "fdb", "del", f[2].mac, "dev", "flannel.1", "dst", f[2].public_ip, ns=ns)
    # and a duplicate: a second route to node3's /24 (the kernel keeps one FDB destination
    # per unicast MAC and one neighbour per address, so those cannot be doubled)
    sh("ip", "route", "add", f[3].subnet, "via", f[3].vtep_ip, "dev", "flannel.1", "onlink", "metric", "100", ns=ns)
    sh("ip", "link", "set", "flannel.1", "mtu", "1400", ns=ns)
    assert entries(cluster, 1) != expected(peers)
    cluster.start_agent(1)
    await wait_entries(cluster, 1, peers)
    dev = await wait_for(lambda: (d := vxlan_device(cluster, 1)) and d["mtu"] == 1450 and d, timeout=30,
                         what="flannel.1's MTU restored")
    assert dev["address"] == f[1].mac  # the device was kept (or remade with the same MAC)
    # a second restart with nothing to repair changes nothing: no entry removed or added
    # (the agent logs a summary only for passes that change something)
    stop_group(cluster.agents[1])
    log = cluster.tmp / "agent1.log"
    starts = log.read_text().count("overlay agent for node")
    cluster.start_agent(1)

    def since_restart() -> str:
        parts = log.read_text().split("overlay agent for node")
        return parts[-1] if len(parts) > starts + 1 else ""
    await wait_for(lambda: "flannel.1 up" in since_restart(), timeout=30, what="the restarted agent's first pass")
    assert "routes/neighbours/fdb entries" not in since_restart(), since_restart()
    assert entries(cluster, 1) == expected(peers)


async def test_a_node_whose_underlay_ip_changes_is_followed_by_the_others(cluster):
    f = await facts(cluster)
    ns2 = cluster.ns(2)
    sh("ip", "addr", "add", f"{NET}.12/24", "dev", "eth1", ns=ns2)
    try:
        stop_group(cluster.agents[2])
        cluster.start_agent(2, "--node-ip", f"{NET}.12")
        moved = NodeFacts(2, f[2].subnet, f[2].vtep_ip, f[2].mac, f"{NET}.12")
        # node2's flannel.1 is made again with the new local address and the same MAC; the
        # others move their FDB entry for it
        for i in (1, 3):
            await wait_entries(cluster, i, [moved if j == 2 else f[j] for j in NODES if j != i])
        await wait_entries(cluster, 2, [f[1], f[3]])
        dev = vxlan_device(cluster, 2)
        assert (dev["linkinfo"]["info_data"]["local"], dev["address"]) == (f"{NET}.12", f[2].mac)
    finally:
        stop_group(cluster.agents[2])
        cluster.start_agent(2)
        for i in (1, 3):
            await wait_entries(cluster, i, [f[j] for j in NODES if j != i])
        sh("ip", "addr", "del", f"{NET}.12/24", "dev", "eth1", ns=ns2)


async def test_deleted_node_entries_go_from_the_others(cluster):
    f = await facts(cluster)
    for i in NODES:
        await wait_entries(cluster, i, [f[j] for j in NODES if j != i])
    stop_group(cluster.agents[3])
    async with cluster.cp.client() as client:
        await client.nodes().delete("node3")
        await wait_for(lambda: _gone(client, "node3"), timeout=30, what="node3 deleted")
    for i in (1, 2):
        await wait_entries(cluster, i, [f[3 - i]])


async def _gone(client, name: str) -> bool:
    try:
        await client.nodes().get(name)
        return False
    except NotFound:
        return True


def test_bad_flags_are_refused_with_the_flag_named(cluster):
    r = subprocess.run(["nsenter", f"--net={NETNS / cluster.ns(1)}", "--", sys.executable, "-m", "kubelab.cli.main",
                        "overlay", "--config", str(cluster.agent_config(1)), "--node-name", "node1", "--iface", "eth9"],
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "--iface eth9: no such interface" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-m", "kubelab.cli.main", "overlay", "--node-ip", "10.0.0.300"],
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert 'invalid --node-ip "10.0.0.300"' in r.stdout, r.stdout + r.stderr
