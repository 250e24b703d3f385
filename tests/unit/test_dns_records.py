"""The cluster DNS zone (addons/dns/records.py): which names exist and what they answer,
fed the API's own Service and EndpointSlice messages."""
from __future__ import annotations

from addons.dns.records import Zone
from kubelab.api.v1 import objects_pb2 as v1


def service(name, ns="default", *, ip="10.96.0.20", ports=(("http", "TCP", 80),), publish_not_ready=False):
    s = v1.Service()
    s.metadata.name, s.metadata.namespace = name, ns
    s.spec.clusterIP = ip
    if ip and ip != "None":
        s.spec.clusterIPs.append(ip)
    s.spec.publishNotReadyAddresses = publish_not_ready
    for pname, proto, port in ports:
        s.spec.ports.add(name=pname, protocol=proto, port=port)
    return s


def endpoint_slice(svc, name=None, ns="default", *, endpoints=(), ports=(("http", "TCP", 8080),)):
    sl = v1.EndpointSlice(addressType="IPv4")
    sl.metadata.name, sl.metadata.namespace = name or f"{svc}-abcde", ns
    sl.metadata.labels["kubernetes.io/service-name"] = svc
    for addr, ready, hostname in endpoints:
        ep = sl.endpoints.add(addresses=[addr])
        if ready is not None:
            ep.conditions.ready = ready
        if hostname:
            ep.hostname = hostname
    for pname, proto, port in ports:
        sl.ports.add(name=pname, protocol=proto, port=port)
    return sl


def data(ans, rtype=None):
    return sorted(rr.data for rr in ans.answer if rtype is None or rr.rtype == rtype)


def test_cluster_ip_service_a_record_and_removal():
    z = Zone()
    z.upsert_service(service("web"))
    a = z.lookup("web.default.svc.cluster.local.", "A")
    assert (a.rcode, data(a)) == ("NOERROR", ["10.96.0.20"])
    assert a.answer[0].ttl == 5
    assert data(z.lookup("WEB.Default.svc.cluster.local", "A")) == ["10.96.0.20"]  # names are case-blind
    z.delete_service(service("web"))
    gone = z.lookup("web.default.svc.cluster.local", "A")
    assert gone.rcode == "NXDOMAIN" and gone.authority[0].rtype == "SOA"


def test_service_update_replaces_its_address():
    z = Zone()
    z.upsert_service(service("web"))
    z.upsert_service(service("web", ip="10.96.0.21"))
    assert data(z.lookup("web.default.svc.cluster.local", "A")) == ["10.96.0.21"]
    assert z.lookup("20.0.96.10.in-addr.arpa", "PTR") is None  # the old reverse name left with it
    assert data(z.lookup("21.0.96.10.in-addr.arpa", "PTR")) == ["web.default.svc.cluster.local."]


def test_headless_service_answers_ready_endpoints_and_their_names():
    z = Zone()
    z.upsert_service(service("db", ip="None"))
    z.upsert_slice(endpoint_slice("db", endpoints=[("10.244.1.5", True, "db-0"), ("10.244.2.6", None, ""),
                                                    ("10.244.2.7", False, "db-2")]))
    assert data(z.lookup("db.default.svc.cluster.local", "A")) == ["10.244.1.5", "10.244.2.6"]
    assert data(z.lookup("db-0.db.default.svc.cluster.local", "A")) == ["10.244.1.5"]
    assert data(z.lookup("10-244-2-6.db.default.svc.cluster.local", "A")) == ["10.244.2.6"]
    assert z.lookup("db-2.db.default.svc.cluster.local", "A").rcode == "NXDOMAIN"  # not ready
    # the endpoint turns ready: the next answer has it
    z.upsert_slice(endpoint_slice("db", endpoints=[("10.244.2.7", True, "db-2")]))
    assert data(z.lookup("db.default.svc.cluster.local", "A")) == ["10.244.2.7"]


def test_headless_publish_not_ready_addresses():
    z = Zone()
    z.upsert_service(service("db", ip="None", publish_not_ready=True))
    z.upsert_slice(endpoint_slice("db", endpoints=[("10.244.2.7", False, "")]))
    assert data(z.lookup("db.default.svc.cluster.local", "A")) == ["10.244.2.7"]


def test_headless_endpoints_merge_across_slices_and_leave_with_theirs():
    z = Zone()
    z.upsert_slice(endpoint_slice("db", "db-1", endpoints=[("10.244.1.5", True, "")]))  # before its service
    z.upsert_service(service("db", ip="None"))
    z.upsert_slice(endpoint_slice("db", "db-2", endpoints=[("10.244.2.6", True, "")]))
    assert data(z.lookup("db.default.svc.cluster.local", "A")) == ["10.244.1.5", "10.244.2.6"]
    z.delete_slice(endpoint_slice("db", "db-1"))
    assert data(z.lookup("db.default.svc.cluster.local", "A")) == ["10.244.2.6"]


