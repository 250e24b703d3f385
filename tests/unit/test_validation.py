import pytest
from hypothesis import given, settings, strategies as st

from kubelab.api import kinds
from kubelab.api.v1 import objects_pb2 as v1
from kubelab.errors import Invalid
from master.apiserver.registry import STRATEGIES


def pod(name="web", image="busybox", **spec):
    p = v1.Pod()
    p.metadata.name = name
    p.metadata.namespace = "default"
    p.spec.containers.add(name="c", image=image)
    for k, v in spec.items():
        setattr(p.spec, k, v)
    return p


def create(obj):
    s = STRATEGIES[kinds.kind_of(obj).resource]
    s.prepare_create(obj)
    s.validate(obj)
    return obj


def test_missing_image_names_the_field():
    with pytest.raises(Invalid) as e:
        create(pod(image=""))
    assert str(e.value) == 'pods "web" is invalid: spec.containers[0].image: Required value'


def test_bad_namespace_name():
    ns = v1.Namespace()
    ns.metadata.name = "Bad_Name"
    with pytest.raises(Invalid, match=r'namespaces "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name"'):
        create(ns)


def test_pod_defaults():
    p = create(pod())
    assert p.spec.restartPolicy == "Always"
    assert p.spec.terminationGracePeriodSeconds == 30
    assert p.spec.containers[0].imagePullPolicy == "Always"
    assert p.status.phase == "Pending"
    assert {t.key for t in p.spec.tolerations} == {"node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"}
    assert p.metadata.uid and p.metadata.creationTimestamp


def test_several_errors_in_one_message():
    p = pod(image="")
    p.spec.restartPolicy = "Sometimes"
    p.spec.containers[0].resources.requests["cpu"] = "lots"
    with pytest.raises(Invalid) as e:
        create(p)
    msg = str(e.value)
    assert "spec.containers[0].image: Required value" in msg
    assert 'spec.restartPolicy: Unsupported value: "Sometimes"' in msg
    assert "spec.containers[0].resources.requests[cpu]" in msg


def test_volume_mount_must_name_a_volume():
    p = pod()
    p.spec.containers[0].volumeMounts.add(name="logs", mountPath="/var/log")
    with pytest.raises(Invalid, match=r'volumeMounts\[0\].name: Not found: "logs"'):
        create(p)


def test_pod_spec_is_immutable_but_image():
    old = create(pod())
    new = v1.Pod()
    new.CopyFrom(old)
    new.spec.containers[0].image = "busybox:2"
    STRATEGIES["pods"].validate(new, old)
    new.spec.restartPolicy = "Never"
    with pytest.raises(Invalid, match="pod updates may not change fields"):
        STRATEGIES["pods"].validate(new, old)


@settings(max_examples=300, deadline=None)
@given(name=st.text(max_size=70), image=st.text(max_size=20),
       port=st.integers(-5, 70000), cpu=st.text(max_size=6))
def test_validation_never_crashes(name, image, port, cpu):
    """Any input ends in a valid object or an Invalid error, never another exception."""
    p = pod(name=name, image=image)
    p.spec.containers[0].ports.add(containerPort=port)
    p.spec.containers[0].resources.requests["cpu"] = cpu
    try:
        create(p)
    except Invalid as e:
        assert str(e).startswith(f'pods "{name}" is invalid: ')


# ---- Services, Endpoints, EndpointSlices, pod DNS ----

def svc(name="web", *ports, **spec):
    s = v1.Service()
    s.metadata.name, s.metadata.namespace = name, "default"
    for p in ports or ({"port": 80},):
        target = p.pop("targetPort", None)
        sp = s.spec.ports.add(**p)
        if isinstance(target, str):
            sp.targetPort.string_value = target
        elif target is not None:
            sp.targetPort.number_value = target
    for k, v in spec.items():
        if k == "selector":
            s.spec.selector.update(v)
        else:
            setattr(s.spec, k, v)
    return s


def errors_of(obj) -> str:
    with pytest.raises(Invalid) as e:
        create(obj)
    return str(e.value)


