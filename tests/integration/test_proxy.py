"""kube-proxy (worker/proxy) on real iptables, fed by a real control plane.

The network is namespaces this module makes: a "node" `klk-<rand>-node` with a bridge `cni0`
(10.244.1.1/24) and three "pods" `klk-<rand>-pa|pb|pc` (10.244.1.2-4) on it, each a tiny TCP
and UDP server that answers with its name and the peer address it sees; and an "outside" host
`klk-<rand>-out` (192.168.77.2) on a veth to the node's `eth0` (192.168.77.1), for NodePort and
off-cluster clients. The proxier runs in this process against `kubelab control-plane` on the
host's loopback and applies its rules in the node's namespace through a command runner
(`nsenter --net=...`). Services have no selector: the tests write their EndpointSlices, as
Kubernetes lets one do for such services. Deleting the namespaces removes every rule they hold;
teardown checks none is left.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass

import pytest
from google.protobuf import struct_pb2

from kubelab.api.v1 import objects_pb2 as v1
from kubelab.errors import NotFound
from tests.integration.conftest import wait_for
from worker.network import CommandRunner
from worker.overlay.testbed import NETNS, sh
from worker.proxy import rules as rl
from worker.proxy.model import ServicePort
from worker.proxy.proxier import Proxier, ProxyConfig

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("iptables-restore")
                                or not shutil.which("nsenter"), reason="needs root, iproute2, iptables and nsenter")

CIDR = "10.244.0.0/16"
GW = "10.244.1.1"
PODS = {"pa": "10.244.1.2", "pb": "10.244.1.3", "pc": "10.244.1.4"}
NODE_IP, OUT_IP = "192.168.77.1", "192.168.77.2"

# Answers every TCP connection on 8080 and every UDP datagram on 5353 with "NAME PEER-IP".
SERVER = r"""
import socket, sys, threading
name = sys.argv[1]
t = socket.create_server(("0.0.0.0", 8080), backlog=64)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 5353))
def udp():
    while True:
        data, peer = u.recvfrom(100)
        u.sendto(f"{name} {peer[0]}".encode(), peer)
threading.Thread(target=udp, daemon=True).start()
print("ready", flush=True)
while True:
    c, peer = t.accept()
    c.sendall(f"{name} {peer[0]}".encode()); c.close()
"""

# N requests to IP PORT (tcp or udp); one line per request: the answer, or "error ...".
CLIENT = r"""
import socket, sys
ip, port, n, proto = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
for _ in range(n):
    try:
        if proto == "tcp":
            with socket.create_connection((ip, port), timeout=2) as s:
                print(s.recv(100).decode(), flush=True)
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(2); s.sendto(b"?", (ip, port)); print(s.recv(100).decode(), flush=True)
    except OSError as e:
        print("error", type(e).__name__, flush=True)
