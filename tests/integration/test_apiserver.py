"""The API server against a real etcd, through the real client over mTLS."""
from __future__ import annotations

import asyncio

import grpc
import pytest

from kubelab.api.v1 import objects_pb2 as v1
from kubelab.client.client import Client
from kubelab.errors import AlreadyExists, BadRequest, Conflict, Forbidden, Gone, Invalid, NotFound

from .conftest import start_apiserver, wait_for


def pod(name, ns="default", labels=None, image="busybox", node=""):
    p = v1.Pod()
    p.metadata.name, p.metadata.namespace = name, ns
    p.metadata.labels.update(labels or {})
    p.spec.containers.add(name="c", image=image)
    return p


def namespace(name):
    ns = v1.Namespace()
    ns.metadata.name = name
    return ns


async def test_default_namespaces_exist(api):
    names = {n.metadata.name for n in (await api.client.namespaces().list()).items}
    assert {"default", "kube-system", "kube-public", "kube-node-lease"} <= names


async def test_crud_and_server_set_fields(api):
    pods = api.client.pods("default")
    created = await pods.create(pod("web", labels={"app": "web"}))
    assert created.metadata.uid and created.metadata.creationTimestamp
    assert created.metadata.generation == 1
    assert int(created.metadata.resourceVersion) > 0
    got = await pods.get("web")
    assert got == created
    with pytest.raises(AlreadyExists, match='pods "web" already exists'):
        await pods.create(pod("web"))
    got.spec.containers[0].image = "busybox:1.36"
    updated = await pods.update(got)
    assert int(updated.metadata.resourceVersion) > int(got.metadata.resourceVersion)
    assert updated.metadata.generation == 2
    with pytest.raises(Conflict, match="the object has been modified"):
        await pods.update(got)  # stale resourceVersion
    deleted = await pods.delete("web")  # unbound: removed at once
    assert deleted.metadata.name == "web"
    with pytest.raises(NotFound, match='pods "web" not found'):
        await pods.get("web")


async def test_generate_name(api):
    p = pod("")
    p.metadata.generateName = "web-"
    a = await api.client.pods("default").create(p)
    b = await api.client.pods("default").create(p)
    assert a.metadata.name.startswith("web-") and len(a.metadata.name) == 9
    assert a.metadata.name != b.metadata.name


async def test_validation_errors_name_the_field(api):
    with pytest.raises(Invalid) as e:
        await api.client.pods("default").create(pod("web", image=""))
    assert e.value.kubectl() == ('Error from server (Invalid): pods "web" is invalid: '
                                 'spec.containers[0].image: Required value')
    with pytest.raises(Invalid, match="metadata.name"):
        await api.client.namespaces().create(namespace("Bad_Name"))
    with pytest.raises(NotFound, match='namespaces "nope" not found'):
        await api.client.pods("nope").create(pod("x", ns="nope"))
    p = pod("big")
    p.metadata.annotations["a"] = "x" * (2 * 1024 * 1024)
    with pytest.raises(Exception):
        await api.client.pods("default").create(p)
    assert (await api.client.pods("default").list()).items == []


async def test_garbage_requests_do_not_hurt_the_server(api):
    from google.protobuf import any_pb2
    from kubelab.api.v1 import api_pb2
    call = api.client._calls["Create"]
    bad = [api_pb2.CreateRequest(resource="pods", namespace="default",
                                 object=any_pb2.Any(type_url="type.googleapis.com/kubelab.api.v1.Pod", value=b"\xff\xff")),
           api_pb2.CreateRequest(resource="pods", object=any_pb2.Any(type_url="nope", value=b"")),
           api_pb2.CreateRequest(resource="widgets")]
    for req in bad:
        with pytest.raises(grpc.RpcError) as e:
            await call(req)
        assert e.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
    with pytest.raises(BadRequest):
        await api.client.pods("").list(label_selector="a=(")
    with pytest.raises(BadRequest, match="field label not supported"):
        await api.client.pods("").list(field_selector="spec.bogus=1")
    assert (await api.client.namespaces().get("default")).metadata.name == "default"


