"""The endpoint controller end to end: a real etcd and API server, the controller in this
process with the controller manager's own identity, pods whose status the test writes as a
kubelet would (podIP, the Ready condition). Checked: the ready / not-ready split with node
names and target refs, a named targetPort resolved per pod, a pod leaving (not ready,
deleted, relabelled), a selector change, services without a selector left alone, no write
when nothing changed, and the Endpoints and slices deleted with their Service.
That `kubelab controller-manager` runs it is checked in test_cli.py (a whole control plane
with a hollow node: `get endpoints` after `expose`)."""
from __future__ import annotations

import asyncio

import pytest
from google.protobuf import struct_pb2

from kubelab.api.v1 import objects_pb2 as v1
from kubelab.client.client import Client
from kubelab.errors import NotFound
from master.controllers.endpoints import EndpointsController
from master.controllers.endpoints_desired import MANAGED_BY, MANAGED_BY_LABEL, SERVICE_NAME_LABEL

from .conftest import admin_config, wait_for


@pytest.fixture
async def controller(api, tmp_path):
    cfg = admin_config(tmp_path / "pki", api.address, tmp_path / "cm.conf", cn="system:kube-controller-manager",
                       orgs=())
    client = Client.connect(str(cfg))
    c = EndpointsController(client)
    task = asyncio.create_task(c.run())
    try:
        for i in c.informers:
            await asyncio.wait_for(i.wait_synced(), 30)
        yield c
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()


async def make_ns(client, name):
    ns = v1.Namespace()
    ns.metadata.name = name
    await client.namespaces().create(ns)


async def make_pod(client, ns, name, ip, *, ready=True, node="node-1", labels=None, ports=()):
    """A pod bound to `node`, with the status its kubelet would post once it runs."""
    p = v1.Pod()
    p.metadata.name, p.metadata.namespace = name, ns
    p.metadata.labels.update(labels if labels is not None else {"app": "web"})
    p.spec.nodeName = node
    c = p.spec.containers.add(name="c", image="busybox")
    for pname, num in ports:
        c.ports.add(name=pname, containerPort=num)
    p = await client.pods(ns).create(p)
    return await set_status(client, p, ip, ready)


async def set_status(client, p, ip, ready):
    p.status.phase, p.status.podIP, p.status.hostIP = "Running", ip, "192.168.74.10"
    del p.status.podIPs[:]
    p.status.podIPs.add(ip=ip)
    del p.status.conditions[:]
    p.status.conditions.add(type="Ready", status="True" if ready else "False")
    return await client.pods(p.metadata.namespace).update_status(p)


async def make_service(client, ns, name, selector, target="web", port=80, port_name="http"):
    s = v1.Service()
    s.metadata.name, s.metadata.namespace = name, ns
    s.spec.selector.update(selector)
    p = s.spec.ports.add(name=port_name, port=port, protocol="TCP")
    p.targetPort.CopyFrom(struct_pb2.Value(string_value=target) if isinstance(target, str)
                          else struct_pb2.Value(number_value=target))
    return await client.resource("services", ns).create(s)


async def endpoints(client, ns, name):
    """{ready: [(ip, port, node, pod)], notReady: [...]} of the Endpoints object."""
    ep = await client.resource("endpoints", ns).get(name)
    out = {"ready": [], "notReady": []}
    for ss in ep.subsets:
        for p in ss.ports:
            for field, addrs in (("ready", ss.addresses), ("notReady", ss.notReadyAddresses)):
                out[field] += [(a.ip, p.port, a.nodeName, a.targetRef.name) for a in addrs]
    return {k: sorted(v) for k, v in out.items()}


async def slices(client, ns, name):
    """[(ip, port or None, ready, node)] over the service's slices, and the slices."""
    items = (await client.resource("endpointslices", ns).list(label_selector=f"{SERVICE_NAME_LABEL}={name}")).items
    rows = sorted((e.addresses[0], s.ports[0].port if s.ports else None, e.conditions.ready, e.nodeName)
                  for s in items for e in s.endpoints)
    return rows, items


async def until_endpoints(client, ns, name, want, what):
    async def check():
        return await endpoints(client, ns, name) == want
    await wait_for(check, 30, what=what)