"""


@dataclass
class Net:
    sfx: str
    servers: list

    def ns(self, short: str) -> str:
        return f"klk-{self.sfx}-{short}"

    def request(self, frm: str, ip: str, port: int, n: int = 1, proto: str = "tcp") -> list[tuple[str, str]]:
        """(answering pod, source it saw) per request, ("error", kind) for a failed one."""
        out = sh(sys.executable, "-c", CLIENT, ip, str(port), str(n), proto, ns=self.ns(frm))
        return [tuple(line.split()[:2]) for line in out.splitlines()]

    def save(self) -> str:
        return sh("iptables-save", ns=self.ns("node"))


def _build(n: Net) -> None:
    node, out = n.ns("node"), n.ns("out")
    for ns in (node, out, *(n.ns(p) for p in PODS)):
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "-n", node, "link", "add", "cni0", "type", "bridge")
    sh("ip", "-n", node, "addr", "add", f"{GW}/24", "dev", "cni0")
    sh("ip", "-n", node, "link", "set", "cni0", "up")
    for p, ip in PODS.items():
        sh("ip", "-n", node, "link", "add", f"veth{p}", "type", "veth", "peer", "name", "eth0", "netns", n.ns(p))
        sh("ip", "-n", node, "link", "set", f"veth{p}", "master", "cni0", "up")
        # as the CNI bridge plugin's hairpinMode (and the kubelet's hairpin-veth): with br_netfilter a
        # pod's packet DNATed back to itself is bridged out of the port it came in by
        sh("ip", "-n", node, "link", "set", f"veth{p}", "type", "bridge_slave", "hairpin", "on")
        sh("ip", "-n", n.ns(p), "addr", "add", f"{ip}/24", "dev", "eth0")
        sh("ip", "-n", n.ns(p), "link", "set", "eth0", "up")
        sh("ip", "-n", n.ns(p), "route", "add", "default", "via", GW)
    sh("ip", "-n", node, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", out)
    sh("ip", "-n", node, "addr", "add", f"{NODE_IP}/24", "dev", "eth0")
    sh("ip", "-n", out, "addr", "add", f"{OUT_IP}/24", "dev", "eth0")
    sh("ip", "-n", node, "link", "set", "eth0", "up")
    sh("ip", "-n", out, "link", "set", "eth0", "up")
    # the node's default route points at the outside host (a node sending to a cluster IP needs a
    # route before OUTPUT's DNAT); the outside host routes service addresses to the node
    sh("ip", "-n", node, "route", "add", "default", "via", OUT_IP)
    sh("ip", "-n", out, "route", "add", "10.96.0.0/12", "via", NODE_IP)
    # somebody else's rules, which the proxier must leave alone
    sh("iptables", "-t", "nat", "-N", "OTHER-CHAIN", ns=node)
    sh("iptables", "-t", "nat", "-A", "OTHER-CHAIN", "-p", "tcp", "--dport", "9999", "-j", "RETURN", ns=node)
    sh("iptables", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "9999", "-j", "OTHER-CHAIN", ns=node)
    sh("iptables", "-t", "filter", "-A", "FORWARD", "-p", "tcp", "--dport", "9998", "-j", "ACCEPT", ns=node)
    for p in PODS:
        srv = subprocess.Popen(["nsenter", f"--net={NETNS / n.ns(p)}", "--", sys.executable, "-c", SERVER, p],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        n.servers.append(srv)
        assert srv.stdout.readline().strip() == "ready", f"server in {p} did not start"


def _ours(sfx: str) -> list[str]:
    return sorted(x for x in os.listdir(NETNS) if f"klk-{sfx}-" in x) if NETNS.exists() else []


OTHER_RULES = ("-A PREROUTING -p tcp -m tcp --dport 9999 -j OTHER-CHAIN",
               "-A OTHER-CHAIN -p tcp -m tcp --dport 9999 -j RETURN",
               "-A FORWARD -p tcp -m tcp --dport 9998 -j ACCEPT")


@pytest.fixture(scope="module")
def net():
    n = Net(secrets.token_hex(3), [])
    try:
        _build(n)
        yield n
    finally:
        for s in n.servers:
            s.kill()
            s.wait()
        for ns in _ours(n.sfx):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, check=False)
        left = _ours(n.sfx)
    assert not left, f"left behind: {left}"


@contextlib.asynccontextmanager
async def proxier(cp, n: Net, cidr: str = CIDR):
    client = cp.client()
    p = Proxier(client, ProxyConfig("node1", cluster_cidr=cidr, min_sync_period=0.1, sync_period=30),
                CommandRunner(("nsenter", f"--net={NETNS / n.ns('node')}", "--")))
    task = asyncio.create_task(p.run_forever())
    try:
        await wait_for(lambda: p.syncs >= 1 or task.done(), what="the first sync")
        assert not task.done(), task.exception()
        yield p
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()


def _service(name: str, port: int, *, proto="TCP", type_="ClusterIP", affinity="", port_name="") -> v1.Service:
    """Cluster IP 10.96.77.<port-70> and NodePort 300<port> asked for explicitly, as a user may."""
    s = v1.Service()
    s.metadata.name, s.metadata.namespace = name, "default"
    s.spec.type = type_
    s.spec.clusterIP = f"10.96.77.{port - 70}"
    s.spec.clusterIPs.append(s.spec.clusterIP)
    if affinity:
        s.spec.sessionAffinity = affinity
    sp = s.spec.ports.add(name=port_name, port=port, protocol=proto, nodePort=30000 + port if type_ == "NodePort" else 0)
    sp.targetPort.CopyFrom(struct_pb2.Value(number_value=8080 if proto == "TCP" else 5353))
    return s


def _slice(svc: str, pods: list[str], *, proto="TCP", port_name="", name="") -> v1.EndpointSlice:
    s = v1.EndpointSlice(addressType="IPv4")
    s.metadata.name, s.metadata.namespace = name or f"{svc}-abcde", "default"
    s.metadata.labels["kubernetes.io/service-name"] = svc
    s.ports.add(name=port_name, port=8080 if proto == "TCP" else 5353, protocol=proto)
    for p in pods:
        e = s.endpoints.add(addresses=[PODS[p]], nodeName="node1")
        e.conditions.ready = True
    return s


async def _create(client, svc: v1.Service, sl: v1.EndpointSlice | None) -> v1.Service:
    created = await client.resource("services", "default").create(svc)
    if sl is not None:
        await client.resource("endpointslices", "default").create(sl)
    return created


async def _delete(client, name: str, slice_name: str = "") -> None:
    for res, n in (("endpointslices", slice_name or f"{name}-abcde"), ("services", name)):
        try:
            await client.resource(res, "default").delete(n)
        except NotFound:
            pass


def _sp(svc: v1.Service) -> ServicePort:
    p = svc.spec.ports[0]
    return ServicePort("default", svc.metadata.name, p.name, p.protocol or "TCP", svc.spec.clusterIP, p.port)


async def _rules_show(n: Net, *needles: str, absent: tuple[str, ...] = ()) -> str:
    def check():
        s = n.save()
        return s if all(x in s for x in needles) and not any(x in s for x in absent) else None
    return await wait_for(check, timeout=20, what=f"rules with {needles} without {absent}")


async def test_cluster_ip_reaches_both_endpoints_with_the_clients_address(control_plane, net):
    async with proxier(control_plane, net):
        c = control_plane.client()
        try:
            svc = await _create(c, _service("web", 80), _slice("web", ["pa", "pb"]))
            ip = svc.spec.clusterIP
            assert ip == "10.96.77.10"
            await _rules_show(net, rl.svc_chain(_sp(svc)))
            answers = net.request("pc", ip, 80, n=40)
            assert {a for a, _ in answers} == {"pa", "pb"}, answers  # (2**-39 to miss one by chance)
            assert {src for _, src in answers} == {PODS["pc"]}  # pod to service: no masquerade
            # from the node itself, and from off the cluster: masqueraded, so replies return
            assert {a for a, _ in net.request("node", ip, 80, n=6)} <= {"pa", "pb"}
            outside = net.request("out", ip, 80, n=6)
            assert {a for a, _ in outside} <= {"pa", "pb"} and {s for _, s in outside} == {GW}, outside
        finally:
            await _delete(c, "web")
            await c.close()


async def test_udp_service(control_plane, net):
    async with proxier(control_plane, net):
        c = control_plane.client()
        try:
            svc = await _create(c, _service("dns", 87, proto="UDP"), _slice("dns", ["pb"], proto="UDP"))
            await _rules_show(net, rl.svc_chain(_sp(svc)))
            assert net.request("pc", svc.spec.clusterIP, 87, n=3, proto="udp") == [("pb", PODS["pc"])] * 3
        finally:
            await _delete(c, "dns")
            await c.close()


async def test_node_port_answers_on_the_nodes_address_masqueraded(control_plane, net):
    async with proxier(control_plane, net):
        c = control_plane.client()
        try:
            svc = await _create(c, _service("np", 81, type_="NodePort"), _slice("np", ["pa"]))
            node_port = svc.spec.ports[0].nodePort
            assert node_port == 30081
            await _rules_show(net, f"--dport {node_port} -j {rl.ext_chain(_sp(svc))}")
            assert net.request("out", NODE_IP, node_port, n=3) == [("pa", GW)] * 3
        finally:
            await _delete(c, "np")
            await c.close()


async def test_hairpin_a_pod_reaches_itself_through_its_service(control_plane, net):
    async with proxier(control_plane, net):
        c = control_plane.client()
        try:
            svc = await _create(c, _service("self", 82), _slice("self", ["pa"]))
            await _rules_show(net, rl.svc_chain(_sp(svc)))
            # the pod sees the node's bridge address as the source, so its reply comes back via the node
            assert net.request("pa", svc.spec.clusterIP, 82, n=3) == [("pa", GW)] * 3
        finally:
            await _delete(c, "self")
            await c.close()


async def test_client_ip_affinity_keeps_one_endpoint(control_plane, net):
    async with proxier(control_plane, net):
        c = control_plane.client()
        try:
            svc = await _create(c, _service("sticky", 83, affinity="ClientIP"), _slice("sticky", ["pa", "pb"]))
            await _rules_show(net, rl.svc_chain(_sp(svc)))
            answers = net.request("pc", svc.spec.clusterIP, 83, n=20)
            assert len({a for a, _ in answers}) == 1 and answers[0][0] in ("pa", "pb"), answers
        finally:
            await _delete(c, "sticky")
            await c.close()


async def test_removed_endpoint_and_service_remove_their_rules(control_plane, net):
    async with proxier(control_plane, net):
        c = control_plane.client()
        try:
            svc = await _create(c, _service("shrink", 84), _slice("shrink", ["pa", "pb"]))
            sp = _sp(svc)
            ep_a, ep_b = (rl.sep_chain(sp, e) for e in _endpoints(sp, ["pa", "pb"]))
            await _rules_show(net, ep_a, ep_b)
            sl = await c.resource("endpointslices", "default").get("shrink-abcde")
            del sl.endpoints[1]  # pb leaves
            await c.resource("endpointslices", "default").update(sl)
            await _rules_show(net, ep_a, absent=(ep_b,))
            assert {a for a, _ in net.request("pc", svc.spec.clusterIP, 84, n=8)} == {"pa"}
            await _delete(c, "shrink")
            await _rules_show(net, absent=(rl.svc_chain(sp), ep_a, sp.cluster_ip))
            assert net.request("pc", sp.cluster_ip, 84)[0][0] == "error"
        finally:
            await _delete(c, "shrink")
            await c.close()


def _endpoints(sp: ServicePort, pods: list[str]):
    from worker.proxy.model import Endpoint
    return [Endpoint(PODS[p], 8080) for p in pods]


def _our_rules(save: str) -> list[str]:
    return [ln for ln in save.splitlines() if ln.startswith("-A ")]


async def test_service_without_endpoints_is_rejected(control_plane, net):
    async with proxier(control_plane, net):
        c = control_plane.client()
        try:
            svc = await _create(c, _service("lonely", 85), None)
            await _rules_show(net, '"default/lonely has no endpoints"')
            assert net.request("pc", svc.spec.clusterIP, 85) == [("error", "ConnectionRefusedError")]
        finally:
            await _delete(c, "lonely")
            await c.close()


async def test_restart_leaves_no_duplicates_and_others_rules_untouched(control_plane, net):
    c = control_plane.client()
    try:
        svc = await _create(c, _service("again", 86, type_="NodePort"), _slice("again", ["pa", "pb"]))
        async with proxier(control_plane, net):
            first = await _rules_show(net, rl.svc_chain(_sp(svc)))
        # a stale chain from an earlier life (a service deleted while no proxy ran)
        sh("iptables", "-t", "nat", "-N", "KUBE-SVC-STALESTALESTALE", ns=net.ns("node"))
        async with proxier(control_plane, net) as p:
            p.runner.run()
            await wait_for(lambda: p.syncs >= 2, what="a second sync")
            again = await _rules_show(net, rl.svc_chain(_sp(svc)), absent=("KUBE-SVC-STALESTALESTALE",))
        assert sorted(_our_rules(again)) == sorted(_our_rules(first))
        rules = _our_rules(again)
        assert len(rules) == len(set(rules)), [r for r in rules if rules.count(r) > 1]
        for hook in ("-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
                     "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
                     "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING"):
            assert rules.count(hook) == 1, hook
        for other in OTHER_RULES:
            assert rules.count(other) == 1, f"{other} changed: {rules}"
        # every rule in a chain that is not ours is a hook into ours, or somebody else's, as it was
        for r in rules:
            chain = r.split()[1]
            if not chain.startswith("KUBE-"):
                assert r in OTHER_RULES or re.search(r"-j KUBE-[A-Z-]+$", r), r
    finally:
        await _delete(c, "again")
        await c.close()


# One UDP socket bound to a fixed port in the sending pod, so every datagram is the same flow (one
# conntrack entry); one line per datagram: the answer, or "error ...".
FIXED_CLIENT = r"""
import socket, sys
ip, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 40123)); s.settimeout(2)
for _ in range(n):
    try:
        s.sendto(b"?", (ip, port)); print(s.recv(100).decode(), flush=True)
    except OSError as e:
        print("error", type(e).__name__, flush=True)