def test_service_defaults_as_kubernetes():
    s = create(svc("web", {"name": "a", "port": 80}, {"name": "b", "port": 81, "targetPort": "http"},
                   sessionAffinity="ClientIP"))
    assert s.spec.type == "ClusterIP" and s.spec.internalTrafficPolicy == "Cluster"
    assert [p.protocol for p in s.spec.ports] == ["TCP", "TCP"]
    assert s.spec.ports[0].targetPort.number_value == 80 and s.spec.ports[1].targetPort.string_value == "http"
    assert s.spec.sessionAffinityConfig.clientIP.timeoutSeconds == 10800
    assert list(s.spec.ipFamilies) == ["IPv4"] and s.spec.ipFamilyPolicy == "SingleStack"
    assert not s.spec.externalTrafficPolicy  # only NodePort services have one
    n = create(svc("np", type="NodePort"))
    assert n.spec.externalTrafficPolicy == "Cluster" and n.spec.sessionAffinity == "None"
    h = create(svc("h", clusterIP="None"))
    assert list(h.spec.clusterIPs) == ["None"]


@pytest.mark.parametrize("obj, want", [
    (svc("web", {"port": 0}), "spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive"),
    (svc("web", {"port": 70000}), "spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive"),
    (svc("web", {"port": 80}, {"port": 81}), "spec.ports[0].name: Required value, spec.ports[1].name: Required value"),
    (svc("web", {"name": "a", "port": 80}, {"name": "a", "port": 81}), 'spec.ports[1].name: Duplicate value: "a"'),
    (svc("web", {"name": "a", "port": 80}, {"name": "b", "port": 80}), 'spec.ports[1]: Duplicate value: "80/TCP"'),
    (svc("web", {"port": 80, "protocol": "ICMP"}),
     'spec.ports[0].protocol: Unsupported value: "ICMP": supported values: "TCP", "UDP"'),
    (svc("web", {"port": 80, "targetPort": -1}),
     "spec.ports[0].targetPort: Invalid value: -1: must be between 1 and 65535, inclusive"),
    (svc("web", {"port": 80, "targetPort": 65536}),
     "spec.ports[0].targetPort: Invalid value: 65536: must be between 1 and 65535, inclusive"),
    (svc("web", {"port": 80, "targetPort": "a-very-long-port-name"}),
     'spec.ports[0].targetPort: Invalid value: "a-very-long-port-name": must be no more than 15 characters'),
    (svc("web", {"port": 80, "targetPort": "8080"}),
     'spec.ports[0].targetPort: Invalid value: "8080": must contain at least one letter (a-z)'),
    (svc("web", {"port": 80, "targetPort": "-http"}),
     'spec.ports[0].targetPort: Invalid value: "-http": must not begin or end with a hyphen'),
    (svc("web", {"port": 80, "targetPort": "ht--tp"}),
     'spec.ports[0].targetPort: Invalid value: "ht--tp": must not contain consecutive hyphens'),
    (svc("web", type="LoadBalancer"), 'spec.type: Unsupported value: "LoadBalancer": supported values: '
     '"ClusterIP", "NodePort"'),
    (svc("web", {"port": 80, "nodePort": 30001}),
     "spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'"),
    (svc("web", {"name": "a", "port": 80, "nodePort": 30001}, {"name": "b", "port": 81, "nodePort": 30001},
         type="NodePort"), "spec.ports[1].nodePort: Duplicate value: 30001"),
    (svc("web", clusterIP="10.96.0.300"),
     'spec.clusterIPs[0]: Invalid value: "10.96.0.300": must be a valid IP address'),
    (svc("web", clusterIP="None", type="NodePort"),
     "spec.clusterIPs[0]: Invalid value: \"None\": may not be set to 'None' for NodePort services"),
    (svc("web", sessionAffinity="Sticky"),
     'spec.sessionAffinity: Unsupported value: "Sticky": supported values: "ClientIP", "None"'),
    (svc("web", externalTrafficPolicy="Local"),
     "spec.externalTrafficPolicy: Invalid value: \"Local\": may only be set when `type` is 'NodePort'"),
    (svc("web", selector={"app": "a b"}), 'spec.selector: Invalid value: "a b"'),
    (svc("9web"), 'metadata.name: Invalid value: "9web": a DNS-1035 label must consist of'),
    (svc("web", type="ExternalName"), 'spec.type: Unsupported value: "ExternalName"'),
])
def test_service_validation_names_the_field(obj, want):
    assert want in errors_of(obj)


