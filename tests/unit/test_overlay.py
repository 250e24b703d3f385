"""The overlay agent's pure logic (worker/overlay/peers.py, pick_underlay) and one reconcile
pass of the agent against a fake netlink layer and a fake Node client."""
from __future__ import annotations

import ipaddress
import json

import pytest

from kubelab.api.v1 import objects_pb2 as v1
from worker.overlay import peers as pe
from worker.overlay.agent import KEY, OverlayAgent, OverlayConfig
from worker.overlay.netlink import Device, Interface, UnderlayError, pick_underlay

CLUSTER = ipaddress.IPv4Network("10.244.0.0/16")
N, A = ipaddress.IPv4Network, ipaddress.IPv4Address


def node(name: str, cidr: str = "", mac: str = "", ip: str = "", *, vni=1, backend="vxlan") -> v1.Node:
    n = v1.Node()
    n.metadata.name = name
    n.spec.podCIDR = cidr
    if mac or ip:
        n.metadata.annotations.update({pe.BACKEND_TYPE: backend, pe.PUBLIC_IP: ip,
                                       pe.BACKEND_DATA: json.dumps({"VNI": vni, "VtepMAC": mac})})
    return n


def peers_of(nodes, me="a"):
    return pe.desired_peers(nodes, me, vni=1, cluster_cidr=CLUSTER)


def test_own_annotations_are_flannels():
    ann = pe.own_annotations("02:aa:bb:cc:dd:ee", "192.168.56.11", 1)
    assert ann == {"flannel.alpha.coreos.com/backend-type": "vxlan",
                   "flannel.alpha.coreos.com/backend-data": '{"VNI":1,"VtepMAC":"02:aa:bb:cc:dd:ee"}',
                   "flannel.alpha.coreos.com/public-ip": "192.168.56.11",
                   "flannel.alpha.coreos.com/kube-subnet-manager": "true"}


def test_vtep_mac_is_stable_unicast_and_local():
    mac = pe.vtep_mac("worker1")
    assert mac == pe.vtep_mac("worker1") != pe.vtep_mac("worker2")
    first = int(mac.split(":")[0], 16)
    assert first & 1 == 0 and first & 2 == 2  # unicast, locally administered


def test_peer_from_node_reads_what_flannel_writes():
    p = pe.peer_from_node(node("b", "10.244.2.0/24", "02:AA:bb:cc:dd:ee", "192.168.56.12"), vni=1, cluster_cidr=CLUSTER)
    assert p == pe.Peer("b", N("10.244.2.0/24"), "02:aa:bb:cc:dd:ee", A("192.168.56.12"))
    assert p.vtep_ip == A("10.244.2.0")
    # older flannel writes backend-data without a VNI
    n = node("b", "10.244.2.0/24", ip="192.168.56.12")
    n.metadata.annotations[pe.BACKEND_DATA] = '{"VtepMAC":"02:aa:bb:cc:dd:ee"}'
    assert pe.peer_from_node(n, vni=1, cluster_cidr=CLUSTER).vtep_mac == "02:aa:bb:cc:dd:ee"


@pytest.mark.parametrize("n, field", [
    (node("b", "10.244.2.0/24", "02:aa:bb:cc:dd:ee", "192.168.56.12", backend="host-gw"), "backend-type"),
    (node("b", "10.244.2.0/24", "02:aa:bb:cc:dd:ee", "192.168.56.12", vni=2), "VNI 2"),
    (node("b", "10.244.2.0/24", "02:aa:bb:cc:dd", "192.168.56.12"), "VtepMAC"),
    (node("b", "10.244.2.0/24", "03:aa:bb:cc:dd:ee", "192.168.56.12"), "multicast"),
    (node("b", "10.244.2.0/24", "02:aa:bb:cc:dd:ee", "192.168.56.300"), "public-ip"),
    (node("b", "", "02:aa:bb:cc:dd:ee", "192.168.56.12"), "spec.podCIDR: Required value"),
    (node("b", "10.245.2.0/24", "02:aa:bb:cc:dd:ee", "192.168.56.12"), "not inside the cluster CIDR"),
])
def test_peer_from_node_names_the_bad_field(n, field):
    with pytest.raises(pe.InvalidPeer) as e:
        pe.peer_from_node(n, vni=1, cluster_cidr=CLUSTER)
    assert field in str(e.value) and 'nodes "b"' in str(e.value)


def test_bad_backend_data_json_is_named():
    n = node("b", "10.244.2.0/24", ip="192.168.56.12")
    n.metadata.annotations[pe.BACKEND_DATA] = "[1, 2]"
    with pytest.raises(pe.InvalidPeer, match=r"backend-data\]: Invalid value"):
        pe.peer_from_node(n, vni=1, cluster_cidr=CLUSTER)