async def test_selectors(api):
    pods = api.client.pods("default")
    for i in range(6):
        last = await pods.create(pod(f"p{i}", labels={"app": "a" if i % 2 else "b", "i": str(i)}))
    got = await pods.list(label_selector="app=a")
    assert sorted(p.metadata.name for p in got.items) == ["p1", "p3", "p5"]
    got = await pods.list(label_selector="app=b,i notin (0)", field_selector="metadata.name!=p2")
    assert [p.metadata.name for p in got.items] == ["p4"]
    cached = await pods.list(label_selector="app=a", resource_version=last.metadata.resourceVersion)
    assert sorted(p.metadata.name for p in cached.items) == ["p1", "p3", "p5"]
    by_phase = await api.client.pods("").list(field_selector="status.phase=Pending")
    assert len(by_phase.items) == 6


async def test_list_pages_at_one_revision(api):
    pods = api.client.pods("default")
    await asyncio.gather(*(pods.create(pod(f"p{i:03d}")) for i in range(25)))
    first = await pods.list(limit=10)
    assert len(first.items) == 10 and first.continue_token and first.remaining == 15
    await pods.create(pod("p999"))  # written after the first page: not in this walk
    await pods.delete("p020")
    items = list(first.items)
    token = first.continue_token
    while token:
        page = await pods.list(limit=10, continue_token=token)
        assert page.resource_version == first.resource_version
        items += page.items
        token = page.continue_token
    names = [p.metadata.name for p in items]
    assert names == [f"p{i:03d}" for i in range(25)]
    with pytest.raises(BadRequest, match="continue"):
        await pods.list(limit=10, continue_token="garbage!")


async def test_watch_from_resource_version(api):
    pods = api.client.pods("default")
    a = await pods.create(pod("a"))
    events = []

    async def follow():
        async for ev in pods.watch(resource_version=a.metadata.resourceVersion, allow_bookmarks=False):
            events.append((ev.type, ev.object.metadata.name))
            if len(events) == 3:
                return
    t = asyncio.create_task(follow())
    b = await pods.create(pod("b"))
    b.metadata.labels["x"] = "y"
    await pods.update(b)
    await pods.delete("a")
    await asyncio.wait_for(t, 10)
    assert events == [("ADDED", "b"), ("MODIFIED", "b"), ("DELETED", "a")]


async def test_watch_selector_transitions_and_bookmarks(api):
    pods = api.client.pods("default")
    seen = []

    async def follow():
        async for ev in pods.watch(field_selector="spec.nodeName=n1"):
            seen.append((ev.type, ev.object.metadata.name))
            if ev.type == "DELETED":
                return
    t = asyncio.create_task(follow())
    await pods.create(pod("w"))
    await api.client.bind("default", "w", "n1")  # now matches: ADDED
    await wait_for(lambda: ("ADDED", "w") in seen, 10, what="ADDED after binding")
    await wait_for(lambda: ("BOOKMARK", "") in seen, 10, what="a bookmark")
    await pods.delete("w", grace_period=0)
    await asyncio.wait_for(t, 10)
    assert seen[0] == ("BOOKMARK", "") and seen[-1] == ("DELETED", "w")


async def test_watch_too_old_is_gone(etcd, tmp_path):
    h = await start_apiserver(etcd, tmp_path, cache_capacity=5)
    try:
        pods = h.client.pods("default")
        first = await pods.create(pod("p0"))
        for i in range(1, 10):
            await pods.create(pod(f"p{i}"))
        await asyncio.sleep(0.3)
        with pytest.raises(Gone, match="too old resource version"):
            async for _ in pods.watch(resource_version=first.metadata.resourceVersion):
                pass
    finally:
        await h.client.close()
        await h.server.stop(0)


async def test_compacted_continue_is_gone(api, etcd_client):
    pods = api.client.pods("default")
    for i in range(6):
        await pods.create(pod(f"p{i}"))
    page = await pods.list(limit=2)
    for i in range(3):
        await pods.update(await pods.get("p0"))
        p = await pods.get("p0")
        p.metadata.labels["n"] = str(i)
        await pods.update(p)
    _, rev = await etcd_client.get("x")
    await etcd_client.compact(rev)
    with pytest.raises(Gone, match="continue parameter is too old"):
        await pods.list(limit=2, continue_token=page.continue_token)