def test_srv_for_named_ports_with_targets_as_additional_data():
    z = Zone()
    z.upsert_service(service("dns", ports=(("dns", "UDP", 53), ("dns-tcp", "TCP", 53), ("", "TCP", 9153))))
    a = z.lookup("_dns._udp.dns.default.svc.cluster.local", "SRV")
    assert data(a) == ["0 100 53 dns.default.svc.cluster.local."]
    assert [(rr.name, rr.data) for rr in a.additional] == [("dns.default.svc.cluster.local", "10.96.0.20")]
    assert data(z.lookup("_dns-tcp._tcp.dns.default.svc.cluster.local", "SRV")) == [
        "0 100 53 dns.default.svc.cluster.local."]
    assert z.lookup("_dns._tcp.dns.default.svc.cluster.local", "SRV").rcode == "NXDOMAIN"  # wrong protocol
    # the service name: every port, once per port number (53/UDP and 53/TCP are one record)
    assert data(z.lookup("dns.default.svc.cluster.local", "SRV")) == [
        "0 50 53 dns.default.svc.cluster.local.", "0 50 9153 dns.default.svc.cluster.local."]


def test_headless_srv_points_at_each_endpoint():
    z = Zone()
    z.upsert_service(service("db", ip="None"))
    z.upsert_slice(endpoint_slice("db", endpoints=[("10.244.1.5", True, "db-0"), ("10.244.2.6", True, "")]))
    a = z.lookup("_http._tcp.db.default.svc.cluster.local", "SRV")
    assert data(a) == ["0 50 8080 10-244-2-6.db.default.svc.cluster.local.",
                       "0 50 8080 db-0.db.default.svc.cluster.local."]
    assert sorted(rr.data for rr in a.additional) == ["10.244.1.5", "10.244.2.6"]


def test_pod_records():
    z = Zone()
    assert data(z.lookup("10-244-1-5.default.pod.cluster.local", "A")) == ["10.244.1.5"]
    assert z.lookup("10-244-1-5.default.pod.cluster.local", "AAAA").answer == []
    assert z.lookup("10-244-1-256.default.pod.cluster.local", "A").rcode == "NXDOMAIN"
    assert z.lookup("10-244-1.default.pod.cluster.local", "A").rcode == "NXDOMAIN"


def test_known_name_other_type_is_nodata_with_soa():
    z = Zone()
    z.upsert_service(service("web"))
    a = z.lookup("web.default.svc.cluster.local", "AAAA")
    assert (a.rcode, a.answer) == ("NOERROR", [])
    assert [rr.rtype for rr in a.authority] == ["SOA"]
    assert a.authority[0].data.startswith("ns.dns.cluster.local. hostmaster.cluster.local. ")


def test_empty_non_terminals_exist_and_unknown_names_do_not():
    z = Zone()
    z.upsert_service(service("web", ns="shop"))
    for name in ("shop.svc.cluster.local", "svc.cluster.local", "cluster.local",
                 "_tcp.web.shop.svc.cluster.local"):
        assert z.lookup(name, "A").rcode == "NOERROR", name
    for name in ("nope.shop.svc.cluster.local", "web.other.svc.cluster.local", "x.cluster.local",
                 "google.com.shop.svc.cluster.local"):
        a = z.lookup(name, "A")
        assert a.rcode == "NXDOMAIN" and a.authority[0].rtype == "SOA", name
    z.delete_service(service("web", ns="shop"))
    assert z.lookup("shop.svc.cluster.local", "A").rcode == "NXDOMAIN"  # its last service went


def test_apex_soa_and_ns_and_serial_moves_on_change():
    z = Zone("cluster.local", serial=100)
    soa = z.lookup("cluster.local", "SOA")
    assert data(soa)[0].split()[2] == "100"
    z.upsert_service(service("web"))
    assert int(data(z.lookup("cluster.local", "SOA"))[0].split()[2]) > 100
    assert data(z.lookup("cluster.local", "NS")) == ["ns.dns.cluster.local."]


def test_names_outside_the_zone_are_not_ours():
    z = Zone()
    assert z.lookup("example.com", "A") is None
    assert z.lookup("local", "A") is None
    assert z.lookup("1.1.168.192.in-addr.arpa", "PTR") is None


def test_other_cluster_domain():
    z = Zone("kube.test")
    z.upsert_service(service("web"))
    assert data(z.lookup("web.default.svc.kube.test", "A")) == ["10.96.0.20"]
    assert z.lookup("web.default.svc.cluster.local", "A") is None


def test_relabelled_slice_moves_to_its_new_service():
    z = Zone()
    z.upsert_service(service("a", ip="None"))
    z.upsert_service(service("b", ip="None"))
    z.upsert_slice(endpoint_slice("a", "s1", endpoints=[("10.244.1.5", True, "")]))
    moved = endpoint_slice("b", "s1", endpoints=[("10.244.1.5", True, "")])
    z.upsert_slice(moved)
    assert z.lookup("a.default.svc.cluster.local", "A").answer == []
    assert data(z.lookup("b.default.svc.cluster.local", "A")) == ["10.244.1.5"]