def test_desired_peers_skip_self_unannotated_deleting_and_bad_nodes():
    deleting = node("d", "10.244.4.0/24", "02:00:00:00:00:04", "192.168.56.14")
    deleting.metadata.deletionTimestamp = "2026-01-01T00:00:00Z"
    nodes = [node("a", "10.244.1.0/24", "02:00:00:00:00:01", "192.168.56.11"),
             node("b", "10.244.2.0/24", "02:00:00:00:00:02", "192.168.56.12"),
             node("c", "10.244.3.0/24"),  # its agent has not run yet
             deleting,
             node("e", "10.244.5.0/24", "nonsense", "192.168.56.15")]
    peers, problems = peers_of(nodes)
    assert [p.node for p in peers] == ["b"]
    assert list(problems) == ["e"] and "VtepMAC" in problems["e"]


def test_overlapping_pod_cidrs_are_left_out_with_a_reason():
    nodes = [node("a", "10.244.1.0/24"),
             node("b", "10.244.1.0/24", "02:00:00:00:00:02", "192.168.56.12"),
             node("c", "10.244.3.0/24", "02:00:00:00:00:03", "192.168.56.13"),
             node("d", "10.244.3.0/25", "02:00:00:00:00:04", "192.168.56.14"),
             node("f", "10.244.6.0/24", "02:00:00:00:00:06", "192.168.56.16")]
    peers, problems = peers_of(nodes)
    assert [p.node for p in peers] == ["f"]
    assert "overlaps the podCIDR of node a" in problems["b"]
    assert "node d" in problems["c"] and "node c" in problems["d"]


def test_entries_for_peers():
    p = pe.Peer("b", N("10.244.2.0/24"), "02:00:00:00:00:02", A("192.168.56.12"))
    e = pe.entries_for([p])
    assert e.routes == [pe.Route(N("10.244.2.0/24"), A("10.244.2.0"), onlink=True, metric=0)]
    assert e.neighs == [pe.Neigh(A("10.244.2.0"), "02:00:00:00:00:02", permanent=True)]
    assert e.fdbs == [pe.Fdb("02:00:00:00:00:02", A("192.168.56.12"))]


def test_plan_removes_stale_and_duplicate_entries_and_adds_missing_ones():
    b = pe.Peer("b", N("10.244.2.0/24"), "02:00:00:00:00:02", A("192.168.56.12"))
    c = pe.Peer("c", N("10.244.3.0/24"), "02:00:00:00:00:03", A("192.168.56.13"))
    want = pe.entries_for([b, c])
    stale = pe.Peer("z", N("10.244.9.0/24"), "02:00:00:00:00:09", A("192.168.56.19"))
    have = pe.entries_for([b, stale])
    have.routes.append(pe.Route(N("10.244.2.0/24"), A("10.244.2.0"), metric=100))  # a second route to b
    have.neighs[0] = pe.Neigh(b.vtep_ip, b.vtep_mac, permanent=False)  # learned, not permanent
    have.fdbs.append(pe.Fdb(b.vtep_mac, A("192.168.56.99")))  # b's MAC at an old address as well
    p = pe.plan(want, have)
    assert sorted(p.delete.routes) == sorted([pe.Route(N("10.244.9.0/24"), A("10.244.9.0")),
                                              pe.Route(N("10.244.2.0/24"), A("10.244.2.0"), metric=100)])
    assert p.add.routes == [pe.Route(N("10.244.3.0/24"), A("10.244.3.0"))]
    assert sorted(p.delete.neighs) == sorted([pe.Neigh(b.vtep_ip, b.vtep_mac, False), pe.entries_for([stale]).neighs[0]])
    assert sorted(p.add.neighs) == sorted([pe.Neigh(b.vtep_ip, b.vtep_mac), pe.Neigh(c.vtep_ip, c.vtep_mac)])
    assert sorted(p.delete.fdbs) == sorted([pe.Fdb(stale.vtep_mac, stale.public_ip), pe.Fdb(b.vtep_mac, A("192.168.56.99"))])
    assert p.add.fdbs == [pe.Fdb(c.vtep_mac, c.public_ip)]
    assert pe.plan(want, pe.entries_for([b, c])).empty()


IFACES = [Interface("lo", 1, 65536, (A("127.0.0.1"),)),
          Interface("eth0", 2, 1500, (A("10.0.2.15"),)),
          Interface("eth1", 3, 1500, (A("192.168.56.11"), A("192.168.56.100"))),
          Interface("eth2", 4, 9000, ())]


def test_pick_underlay():
    assert pick_underlay(IFACES, iface="eth1").ip == A("192.168.56.11")
    assert pick_underlay(IFACES, iface="eth1", node_ip="192.168.56.100").ip == A("192.168.56.100")
    u = pick_underlay(IFACES, node_ip="192.168.56.11")
    assert (u.name, u.index, u.mtu) == ("eth1", 3, 1500)
    assert pick_underlay(IFACES, default_iface="eth0").ip == A("10.0.2.15")