async def test_graceful_pod_deletion(api):
    pods = api.client.pods("default")
    await pods.create(pod("bound"))
    await api.client.bind("default", "bound", "n1")
    with pytest.raises(Conflict, match='already assigned to node "n1"'):
        await api.client.bind("default", "bound", "n2")
    marked = await pods.delete("bound")
    assert marked.metadata.deletionTimestamp and marked.metadata.deletionGracePeriodSeconds == 30
    assert (await pods.get("bound")).metadata.deletionTimestamp
    shorter = await pods.delete("bound", grace_period=5)
    assert shorter.metadata.deletionGracePeriodSeconds == 5
    await pods.delete("bound", grace_period=0)  # what the kubelet does once the containers stopped
    with pytest.raises(NotFound):
        await pods.get("bound")


async def test_namespace_deletion_marks_terminating(api):
    nss = api.client.namespaces()
    await nss.create(namespace("dev"))
    await api.client.pods("dev").create(pod("p", ns="dev"))
    ns = await nss.delete("dev")
    assert ns.status.phase == "Terminating" and ns.metadata.deletionTimestamp
    with pytest.raises(Forbidden, match="being terminated"):
        await api.client.pods("dev").create(pod("q", ns="dev"))
    with pytest.raises(Forbidden, match="may not be deleted"):
        await nss.delete("kube-system")
    # the namespace controller's part: empty it, then drop the finalizer
    await api.client.pods("dev").delete("p")
    ns = await nss.get("dev")
    del ns.spec.finalizers[:]
    await nss.update(ns)
    with pytest.raises(NotFound):
        await nss.get("dev")


async def test_status_and_spec_updates_are_separate(api):
    pods = api.client.pods("default")
    p = await pods.create(pod("s"))
    p.status.phase = "Running"
    p.metadata.labels["ignored"] = "yes"
    after = await pods.update_status(p)
    assert after.status.phase == "Running" and "ignored" not in after.metadata.labels
    after.status.phase = "Failed"
    after.metadata.labels["kept"] = "yes"
    again = await pods.update(after)
    assert again.status.phase == "Running" and again.metadata.labels["kept"] == "yes"


async def test_restart_keeps_data(etcd, tmp_path):
    h = await start_apiserver(etcd, tmp_path)
    await h.client.namespaces().create(namespace("keep"))
    await h.client.close()
    await h.server.stop(0)
    await etcd.stop()
    await etcd.start()
    h = await start_apiserver(etcd, tmp_path)
    try:
        assert (await h.client.namespaces().get("keep")).status.phase == "Active"
    finally:
        await h.client.close()
        await h.server.stop(0)


async def test_mtls_is_required(api):
    ch = grpc.aio.secure_channel(api.address, grpc.ssl_channel_credentials(
        root_certificates=api.server.opts.pki_dir.joinpath("ca.crt").read_bytes()))
    c = Client(ch, timeout=5)
    try:
        with pytest.raises(Exception):
            await c.namespaces().list()
    finally:
        await c.close()
    insecure = Client.insecure(api.address, timeout=5)
    try:
        with pytest.raises(Exception):
            await insecure.namespaces().list()
    finally:
        await insecure.close()


async def test_watch_from_a_list_revision_moved_by_other_kinds(api):
    """Writes to namespaces move etcd's revision past the pods cache: a watch from a pods list's
    revision must still start at once (the cache asks etcd for progress), not time out."""
    await api.client.pods("default").create(pod("early"))
    for i in range(3):
        await api.client.namespaces().create(namespace(f"mover{i}"))
    listed = await api.client.pods("default").list(limit=10)  # read from etcd: etcd's revision
    stream = api.client.pods("default").watch(resource_version=listed.resource_version, allow_bookmarks=False)
    got = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.2)
    await api.client.pods("default").create(pod("late"))
    ev = await asyncio.wait_for(got, 2.5)  # well under the cache's 3 s wait
    assert (ev.type, ev.object.metadata.name) == ("ADDED", "late")
    await stream.aclose()
