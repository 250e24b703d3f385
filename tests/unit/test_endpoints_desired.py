"""The endpoint controller's pure half (master/controllers/endpoints_desired.py): which pods
a Service's Endpoints and EndpointSlices hold, and how, per Kubernetes' rules."""
from __future__ import annotations

from google.protobuf import struct_pb2

from kubelab.api.v1 import objects_pb2 as v1
from master.controllers import endpoints_desired as d


def service(name="web", selector=None, ports=(("http", 80, 8080, "TCP"),), **spec) -> v1.Service:
    s = v1.Service()
    s.metadata.name, s.metadata.namespace, s.metadata.uid = name, "default", "svc-uid"
    s.spec.selector.update({"app": "web"} if selector is None else selector)
    for pname, port, target, proto in ports:
        p = s.spec.ports.add(name=pname, port=port, protocol=proto)
        if target is not None:
            p.targetPort.CopyFrom(struct_pb2.Value(string_value=target) if isinstance(target, str)
                                  else struct_pb2.Value(number_value=target))
    for k, v in spec.items():
        setattr(s.spec, k, v)
    return s


def pod(name, ip, *, ready=True, node="n1", labels=None, ports=(), phase="Running", deleting=False) -> v1.Pod:
    p = v1.Pod()
    p.metadata.name, p.metadata.namespace, p.metadata.uid = name, "default", f"uid-{name}"
    p.metadata.labels.update({"app": "web"} if labels is None else labels)
    if deleting:
        p.metadata.deletionTimestamp = "2026-12-01T00:00:00Z"
    p.spec.nodeName = node
    c = p.spec.containers.add(name="c", image="busybox")
    for pname, num, *proto in ports:
        c.ports.add(name=pname, containerPort=num, protocol=proto[0] if proto else "TCP")
    p.status.phase, p.status.podIP = phase, ip
    p.status.conditions.add(type="Ready", status="True" if ready else "False")
    return p


def test_ready_and_not_ready_addresses_with_node_and_target_ref():
    subsets = d.desired_subsets(service(), [pod("b", "10.244.2.3", ready=False, node="n2"), pod("a", "10.244.1.3")])
    assert len(subsets) == 1
    ss = subsets[0]
    assert [(a.ip, a.nodeName, a.targetRef.kind, a.targetRef.name, a.targetRef.uid) for a in ss.addresses] == \
        [("10.244.1.3", "n1", "Pod", "a", "uid-a")]
    assert [a.ip for a in ss.notReadyAddresses] == ["10.244.2.3"]
    assert [(p.name, p.port, p.protocol) for p in ss.ports] == [("http", 8080, "TCP")]
    sl, = d.desired_slices(service(), [pod("b", "10.244.2.3", ready=False, node="n2"), pod("a", "10.244.1.3")])
    assert [(e.addresses[0], e.conditions.ready, e.conditions.serving, e.conditions.terminating, e.nodeName)
            for e in sl.endpoints] == [("10.244.1.3", True, True, False, "n1"), ("10.244.2.3", False, False, False, "n2")]
    assert sl.metadata.labels[d.SERVICE_NAME_LABEL] == "web"
    assert sl.metadata.labels[d.MANAGED_BY_LABEL] == d.MANAGED_BY
    assert sl.addressType == "IPv4" and [(p.name, p.port, p.protocol) for p in sl.ports] == [("http", 8080, "TCP")]
    owner, = sl.metadata.ownerReferences
    assert (owner.kind, owner.name, owner.uid, owner.controller) == ("Service", "web", "svc-uid", True)


