"""The Service API against a real control plane (`kubelab control-plane`: etcd, API server,
controllers as processes): ClusterIP and NodePort allocation under racing creates, refusals
that name the field, release on delete and on a failed create, updates that keep what they
hold, the `kubernetes` service and its endpoints, and who may read and write services.
A second module-scoped pair of in-process API servers on one etcd, with a /28 service range,
covers a full range and the endpoints of more than one API server."""
from __future__ import annotations

import asyncio
import ipaddress

import pytest
import pytest_asyncio

from kubelab.api.v1 import objects_pb2 as v1
from kubelab.client.client import Client
from kubelab.errors import ApiError, Forbidden, Invalid, NotFound
from kubelab.etcd.server import EtcdServer

from .conftest import admin_config, start_apiserver, wait_for

CIDR = ipaddress.ip_network("10.96.0.0/12")
# one event loop for the module: the clients and API servers of the module's fixtures live in it
pytestmark = pytest.mark.asyncio(loop_scope="module")


def service(name: str, *, ports=((80, 8080),), type: str = "", cluster_ip: str = "", node_port: int = 0,
            selector=None, ns: str = "default") -> v1.Service:
    s = v1.Service()
    s.metadata.name, s.metadata.namespace = name, ns
    s.spec.type = type
    s.spec.clusterIP = cluster_ip
    s.spec.selector.update(selector or {"app": name})
    for i, (port, target) in enumerate(ports):
        p = s.spec.ports.add(name=f"p{i}" if len(ports) > 1 else "", port=port, nodePort=node_port if i == 0 else 0)
        if isinstance(target, str):
            p.targetPort.string_value = target
        elif target:
            p.targetPort.number_value = target
    return s


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(control_plane):
    c = control_plane.client()
    try:
        yield c
    finally:
        await c.close()


@pytest_asyncio.fixture(loop_scope="module")
async def svcs(client):
    """client.resource("services") that deletes every service a test made, even on failure."""
    made: list[str] = []
    res = client.resource("services", "default")

    class Tracked:
        async def create(self, obj):
            made.append(obj.metadata.name)
            return await res.create(obj)

        def __getattr__(self, name):
            return getattr(res, name)
    try:
        yield Tracked()
    finally:
        for name in made:
            try:
                await res.delete(name)
            except ApiError:
                pass


def octets(ip: str) -> int:
    return int(ipaddress.ip_address(ip)) - int(CIDR.network_address)


async def test_the_kubernetes_service_points_at_the_api_server(client, control_plane):
    svc = await client.resource("services", "default").get("kubernetes")
    assert svc.spec.clusterIP == "10.96.0.1" and list(svc.spec.clusterIPs) == ["10.96.0.1"]
    [p] = svc.spec.ports
    assert (p.name, p.port, p.protocol, int(p.targetPort.number_value)) == ("https", 443, "TCP", control_plane.port)
    ep = await client.resource("endpoints", "default").get("kubernetes")
    [sub] = ep.subsets
    assert [a.ip for a in sub.addresses] == ["127.0.0.1"]
    assert [(q.name, q.port) for q in sub.ports] == [("https", control_plane.port)]
    slices = await client.resource("endpointslices", "default").list(
        label_selector="kubernetes.io/service-name=kubernetes")
    [es] = slices.items
    assert es.addressType == "IPv4" and [list(e.addresses) for e in es.endpoints] == [["127.0.0.1"]]
    assert es.endpoints[0].conditions.ready and es.ports[0].port == control_plane.port


async def test_defaults_and_an_address_from_the_range(svcs):
    s = await svcs.create(service("web", ports=((80, 0),)))
    assert s.spec.type == "ClusterIP" and s.spec.sessionAffinity == "None"
    assert s.spec.ports[0].protocol == "TCP" and s.spec.ports[0].targetPort.number_value == 80
    assert list(s.spec.clusterIPs) == [s.spec.clusterIP]
    # neither the first (kubernetes) nor the tenth (kube-dns) address is handed out unasked
    assert ipaddress.ip_address(s.spec.clusterIP) in CIDR and octets(s.spec.clusterIP) not in (0, 1, 10)
    got = await svcs.get("web")
    assert got.spec.clusterIP == s.spec.clusterIP


async def test_fifty_racing_creates_get_fifty_addresses(svcs):
    made = await asyncio.gather(*(svcs.create(service(f"race-{i}")) for i in range(50)))
    ips = [s.spec.clusterIP for s in made]
    assert len(set(ips)) == 50 and all(ipaddress.ip_address(ip) in CIDR for ip in ips)
    listed = {s.metadata.name: s.spec.clusterIP for s in (await svcs.list()).items}
    assert all(listed[s.metadata.name] == s.spec.clusterIP for s in made)