def test_headless_needs_no_ports_but_others_do():
    h = svc("h", clusterIP="None")
    del h.spec.ports[:]
    create(h)
    s = svc("s")
    del s.spec.ports[:]
    assert "spec.ports: Required value" in errors_of(s)


def test_service_affinity_timeout_bounds():
    s = svc("s", sessionAffinity="ClientIP")
    s.spec.sessionAffinityConfig.clientIP.timeoutSeconds = 86401
    assert ("spec.sessionAffinityConfig.clientIP.timeoutSeconds: Invalid value: 86401: must be greater than 0 "
            "and less than 86400") in errors_of(s)
    n = svc("n")
    n.spec.sessionAffinityConfig.clientIP.timeoutSeconds = 5
    assert "spec.sessionAffinityConfig: Invalid value: must not be set when session affinity is None" in errors_of(n)


def update(new, old):
    s = STRATEGIES[kinds.kind_of(new).resource]
    s.prepare_update(new, old)
    s.validate(new, old)
    return new


def test_service_update_keeps_allocations_and_cluster_ip_is_immutable():
    old = create(svc("s", {"name": "a", "port": 80}, {"name": "b", "port": 81}, type="NodePort"))
    old.spec.clusterIP, old.spec.clusterIPs[:] = "10.96.0.20", ["10.96.0.20"]
    old.spec.ports[0].nodePort, old.spec.ports[1].nodePort = 30001, 30002
    # a replace that names neither the address nor the node ports keeps both
    new = update(svc("s", {"name": "a", "port": 80}, {"name": "b", "port": 81}, type="NodePort"), old)
    assert new.spec.clusterIP == "10.96.0.20" and [p.nodePort for p in new.spec.ports] == [30001, 30002]
    moved = v1.Service()
    moved.CopyFrom(new)
    moved.spec.clusterIP, moved.spec.clusterIPs[:] = "10.96.0.21", ["10.96.0.21"]
    with pytest.raises(Invalid, match=r'spec.clusterIP: Invalid value: "10.96.0.21": field is immutable'):
        update(moved, old)
    # NodePort -> ClusterIP drops the node ports (and the traffic policy) it did not change
    c = v1.Service()
    c.CopyFrom(new)
    c.spec.type = "ClusterIP"
    c = update(c, old)
    assert [p.nodePort for p in c.spec.ports] == [0, 0] and not c.spec.externalTrafficPolicy


def test_endpoints_and_slices_validation():
    ep = v1.Endpoints()
    ep.metadata.name = "web"
    sub = ep.subsets.add(addresses=[v1.EndpointAddress(ip="10.244.1.300")])
    sub.ports.add(port=80)
    sub.ports.add(name="b", port=0)
    msg = errors_of(ep)
    assert 'subsets[0].addresses[0].ip: Invalid value: "10.244.1.300": must be a valid IP address' in msg
    assert "subsets[0].ports[0].name: Required value" in msg
    assert "subsets[0].ports[1].port: Invalid value: 0: must be between 1 and 65535, inclusive" in msg
    es = v1.EndpointSlice(addressType="IPv4")
    es.metadata.name = "web-abcde"
    es.endpoints.add(addresses=["fd00::1"])
    es.endpoints.add()
    es.ports.add(name="http", port=80)
    msg = errors_of(es)
    assert 'endpoints[0].addresses[0]: Invalid value: "fd00::1": must be a valid IPv4 address' in msg
    assert "endpoints[1].addresses: Required value" in msg
    assert create(v1.EndpointSlice(addressType="IPv4", metadata=v1.ObjectMeta(name="ok"))).addressType == "IPv4"
    bad = v1.EndpointSlice(addressType="IPX", metadata=v1.ObjectMeta(name="x"))
    assert 'addressType: Unsupported value: "IPX": supported values: "FQDN", "IPv4", "IPv6"' in errors_of(bad)
    old = create(v1.EndpointSlice(addressType="IPv4", metadata=v1.ObjectMeta(name="im")))
    new = v1.EndpointSlice(addressType="IPv6", metadata=v1.ObjectMeta(name="im"))
    with pytest.raises(Invalid, match='addressType: Invalid value: "IPv6": field is immutable'):
        update(new, old)


