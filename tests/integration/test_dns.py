"""Cluster DNS end to end: a real control plane, `kubelab dns` as its own process on loopback
with a node's credentials (what the kube-dns pod has), queried over UDP and TCP with dnspython;
and a real kubelet whose pods' /etc/resolv.conf follow their dnsPolicy.

No query leaves loopback: the server has no --upstream. The kubelet's bridge and pod CIDR
(10.178.0.0/16) are this module's own, and everything is removed at the end, pass or fail."""
from __future__ import annotations

import asyncio
import re
import secrets
import socket
import subprocess
import time
from dataclasses import dataclass

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
import yaml

from kubelab.api.v1 import objects_pb2 as v1
from kubelab.cli.manifest import parse_doc
from worker.kubelet.reset import reset_node

from .conftest import (
    KUBELAB,
    admin_config,
    launch_control_plane,
    stop_control_plane,
    stop_group,
    wait_for,
)
from .test_kubelet import node_leftovers

CLUSTER_CIDR = "10.178.0.0/16"
CLUSTER_DNS = "10.96.0.10"
NODE = "dns-test-node"


@dataclass
class Cluster:
    cp: object
    port: int  # the DNS server's, on 127.0.0.1
    proc: subprocess.Popen


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    d = tmp_path_factory.mktemp("dns")
    cp = launch_control_plane(d, "--cluster-cidr", CLUSTER_CIDR)
    try:
        # the credentials the kube-dns static pod runs with: its node's, not the admin's
        conf = admin_config(d / "pki", f"127.0.0.1:{cp.port}", d / "node.conf", cn=f"system:node:{NODE}",
                            orgs=("system:nodes",))
        proc = cp.start("dns", "--config", str(conf), "--listen", "127.0.0.1:0", log="dns.log")
        end = time.monotonic() + 60
        while not (m := re.search(r"serving cluster\.local on 127\.0\.0\.1:(\d+)", (d / "dns.log").read_text())):
            assert proc.poll() is None and time.monotonic() < end, f"dns server not up: {(d / 'dns.log').read_text()}"
            time.sleep(0.1)
        yield Cluster(cp, int(m.group(1)), proc)
        assert proc.poll() is None, f"the dns server died: {(d / 'dns.log').read_text()[-2000:]}"
    finally:
        stop_control_plane(cp)


async def ask(cluster: Cluster, name: str, rdtype: str = "A", *, tcp: bool = False) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype)
    if tcp:
        return await dns.asyncquery.tcp(q, "127.0.0.1", port=cluster.port, timeout=3)
    return await dns.asyncquery.udp(q, "127.0.0.1", port=cluster.port, timeout=3)


def addresses(resp: dns.message.Message, rdtype: str = "A") -> list[str]:
    t = dns.rdatatype.from_text(rdtype)
    return sorted(r.to_text() for rrset in resp.answer if rrset.rdtype == t for r in rrset)


async def answers(cluster, name, rdtype, want, what):
    async def ok():
        r = await ask(cluster, name, rdtype)
        return addresses(r, rdtype) == want and r
    return await wait_for(ok, 20, what=what)


def service(name, *, cluster_ip="", ports=(("http", "TCP", 80),)) -> v1.Service:
    s = v1.Service()
    s.metadata.name, s.metadata.namespace = name, "default"
    s.spec.clusterIP = cluster_ip
    for pname, proto, port in ports:
        p = s.spec.ports.add(name=pname, protocol=proto, port=port)
        p.targetPort.number_value = port
    return s


def endpoint_slice(svc, name, endpoints, ports=(("pg", "TCP", 5432),)) -> v1.EndpointSlice:
    sl = v1.EndpointSlice(addressType="IPv4")
    sl.metadata.name, sl.metadata.namespace = name, "default"
    sl.metadata.labels["kubernetes.io/service-name"] = svc
    for addr, ready, hostname in endpoints:
        ep = sl.endpoints.add(addresses=[addr])
        ep.conditions.ready = ready
        if hostname:
            ep.hostname = hostname
    for pname, proto, port in ports:
        sl.ports.add(name=pname, protocol=proto, port=port)
    return sl