async def test_racing_node_ports_are_distinct_and_in_range(svcs):
    made = await asyncio.gather(*(svcs.create(service(f"np-{i}", type="NodePort", ports=((80, 80), (81, 81))))
                                  for i in range(10)))
    ports = [p.nodePort for s in made for p in s.spec.ports]
    assert len(set(ports)) == 20 and all(30000 <= p <= 32767 for p in ports)
    assert all(s.spec.externalTrafficPolicy == "Cluster" for s in made)
    listed = await svcs.list(field_selector="spec.type=NodePort")
    assert {s.metadata.name for s in made} <= {s.metadata.name for s in listed.items}
    assert all(s.spec.type == "NodePort" for s in listed.items)


async def test_two_creates_asking_for_one_address_one_wins(svcs):
    a, b = await asyncio.gather(svcs.create(service("same-a", cluster_ip="10.96.0.5")),
                                svcs.create(service("same-b", cluster_ip="10.96.0.5")), return_exceptions=True)
    won = [r for r in (a, b) if isinstance(r, v1.Service)]
    lost = [r for r in (a, b) if not isinstance(r, v1.Service)]
    assert len(won) == 1 and won[0].spec.clusterIP == "10.96.0.5"
    assert isinstance(lost[0], Invalid)
    assert 'spec.clusterIPs: Invalid value: "10.96.0.5": provided IP is already allocated' in str(lost[0])


async def test_a_taken_or_foreign_node_port_or_address_is_refused(svcs):
    await svcs.create(service("np-fixed", type="NodePort", node_port=30080))
    with pytest.raises(Invalid, match=r'services "np-taken" is invalid: spec.ports\[0\].nodePort: Invalid value: '
                                      r"30080: provided port is already allocated"):
        await svcs.create(service("np-taken", type="NodePort", node_port=30080))
    with pytest.raises(Invalid, match=r"spec.ports\[0\].nodePort: Invalid value: 80: provided port is not in the "
                                      r"valid range. The range of valid ports is 30000-32767"):
        await svcs.create(service("np-low", type="NodePort", node_port=80))
    with pytest.raises(Invalid, match=r'spec.clusterIPs: Invalid value: "10.0.0.7": failed to allocate IP '
                                      r"10.0.0.7: provided IP is not in the valid range. The range of valid "
                                      r"IPs is 10.96.0.0/12"):
        await svcs.create(service("ip-out", cluster_ip="10.0.0.7"))
    with pytest.raises(Invalid, match=r"spec.ports\[0\].nodePort: Forbidden: may not be used when `type` is "
                                      r"'ClusterIP'"):
        await svcs.create(service("np-clusterip", node_port=30081))


async def test_a_failed_create_holds_nothing(svcs):
    await svcs.create(service("holder", type="NodePort", node_port=30090))
    # asks for a free address and a taken port: refused, and the address stays free
    with pytest.raises(Invalid, match="provided port is already allocated"):
        await svcs.create(service("greedy", type="NodePort", cluster_ip="10.96.0.77", node_port=30090))
    s = await svcs.create(service("later", cluster_ip="10.96.0.77"))
    assert s.spec.clusterIP == "10.96.0.77"


async def test_delete_releases_address_and_node_port(svcs):
    await svcs.create(service("gone", type="NodePort", cluster_ip="10.96.0.88", node_port=30100))
    with pytest.raises(Invalid, match="already allocated"):
        await svcs.create(service("gone-2", type="NodePort", cluster_ip="10.96.0.88"))
    await svcs.delete("gone")
    s = await svcs.create(service("reborn", type="NodePort", cluster_ip="10.96.0.88", node_port=30100))
    assert (s.spec.clusterIP, s.spec.ports[0].nodePort) == ("10.96.0.88", 30100)