@pytest.mark.parametrize("kw, msg", [
    ({"iface": "eth9"}, "--iface eth9: no such interface"),
    ({"iface": "eth0", "node_ip": "192.168.56.11"}, "--node-ip 192.168.56.11 is not an address of --iface eth0"),
    ({"node_ip": "192.168.56.50"}, "--node-ip 192.168.56.50: no interface has this address"),
    ({"iface": "eth2"}, "--iface eth2: the interface has no IPv4 address"),
    ({}, "pass --iface or --node-ip"),
])
def test_pick_underlay_errors_name_the_flag(kw, msg):
    with pytest.raises(UnderlayError) as e:
        pick_underlay(IFACES, **kw)
    assert msg in str(e.value)


class FakeNetlink:
    def __init__(self, have: pe.Entries):
        self.have, self.specs, self.applied = have, [], []

    async def interfaces(self):
        return IFACES, "eth0"

    async def ensure_vxlan(self, spec):
        self.specs.append(spec)
        return Device(7, spec.mac)

    def ensure_forwarding(self):
        pass

    async def entries(self, index):
        assert index == 7
        return self.have

    async def apply(self, index, plan):
        self.applied.append(plan)


class FakeNodes:
    def __init__(self):
        self.updated = []

    async def update(self, obj):
        self.updated.append(obj)
        return obj


class FakeClient:
    def __init__(self):
        self.rc = FakeNodes()

    def nodes(self):
        return self.rc


async def test_one_reconcile_pass(tmp_path):
    client = FakeClient()
    stale = pe.Peer("gone", N("10.244.9.0/24"), "02:00:00:00:00:09", A("192.168.56.19"))
    nl = FakeNetlink(pe.entries_for([stale]))
    agent = OverlayAgent(client, OverlayConfig(node_name="a", iface="eth1", subnet_file=tmp_path / "subnet.env"), nl)
    me = node("a", "10.244.1.0/24")
    me.status.addresses.add(type="InternalIP", address="10.0.2.15")  # ignored: --iface wins
    b = node("b", "10.244.2.0/24", "02:00:00:00:00:02", "192.168.56.12")
    agent.nodes.store = {"a": me, "b": b}
    assert await agent.reconcile(KEY) == 30.0
    spec = nl.specs[0]
    assert (spec.name, spec.vni, spec.port, spec.local, spec.link, spec.mtu, spec.address) == \
        ("flannel.1", 1, 8472, A("192.168.56.11"), 3, 1450, A("10.244.1.0"))
    [published] = client.rc.updated
    assert published.metadata.annotations[pe.PUBLIC_IP] == "192.168.56.11"
    assert json.loads(published.metadata.annotations[pe.BACKEND_DATA])["VtepMAC"] == spec.mac
    [plan] = nl.applied
    assert plan.delete.routes == [pe.Route(N("10.244.9.0/24"), A("10.244.9.0"))]
    assert plan.add.fdbs == [pe.Fdb("02:00:00:00:00:02", A("192.168.56.12"))]
    assert "FLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\n" in (tmp_path / "subnet.env").read_text()


async def test_reconcile_waits_for_the_node_and_its_pod_cidr():
    nl = FakeNetlink(pe.Entries())
    agent = OverlayAgent(FakeClient(), OverlayConfig(node_name="a", iface="eth1", subnet_file=None), nl)
    assert await agent.reconcile(KEY) == 30.0  # no Node yet
    agent.nodes.store = {"a": node("a")}
    assert await agent.reconcile(KEY) == 30.0  # no podCIDR yet
    assert nl.specs == [] and nl.applied == []
    assert "spec.podCIDR" in agent._waiting


async def test_underlay_from_the_nodes_internal_ip_then_the_default_route():
    agent = OverlayAgent(FakeClient(), OverlayConfig(node_name="a", subnet_file=None), FakeNetlink(pe.Entries()))
    me = node("a", "10.244.1.0/24")
    assert agent._underlay(IFACES, "eth0", me).name == "eth0"  # nothing else to go by
    me.status.addresses.add(type="InternalIP", address="192.168.56.100")
    u = agent._underlay(IFACES, "eth0", me)
    assert (u.name, u.ip) == ("eth1", A("192.168.56.100"))  # the kubelet's --node-ip
    me.status.addresses[0].address = "172.16.0.9"  # on no interface here
    assert agent._underlay(IFACES, "eth0", me).name == "eth0"


def flags(**kw):
    import argparse
    base = dict(node_name="a", node_ip="", cluster_cidr="10.244.0.0/16", vni=1, port=8472, device="flannel.1",
                resync_period=30.0)
    return argparse.Namespace(**{**base, **kw})


@pytest.mark.parametrize("kw, msg", [
    ({"node_name": ""}, "invalid --node-name"),
    ({"node_ip": "10.0.0.300"}, 'invalid --node-ip "10.0.0.300"'),
    ({"cluster_cidr": "10.244.0.1/16"}, "invalid --cluster-cidr"),
    ({"vni": 0}, "invalid --vni 0"),
    ({"port": 70000}, "invalid --port 70000"),
    ({"device": "a-much-too-long-name"}, "invalid --device"),
    ({"resync_period": 0}, "invalid --resync-period"),
])
def test_bad_flags_are_named(kw, msg):
    from worker.overlay.cmd import flag_error
    assert flag_error(flags()) is None
    assert msg in flag_error(flags(**kw))