async def test_service_a_record_follows_the_service(cluster):
    async with cluster.cp.client() as c:
        svc = await c.resource("services", "default").create(service("web"))
        ip = svc.spec.clusterIP
        try:
            r = await answers(cluster, "web.default.svc.cluster.local.", "A", [ip], "web's A record")
            assert r.flags & dns.flags.AA and r.answer[0].ttl == 5
            assert addresses(await ask(cluster, "web.default.svc.cluster.local.", "A", tcp=True)) == [ip]
            # known name, other type: NOERROR, no answer, the SOA in authority
            r = await ask(cluster, "web.default.svc.cluster.local.", "AAAA")
            assert (r.rcode(), r.answer, [a.rdtype for a in r.authority]) == (dns.rcode.NOERROR, [],
                                                                              [dns.rdatatype.SOA])
            r = await ask(cluster, "_http._tcp.web.default.svc.cluster.local.", "SRV")
            assert [x.to_text() for x in r.answer[0]] == ["0 100 80 web.default.svc.cluster.local."]
            assert [x.to_text() for x in r.additional[0]] == [ip]
        finally:
            await c.resource("services", "default").delete("web")

        async def nxdomain():
            r = await ask(cluster, "web.default.svc.cluster.local.", "A")
            return r.rcode() == dns.rcode.NXDOMAIN and r
        r = await wait_for(nxdomain, 20, what="web's name gone with it")
        assert [a.rdtype for a in r.authority] == [dns.rdatatype.SOA]


async def test_headless_service_answers_its_ready_endpoints(cluster):
    async with cluster.cp.client() as c:
        services, slices = c.resource("services", "default"), c.resource("endpointslices", "default")
        await services.create(service("db", cluster_ip="None", ports=(("pg", "TCP", 5432),)))
        try:
            sl = await slices.create(endpoint_slice("db", "db-1", [("10.178.9.1", True, "db-0"),
                                                                  ("10.178.9.2", False, "db-1")]))
            await answers(cluster, "db.default.svc.cluster.local.", "A", ["10.178.9.1"], "db's ready endpoint")
            assert addresses(await ask(cluster, "db-0.db.default.svc.cluster.local.")) == ["10.178.9.1"]
            r = await ask(cluster, "_pg._tcp.db.default.svc.cluster.local.", "SRV")
            assert [x.to_text() for x in r.answer[0]] == ["0 100 5432 db-0.db.default.svc.cluster.local."]
            assert [x.to_text() for x in r.additional[0]] == ["10.178.9.1"]
            # the second endpoint becomes ready: the next answers have it
            sl.endpoints[1].conditions.ready = True
            await slices.update(sl)
            await answers(cluster, "db.default.svc.cluster.local.", "A", ["10.178.9.1", "10.178.9.2"],
                          "db's endpoint that became ready")
            assert addresses(await ask(cluster, "db-1.db.default.svc.cluster.local.")) == ["10.178.9.2"]
        finally:
            await slices.delete("db-1")
            await services.delete("db")


async def test_pod_records_unknown_names_and_outside_names(cluster):
    assert addresses(await ask(cluster, "10-178-3-4.default.pod.cluster.local.")) == ["10.178.3.4"]
    r = await ask(cluster, "nosuch.default.svc.cluster.local.")
    assert r.rcode() == dns.rcode.NXDOMAIN and r.flags & dns.flags.AA
    assert r.authority[0].to_text().split()[4:6] == ["ns.dns.cluster.local.", "hostmaster.cluster.local."]
    # not the cluster's and no --upstream: refused, nothing forwarded
    r = await ask(cluster, "example.com.")
    assert r.rcode() == dns.rcode.REFUSED and not r.flags & dns.flags.RA


async def test_large_answer_truncated_over_udp_whole_over_tcp(cluster):
    many = [(f"10.178.10.{i}", True, "") for i in range(1, 61)]
    async with cluster.cp.client() as c:
        services, slices = c.resource("services", "default"), c.resource("endpointslices", "default")
        await services.create(service("big", cluster_ip="None"))
        try:
            await slices.create(endpoint_slice("big", "big-1", many))
            await wait_for(lambda: _tcp_count(cluster, "big.default.svc.cluster.local."), 20,
                           what="big's 60 endpoints over TCP")
            r = await ask(cluster, "big.default.svc.cluster.local.")
            assert r.flags & dns.flags.TC and r.answer == []  # 60 A records do not fit 512 bytes
            assert len(addresses(await ask(cluster, "big.default.svc.cluster.local.", tcp=True))) == 60
        finally:
            await slices.delete("big-1")
            await services.delete("big")


async def _tcp_count(cluster, name) -> bool:
    return len(addresses(await ask(cluster, name, tcp=True))) == 60