async def test_updates_keep_what_they_hold(svcs):
    s = await svcs.create(service("upd", type="NodePort", ports=((80, 80),)))
    ip, port = s.spec.clusterIP, s.spec.ports[0].nodePort
    # a replace from a manifest knows neither: both are kept
    fresh = service("upd", type="NodePort", ports=((80, 8080),))
    fresh.metadata.resourceVersion = s.metadata.resourceVersion
    u = await svcs.update(fresh)
    assert (u.spec.clusterIP, u.spec.ports[0].nodePort, u.spec.ports[0].targetPort.number_value) == (ip, port, 8080)
    u.spec.clusterIP, u.spec.clusterIPs[:] = "10.96.0.99", ["10.96.0.99"]
    with pytest.raises(Invalid, match=r'spec.clusterIP: Invalid value: "10.96.0.99": field is immutable'):
        await svcs.update(u)
    # a second port gets a node port of its own; NodePort -> ClusterIP gives both back
    u = await svcs.get("upd")
    u.spec.ports[0].name = "a"
    u.spec.ports.add(name="b", port=81).targetPort.number_value = 81
    u = await svcs.update(u)
    second = u.spec.ports[1].nodePort
    assert second and second != port
    u.spec.type = "ClusterIP"
    u = await svcs.update(u)
    assert [p.nodePort for p in u.spec.ports] == [0, 0] and u.spec.clusterIP == ip
    assert not u.spec.externalTrafficPolicy
    taker = await svcs.create(service("taker", type="NodePort", ports=((80, 80), (81, 81))))
    taker.spec.ports[0].nodePort, taker.spec.ports[1].nodePort = port, second
    taker = await svcs.update(taker)
    assert [p.nodePort for p in taker.spec.ports] == [port, second]


async def test_headless_gets_no_address(svcs):
    s = await svcs.create(service("headless", cluster_ip="None", ports=()))
    assert s.spec.clusterIP == "None" and list(s.spec.clusterIPs) == ["None"]
    with pytest.raises(Invalid, match="may not be set to 'None' for NodePort services"):
        await svcs.create(service("headless-np", cluster_ip="None", type="NodePort"))


async def test_validation_names_the_field(svcs):
    bad = service("bad", ports=((0, 0), (80, "not_a_name")))
    with pytest.raises(Invalid) as e:
        await svcs.create(bad)
    msg = str(e.value)
    assert msg.startswith('services "bad" is invalid: ')
    assert "spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive" in msg
    assert ('spec.ports[1].targetPort: Invalid value: "not_a_name": must contain only alpha-numeric characters '
            "(a-z, 0-9), and hyphens (-)") in msg


async def test_nodes_read_and_the_controller_manager_writes_endpoints(control_plane, svcs, tmp_path):
    pki_dir = control_plane.data_dir / "pki"
    server = f"127.0.0.1:{control_plane.port}"
    node_conf = admin_config(pki_dir, server, tmp_path / "node.conf", cn="system:node:n1", orgs=("system:nodes",))
    async with Client.connect(str(node_conf)) as node, Client.connect(
            str(control_plane.data_dir / "controller-manager.conf")) as cm:
        for res in ("services", "endpoints", "endpointslices"):
            assert (await node.resource(res, "default").list()).items
        with pytest.raises(Forbidden, match='User "system:node:n1" cannot create resource "services"'):
            await node.resource("services", "default").create(service("by-node"))
        with pytest.raises(Forbidden, match='cannot create resource "endpointslices" in API group '
                                            '"discovery.k8s.io"'):
            es = v1.EndpointSlice(addressType="IPv4")
            es.metadata.name = "by-node"
            await node.resource("endpointslices", "default").create(es)
        with pytest.raises(Forbidden, match='User "system:kube-controller-manager" cannot create resource "services"'):
            await cm.resource("services", "default").create(service("by-cm"))
        ep = v1.Endpoints()
        ep.metadata.name = "by-cm"
        ep.subsets.add(addresses=[v1.EndpointAddress(ip="10.244.1.5")]).ports.add(port=80)
        made = await cm.resource("endpoints", "default").create(ep)
        assert made.subsets[0].ports[0].protocol == "TCP"
        try:  # the endpoints controller may have removed it already: it has no service
            await cm.resource("endpoints", "default").delete("by-cm")
        except NotFound:
            pass


async def test_deleting_a_namespace_deletes_its_services_and_frees_their_addresses(client, svcs):
    ns = v1.Namespace()
    ns.metadata.name = "svc-ns"
    await client.namespaces().create(ns)
    try:
        await client.resource("services", "svc-ns").create(
            service("doomed", type="NodePort", cluster_ip="10.96.0.66", node_port=30066, ns="svc-ns"))
    finally:
        await client.namespaces().delete("svc-ns")  # the namespace controller deletes its content

    async def gone():
        try:
            await client.namespaces().get("svc-ns")
            return False
        except NotFound:
            return True
    await wait_for(gone, timeout=60, what="namespace svc-ns gone")
    s = await svcs.create(service("heir", type="NodePort", cluster_ip="10.96.0.66", node_port=30066))
    assert (s.spec.clusterIP, s.spec.ports[0].nodePort) == ("10.96.0.66", 30066)