"""


def _flows(n: Net, cluster_ip: str) -> str:
    return sh("conntrack", "-L", "-p", "udp", "--orig-dst", cluster_ip, ns=n.ns("node"))


@pytest.mark.skipif(not shutil.which("conntrack"), reason="needs conntrack (conntrack-tools)")
async def test_udp_flow_to_a_removed_endpoint_is_flushed(control_plane, net):
    async with proxier(control_plane, net) as p:
        c = control_plane.client()
        try:
            svc = await _create(c, _service("flow", 88, proto="UDP"), _slice("flow", ["pa"], proto="UDP"))
            sp = _sp(svc)
            await _rules_show(net, rl.svc_chain(sp))
            ip = svc.spec.clusterIP
            # the sync that brought pa also clears the service's flows (its first endpoint) right
            # after its restore: let that finish first, or it may take the flow sent below
            await wait_for(lambda: p.state is not None and p.state.endpoints.get(sp.key), what="pa synced")
            before = p.syncs
            p.runner.run()
            await wait_for(lambda: p.syncs > before, what="pa's sync done, conntrack cleanup included")

            def send():
                out = sh(sys.executable, "-c", FIXED_CLIENT, ip, "88", "2", ns=net.ns("pc"))
                return [tuple(line.split()[:2]) for line in out.splitlines()]
            assert send() == [("pa", PODS["pc"])] * 2
            to_pa = f"src={PODS['pa']} dst={PODS['pc']} sport=5353 dport=40123"
            assert to_pa in _flows(net, ip)
            # pa leaves, pb comes: the flow's entry still DNATs to pa until kube-proxy deletes it
            sl = await c.resource("endpointslices", "default").get("flow-abcde")
            sl.endpoints[0].addresses[0] = PODS["pb"]
            await c.resource("endpointslices", "default").update(sl)
            await wait_for(lambda: to_pa not in _flows(net, ip), timeout=20, what="the flow to pa deleted")
            assert send() == [("pb", PODS["pc"])] * 2  # the same source port now reaches pb
        finally:
            await _delete(c, "flow")
            await c.close()


async def test_partial_sync_rewrites_the_changed_service_and_full_resync_repairs_a_hook(control_plane, net):
    async with proxier(control_plane, net) as p:
        c = control_plane.client()
        try:
            one = await _create(c, _service("one", 89), _slice("one", ["pa"]))
            two = await _create(c, _service("two", 90), _slice("two", ["pa", "pb"]))
            await _rules_show(net, rl.svc_chain(_sp(one)), rl.svc_chain(_sp(two)))
            sl = await c.resource("endpointslices", "default").get("two-abcde")
            del sl.endpoints[0]  # pa leaves "two"
            await c.resource("endpointslices", "default").update(sl)
            gone = rl.sep_chain(_sp(two), _endpoints(_sp(two), ["pa"])[0])
            await wait_for(lambda: p.last and gone in p.last.deleted_chains, what="the sync deleting pa's chain")
            assert not p.last.full and p.last.written == 1, p.last  # only "two"'s chains were written
            await _rules_show(net, rl.sep_chain(_sp(one), _endpoints(_sp(one), ["pa"])[0]), absent=(gone,))
            assert {a for a, _ in net.request("pc", two.spec.clusterIP, 90, n=6)} == {"pb"}
            assert {a for a, _ in net.request("pc", one.spec.clusterIP, 89, n=2)} == {"pa"}
            # somebody deletes our jump from PREROUTING: the next full resync (no change asked) puts it back
            hook = '-m comment --comment "kubernetes service portals" -j KUBE-SERVICES'
            sh("iptables", "-t", "nat", "-D", "PREROUTING", "-m", "comment", "--comment", "kubernetes service portals",
               "-j", "KUBE-SERVICES", ns=net.ns("node"))
            assert f"-A PREROUTING {hook}" not in net.save()
            before = p.syncs
            p.runner.run()
            await wait_for(lambda: p.syncs > before, what="a full resync")
            assert p.last.full
            assert net.save().count(f"-A PREROUTING {hook}") == 1
        finally:
            await _delete(c, "one")
            await _delete(c, "two")
            await c.close()