async def test_garbage_does_not_stop_the_server(cluster):
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        s.connect(("127.0.0.1", cluster.port))
        await loop.sock_sendall(s, b"\x12\x34" + b"\xff" * 20)  # a header, then nonsense
        reply = dns.message.from_wire(await asyncio.wait_for(loop.sock_recv(s, 512), 3))
        assert (reply.id, reply.rcode()) == (0x1234, dns.rcode.FORMERR)
        await loop.sock_sendall(s, b"\x01")  # not even a header: dropped
    assert addresses(await ask(cluster, "10-1-2-3.x.pod.cluster.local.")) == ["10.1.2.3"]
    assert cluster.proc.poll() is None


# ---- the pods' /etc/resolv.conf, through a real kubelet

NODE_RESOLV = "search lab.internal\nnameserver 192.0.2.53\noptions edns0\n"


@pytest.fixture(scope="module")
def kubelet(cluster, tmp_path_factory):
    d = tmp_path_factory.mktemp("dns-node")
    root, bridge = d / "node", "kldns" + secrets.token_hex(3)
    (d / "resolv.conf").write_text(NODE_RESOLV)
    node = type("N", (), {"root": root, "bridge": bridge})
    cp, proc = cluster.cp, None
    try:
        subprocess.run(KUBELAB + ["image", "build-busybox", "--root-dir", str(root / "img")], check=True,
                       env=cp.env, capture_output=True)
        proc = cp.start("kubelet", "--node-name", NODE, "--node-ip", "127.0.0.1", "--port", "0",
                        "--root-dir", str(root), "--image-dir", str(root / "img"),
                        "--manifest-dir", str(root / "manifests"), "--bridge", bridge, "--cluster-cidr", CLUSTER_CIDR,
                        "--cluster-dns", CLUSTER_DNS, "--cluster-domain", "cluster.local",
                        "--resolv-conf", str(d / "resolv.conf"), "-v", "2", log="kubelet.log")
        yield proc
    finally:
        try:
            cp.kubelab("delete", "pods", "--all", "-n", "dns", "--force", "--grace-period", "0", "--timeout", "60s",
                       check=False, timeout=90)
            if proc is not None:
                stop_group(proc)
                cp.children.remove(proc)
        finally:
            asyncio.run(reset_node(root, bridge=bridge, image_dir=root / "img"))
    left = node_leftovers(node)
    assert not left, f"the node left behind: {left}"


POD = """
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: dns}}
spec:
  nodeName: {node}
  hostNetwork: {host_network}
  {policy}
  containers:
  - {{name: c, image: busybox, imagePullPolicy: Never, command: [sh, -c, "exec sleep 100000"]}}
"""


async def test_resolv_conf_by_dns_policy(cluster, kubelet):
    cluster_first = ("search dns.svc.cluster.local svc.cluster.local cluster.local lab.internal\n"
                     f"nameserver {CLUSTER_DNS}\noptions ndots:5\n")
    none = ("dnsPolicy: None\n  dnsConfig: {nameservers: [192.0.2.1], searches: [a.example], "
            "options: [{name: ndots, value: '2'}]}")
    cases = {
        "cluster-first": ("", False, cluster_first),
        "default": ("dnsPolicy: Default", False, NODE_RESOLV),
        "none": (none, False, "search a.example\nnameserver 192.0.2.1\noptions ndots:2\n"),
        "host-net": ("", True, NODE_RESOLV),  # hostNetwork + ClusterFirst: Default
        "host-net-cluster": ("dnsPolicy: ClusterFirstWithHostNet", True, cluster_first),
    }
    cp = cluster.cp
    cp.kubelab("create", "ns", "dns", check=False)
    async with cp.client() as c:
        for name, (policy, host_network, _) in cases.items():
            doc = yaml.safe_load(POD.format(name=name, node=NODE, host_network=str(host_network).lower(),
                                            policy=policy))
            await c.pods("dns").create(parse_doc(doc, "test", 1))
        for name, (_, _, want) in cases.items():
            async def running(name=name):
                p = await c.pods("dns").get(name)
                return p.status.phase == "Running"
            await wait_for(running, 60, what=f"pod {name} Running")
            r = cp.kubelab("exec", name, "-n", "dns", "--", "cat", "/etc/resolv.conf")
            assert r.stdout == want, f"{name}: {r.stdout!r}"