def test_named_target_port_resolved_per_pod_and_pods_without_it_left_out():
    svc = service(ports=(("http", 80, "web", "TCP"),))
    pods = [pod("a", "10.244.1.3", ports=(("web", 8080),)), pod("b", "10.244.1.4", ports=(("web", 9090),)),
            pod("c", "10.244.1.5", ports=(("other", 8080),)), pod("u", "10.244.1.6", ports=(("web", 8080, "UDP"),))]
    subsets = d.desired_subsets(svc, pods)
    assert [([a.ip for a in s.addresses], [p.port for p in s.ports]) for s in subsets] == \
        [(["10.244.1.3"], [8080]), (["10.244.1.4"], [9090])]
    slices = d.desired_slices(svc, pods)
    by_port = {tuple(p.port for p in s.ports): [e.addresses[0] for e in s.endpoints] for s in slices}
    # Kubernetes' slice controller keeps a pod without the port in a slice without ports
    assert by_port == {(8080,): ["10.244.1.3"], (9090,): ["10.244.1.4"], (): ["10.244.1.5", "10.244.1.6"]}
    assert len({s.metadata.name for s in slices}) == 3


def test_pods_that_do_not_count():
    pods = [pod("noip", ""), pod("done", "10.244.1.7", phase="Succeeded"), pod("failed", "10.244.1.8", phase="Failed"),
            pod("other", "10.244.1.9", labels={"app": "db"}), pod("going", "10.244.1.10", deleting=True)]
    svc = service()
    chosen = [p for p in pods if d.selects(svc, p)]
    assert d.desired_subsets(svc, chosen) == []
    sl, = d.desired_slices(svc, chosen)  # a terminating pod stays in its slice, not ready
    assert [(e.addresses[0], e.conditions.ready, e.conditions.serving, e.conditions.terminating)
            for e in sl.endpoints] == [("10.244.1.10", False, True, True)]
    empty, = d.desired_slices(svc, [])
    assert not empty.endpoints and not empty.ports


def test_publish_not_ready_addresses_and_headless_without_ports():
    svc = service(publishNotReadyAddresses=True)
    ss, = d.desired_subsets(svc, [pod("a", "10.244.1.3", ready=False)])
    assert [a.ip for a in ss.addresses] == ["10.244.1.3"] and not ss.notReadyAddresses
    hl = service(ports=(), clusterIP="None")
    ss, = d.desired_subsets(hl, [pod("a", "10.244.1.3")])
    assert [a.ip for a in ss.addresses] == ["10.244.1.3"] and not ss.ports
    assert d.endpoints_labels(hl) == {d.HEADLESS_LABEL: ""}
    assert d.desired_subsets(service(ports=()), [pod("a", "10.244.1.3")]) == []  # not headless: needs a port


def test_hostname_published_only_with_the_service_as_subdomain():
    p = pod("a", "10.244.1.3")
    p.spec.hostname = "a-0"
    assert d.desired_subsets(service(), [p])[0].addresses[0].hostname == ""
    p.spec.subdomain = "web"
    assert d.desired_subsets(service(), [p])[0].addresses[0].hostname == "a-0"
    assert d.desired_slices(service(), [p])[0].endpoints[0].hostname == "a-0"


def test_unmanaged_services_and_selector_semantics():
    assert not d.managed(service(selector={}))
    assert not d.managed(service(type="ExternalName"))
    assert d.managed(service())
    svc = service(selector={"app": "web", "tier": "fe"})
    assert not d.selects(svc, pod("a", "1.2.3.4"))
    assert d.selects(svc, pod("a", "1.2.3.4", labels={"app": "web", "tier": "fe", "x": "y"}))
    assert not d.selects(service(selector={}), pod("a", "1.2.3.4"))


def test_output_is_stable_and_slices_are_chunked():
    pods = [pod(f"p{i}", f"10.244.{i // 250}.{i % 250 + 1}") for i in range(250)]
    once = d.desired_slices(service(), pods)
    again = d.desired_slices(service(), list(reversed(pods)))
    assert once == again
    assert sorted(len(s.endpoints) for s in once) == [50, 100, 100]
    assert d.desired_subsets(service(), pods) == d.desired_subsets(service(), list(reversed(pods)))
    assert len(d.slice_name("x" * 63, (), 0)) <= 63