async def test_endpoints_follow_pods_and_selector(api, controller):
    c = api.client
    await make_ns(c, "ep-a")
    web = (("web", 8080),)
    await make_pod(c, "ep-a", "a", "10.244.1.3", ports=web)
    await make_pod(c, "ep-a", "b", "10.244.2.3", ready=False, node="node-2", ports=(("web", 9090),))
    await make_pod(c, "ep-a", "noport", "10.244.1.4", ports=(("admin", 7000),))
    await make_pod(c, "ep-a", "db", "10.244.1.5", labels={"app": "db"}, ports=web)
    svc = await make_service(c, "ep-a", "web", {"app": "web"})

    # ready / not ready, each with its own resolved named port and node; `noport` lacks "web"
    await until_endpoints(c, "ep-a", "web", {"ready": [("10.244.1.3", 8080, "node-1", "a")],
                                             "notReady": [("10.244.2.3", 9090, "node-2", "b")]},
                          "Endpoints with a ready and a not-ready address")
    want = [("10.244.1.3", 8080, True, "node-1"), ("10.244.1.4", None, True, "node-1"),
            ("10.244.2.3", 9090, False, "node-2")]  # a pod without the port: in a slice without ports

    async def slices_written():
        got = await slices(c, "ep-a", "web")
        return got[0] == want and got
    _, items = await wait_for(slices_written, 30, what="one slice per resolved port set")
    assert all(s.metadata.labels[MANAGED_BY_LABEL] == MANAGED_BY and s.addressType == "IPv4" for s in items)
    assert all(s.metadata.ownerReferences[0].uid == svc.metadata.uid for s in items)

    # nothing relevant changes: no write (the controller compares before it writes)
    before = controller.writes
    a = await c.pods("ep-a").get("a")
    a.metadata.annotations["note"] = "irrelevant"
    a = await c.pods("ep-a").update(a)

    def idle():
        seen = controller.pods.get("ep-a/a")
        # the queue is empty and no worker holds a key: the reconcile this change caused is over
        return (seen is not None and seen.metadata.resourceVersion == a.metadata.resourceVersion
                and len(controller.queue) == 0 and not controller.queue._processing)
    await wait_for(idle, 30, what="the controller idle after the pod's update")
    assert controller.writes == before

    # b becomes ready; a stops being ready: they swap sides
    await set_status(c, await c.pods("ep-a").get("b"), "10.244.2.3", True)
    await set_status(c, await c.pods("ep-a").get("a"), "10.244.1.3", False)
    await until_endpoints(c, "ep-a", "web", {"ready": [("10.244.2.3", 9090, "node-2", "b")],
                                             "notReady": [("10.244.1.3", 8080, "node-1", "a")]},
                          "a not ready, b ready")

    # a pod relabelled out of the selector leaves; a deleted one too
    b = await c.pods("ep-a").get("b")
    b.metadata.labels["app"] = "other"
    await c.pods("ep-a").update(b)
    await until_endpoints(c, "ep-a", "web", {"ready": [], "notReady": [("10.244.1.3", 8080, "node-1", "a")]},
                          "b relabelled out")
    await c.pods("ep-a").delete("a", grace_period=0)
    await until_endpoints(c, "ep-a", "web", {"ready": [], "notReady": []}, "a deleted")

    # selector change: now the db pod
    svc = await c.resource("services", "ep-a").get("web")
    svc.spec.selector.clear()
    svc.spec.selector["app"] = "db"
    await c.resource("services", "ep-a").update(svc)
    await until_endpoints(c, "ep-a", "web", {"ready": [("10.244.1.5", 8080, "node-1", "db")], "notReady": []},
                          "the db pod after the selector change")

    async def slice_rows():
        return (await slices(c, "ep-a", "web"))[0] == [("10.244.1.5", 8080, True, "node-1")]
    await wait_for(slice_rows, 30, what="the slices follow the selector")

    # the service goes: so do its Endpoints and slices
    await c.resource("services", "ep-a").delete("web")

    async def gone():
        try:
            await c.resource("endpoints", "ep-a").get("web")
            return False
        except NotFound:
            return not (await slices(c, "ep-a", "web"))[1]
    await wait_for(gone, 30, what="Endpoints and slices deleted with the service")


async def test_services_without_selector_are_left_alone(api, controller):
    c = api.client
    await make_ns(c, "ep-b")
    await make_pod(c, "ep-b", "a", "10.244.1.3", ports=(("web", 8080),))
    s = v1.Service()
    s.metadata.name, s.metadata.namespace = "manual", "ep-b"
    s.spec.ports.add(name="http", port=80, protocol="TCP")
    await c.resource("services", "ep-b").create(s)
    ep = v1.Endpoints()
    ep.metadata.name, ep.metadata.namespace = "manual", "ep-b"
    ep.subsets.add(addresses=[v1.EndpointAddress(ip="192.168.74.99")], ports=[v1.EndpointPort(name="http", port=80)])
    await c.resource("endpoints", "ep-b").create(ep)
    # a service with a selector in the same namespace, as a sync point: once its endpoints are
    # there, the controller has seen the manual one too
    await make_service(c, "ep-b", "web", {"app": "web"})
    await until_endpoints(c, "ep-b", "web", {"ready": [("10.244.1.3", 8080, "node-1", "a")], "notReady": []},
                          "the selector service's endpoints")
    assert await endpoints(c, "ep-b", "manual") == {"ready": [("192.168.74.99", 80, "", "")], "notReady": []}
    assert not (await slices(c, "ep-b", "manual"))[1]
    # the API server's own `kubernetes` service has no selector: its endpoints are not ours
    k = await c.resource("services", "default").get("kubernetes")
    assert not k.spec.selector