def test_pod_dns_policy_default_and_validation():
    assert create(pod()).spec.dnsPolicy == "ClusterFirst"
    p = pod(dnsPolicy="Sometimes")
    assert 'spec.dnsPolicy: Unsupported value: "Sometimes"' in errors_of(p)
    p = pod(dnsPolicy="None")
    assert "spec.dnsConfig.nameservers: Required value" in errors_of(p)
    p = pod(dnsPolicy="None")
    p.spec.dnsConfig.nameservers.extend(["1.1.1.1", "2.2.2.2", "3.3.3.3", "nope"])
    msg = errors_of(p)
    assert "must not have more than 3 nameservers" in msg and 'nameservers[3]: Invalid value: "nope"' in msg
    p = pod(dnsPolicy="None", subdomain="Sub_domain")
    p.spec.dnsConfig.nameservers.append("10.96.0.10")
    p.spec.dnsConfig.options.add(value="2")
    msg = errors_of(p)
    assert "spec.dnsConfig.options[0].name: Required value" in msg
    assert 'spec.subdomain: Invalid value: "Sub_domain"' in msg
    ok = pod(dnsPolicy="None", subdomain="sub", hostname="web-0")
    ok.spec.dnsConfig.nameservers.append("10.96.0.10")
    ok.spec.dnsConfig.searches.extend(["ns1.svc.cluster.local", "cluster.local."])
    ok.spec.dnsConfig.options.add(name="ndots", value="5")
    create(ok)


def test_pod_stored_without_dns_policy_can_still_be_updated():
    old = create(pod())
    old.spec.dnsPolicy = ""  # as written before dnsPolicy was defaulted
    new = v1.Pod()
    new.CopyFrom(old)
    new.spec.containers[0].image = "busybox:2"
    update(new, old)
    assert new.spec.dnsPolicy == "ClusterFirst"


@settings(max_examples=200, deadline=None)
@given(name=st.text(max_size=20), port=st.integers(-5, 70000),
       target=st.one_of(st.integers(-5, 70000), st.text(max_size=20)),
       proto=st.sampled_from(["", "TCP", "UDP", "tcp"]), typ=st.sampled_from(["", "ClusterIP", "NodePort", "x"]),
       ip=st.sampled_from(["", "None", "10.96.0.1", "x"]), node_port=st.integers(-1, 70000))
def test_service_validation_never_crashes(name, port, target, proto, typ, ip, node_port):
    s = svc(name, {"port": port, "targetPort": target, "protocol": proto, "nodePort": node_port},
            type=typ, clusterIP=ip)
    try:
        create(s)
    except Invalid as e:
        assert str(e).startswith(f'services "{name}" is invalid: ')


# ---- the allocators' ranges (master/apiserver/allocator.py: pure parts) ----

def test_ip_range_prefers_the_dynamic_band_and_never_picks_reserved():
    from master.apiserver.allocator import IPRange
    r = IPRange("10.96.0.0/24")  # 254 addresses, static band 16: offsets 1-16
    picks = {r.range.pick(set()) for _ in range(200)}
    assert all(17 <= p <= 254 for p in picks)
    taken = set(range(17, 255))
    left = set()
    while (p := r.range.pick(taken | left)) is not None:
        left.add(p)
    # the static band last, without the first (kubernetes) and the tenth (kube-dns)
    assert left == set(range(1, 17)) - {1, 10}
    assert r.address(1) == "10.96.0.1" and r.address(10) == "10.96.0.10"
    assert r.offset("10.96.0.0") is None and r.offset("10.96.0.255") is None and r.offset("10.96.1.1") is None
    assert r.offset("10.96.0.254") == 254


def test_port_range_and_flag_errors():
    from master.apiserver.allocator import IPRange, PortRange
    r = PortRange("30000-32767")
    assert all(30086 <= r.range.pick(set()) <= 32767 for _ in range(100))  # band: 2768 // 32 = 86
    small = PortRange("30000-30001")
    assert {small.range.pick({30000}), small.range.pick({30001})} == {30001, 30000}
    assert small.range.pick({30000, 30001}) is None
    for bad, want in (("10.0.0.0/8", "the mask must be between /12 and /28"), ("fd00::/108", "only IPv4"),
                      ("nope", "not a CIDR")):
        with pytest.raises(ValueError, match=want):
            IPRange(bad)
    assert (PortRange("30000").lo, PortRange("30000").hi) == (30000, 30000)
    for bad in ("3-2", "a-b", "0-10", "1-70000"):
        with pytest.raises(ValueError, match="--service-node-port-range"):
            PortRange(bad)