# ---- in-process API servers on one etcd, with a small service range ----

@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("small")
    etcd = EtcdServer(d / "etcd", unsafe_no_fsync=True, log_path=d / "etcd.log")
    await etcd.start()
    handles = []
    try:
        handles.append(await start_apiserver(etcd, d / "a", service_cluster_ip_range="10.200.0.0/28",
                                             endpoint_reconcile_interval=0.5))
        yield etcd, d, handles
    finally:
        for h in handles:
            await h.client.close()
            await h.server.stop(0)
        await etcd.stop()


async def test_a_full_range_is_refused_and_asked_for_addresses_still_given(small):
    _, _, [h] = small
    res = h.client.resource("services", "default")
    # a /28: 14 addresses, the first is kubernetes', the tenth only when asked for; twelve
    # racing creates for the twelve left collide on their picks and must pick again
    made = list(await asyncio.gather(*(res.create(service(f"fill-{i}")) for i in range(12))))
    try:
        got = {octets_in(s.spec.clusterIP, "10.200.0.0") for s in made}
        assert got == set(range(2, 15)) - {10}
        with pytest.raises(ApiError, match="failed to allocate a serviceIP: range is full") as e:
            await res.create(service("one-too-many"))
        assert e.value.reason == "InternalError"
        dns = await res.create(service("kube-dns", cluster_ip="10.200.0.10"))
        assert dns.spec.clusterIP == "10.200.0.10"
        made.append(dns)
    finally:
        for s in made:
            await res.delete(s.metadata.name)


def octets_in(ip: str, net: str) -> int:
    return int(ipaddress.ip_address(ip)) - int(ipaddress.ip_address(net))


async def test_the_kubernetes_endpoints_follow_the_api_servers(small):
    etcd, d, handles = small
    eps = handles[0].client.resource("endpoints", "default")

    async def addresses():
        ep = await eps.get("kubernetes")
        return sorted(a.ip for s in ep.subsets for a in s.addresses)
    assert await addresses() == ["127.0.0.1"]
    second = await start_apiserver(etcd, d / "b", service_cluster_ip_range="10.200.0.0/28",
                                   advertise_address="127.0.0.2", endpoint_reconcile_interval=0.5)
    try:
        await wait_for(lambda: addresses_are(addresses, ["127.0.0.1", "127.0.0.2"]), what="two API servers")
    finally:
        await second.client.close()
        await second.server.stop(0)
    await wait_for(lambda: addresses_are(addresses, ["127.0.0.1"]), what="the stopped one gone")
    es = await handles[0].client.resource("endpointslices", "default").get("kubernetes")
    assert [list(e.addresses) for e in es.endpoints] == [["127.0.0.1"]]


async def addresses_are(get, want) -> bool:
    return await get() == want


async def test_kubeadm_gives_the_api_server_its_service_range_and_address(tmp_path, capsys):
    import argparse
    from pathlib import Path

    from kubeadm import manifests
    from master.apiserver import cmd
    cp = manifests.ControlPlane(etc_dir=Path("/etc/kubelab"), var_dir=Path("/var/lib/kubelab"),
                                advertise_address="192.168.72.10", service_cidr="10.73.0.0/16")
    argv = manifests.apiserver_pod(cp)["spec"]["containers"][0]["command"]
    parser = argparse.ArgumentParser(exit_on_error=False)
    cmd.register(parser.add_subparsers(dest="command"), [])
    args = parser.parse_args(argv[3:])
    assert (args.service_cluster_ip_range, args.advertise_address) == ("10.73.0.0/16", "192.168.72.10")
    assert args.service_node_port_range == "30000-32767"
    # bad flags: `kubelab apiserver` says which and exits 1 before it touches etcd
    for flag, value, want in (("--service-cluster-ip-range", "10.0.0.0/8", "the mask must be between /12 and /28"),
                              ("--service-node-port-range", "32767-30000", "FROM <= TO"),
                              ("--advertise-address", "master", "must be an IPv4 address")):
        bad = parser.parse_args(["apiserver", "--etcd-servers", "http://127.0.0.1:1", "--pki-dir", str(tmp_path),
                                 flag, value])
        assert await cmd.run(bad) == 1
        out = capsys.readouterr().err
        assert flag in out and want in out, out
