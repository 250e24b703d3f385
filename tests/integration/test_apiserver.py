"""The API server against a real etcd, through the real client over mTLS."""
from __future__ import annotations

import asyncio

import grpc
import pytest

from kubelab.api.v1 import objects_pb2 as v1
from kubelab.client.client import Client
from kubelab.errors import (AlreadyExists, BadRequest, Conflict, Forbidden, Gone, Invalid, NotFound,
                            RequestEntityTooLarge, ServiceUnavailable)

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
    with pytest.raises(Invalid, match='pods "big" is invalid: metadata.annotations: Too long'):
        await api.client.pods("default").create(p)
    p = pod("big")
    for i in range(16):  # 1.6 MB in all, over the 1.5 MiB object limit
        p.spec.containers[0].env.add(name=f"E{i}", value="y" * 100_000)
    with pytest.raises(RequestEntityTooLarge, match='pods "big" is too large'):
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
    import base64
    forged = base64.urlsafe_b64encode(b'{"v": 1, "rv": -3, "start": "p010"}').decode()
    with pytest.raises(BadRequest, match="invalid continue token"):  # not a revision: never sent to etcd
        await pods.list(limit=10, continue_token=forged)


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
    # the first event is the initial bookmark; a later one can only come from the timed loop
    await wait_for(lambda: ("BOOKMARK", "") in seen[seen.index(("ADDED", "w")):], 30,
                   what="a timed bookmark after the ADDED event")
    await pods.delete("w", grace_period=0)
    await asyncio.wait_for(t, 10)
    assert seen[0] == ("BOOKMARK", "") and seen[-1] == ("DELETED", "w")


async def test_watch_too_old_is_gone(etcd, tmp_path):
    h = await start_apiserver(etcd, tmp_path, cache_capacity=5)
    try:
        pods = h.client.pods("default")
        first = await pods.create(pod("p0"))
        for i in range(1, 10):
            last = await pods.create(pod(f"p{i}"))
        cache = h.server.caches["pods"]
        await wait_for(lambda: cache.applied_rv >= int(last.metadata.resourceVersion), 30,
                       what="the cache to apply every create (p0 then falls out of its 5 events)")
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
        with pytest.raises(ServiceUnavailable):  # the handshake fails without a client certificate
            await c.namespaces().list()
    finally:
        await c.close()
    insecure = Client.insecure(api.address, timeout=5)
    try:
        with pytest.raises(ServiceUnavailable):
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
    await api.client.pods("default").create(pod("late"))
    try:
        # a cache that could not prove it reached the revision answers Timeout instead
        ev = await asyncio.wait_for(got, 60)
        assert (ev.type, ev.object.metadata.name) == ("ADDED", "late")
    finally:
        got.cancel()
        await stream.aclose()


def blob_pod(name, size, labels=None):
    p = pod(name, labels=labels)
    p.metadata.annotations["blob"] = "x" * size
    return p


async def raw_pages(client, **req):
    """Every List response of a continue walk, as sent (item bytes per page)."""
    from kubelab.api.v1 import api_pb2
    pages, token = [], ""
    while True:
        r = await client.call("List", api_pb2.ListRequest(resource="pods", namespace="default",
                                                          continue_token=token, **req))
        pages.append([len(a.value) for a in r.items])
        token = r.continue_token
        if not token:
            return pages
        req.pop("resourceVersion", None)  # a continuation names its revision in the token


async def test_list_responses_are_bounded_in_bytes(etcd, tmp_path):
    """With a 32 KiB budget, 12 objects of 10 KB come three to a response, with continue
    tokens, whichever way the list is served; the client library still returns them all."""
    budget = 32 << 10
    h = await start_apiserver(etcd, tmp_path, list_page_bytes=budget)
    try:
        pods = h.client.pods("default")
        for i in range(12):
            last = await pods.create(blob_pod(f"b{i:02d}", 10_000, labels={"big": "y" if i % 4 else "n"}))
        want = sorted(f"b{i:02d}" for i in range(12))
        cache = h.server.caches["pods"]
        await wait_for(lambda: cache.applied_rv >= int(last.metadata.resourceVersion), 30, what="the cache")
        for req, count in (({}, 12), ({"limit": 500}, 12), ({"labelSelector": "big=y"}, 9),
                           ({"resourceVersion": "0"}, 12),  # what the watch cache would serve whole
                           ({"resourceVersion": last.metadata.resourceVersion}, 12)):
            pages = await raw_pages(h.client, **req)
            assert len(pages) > 1, req
            assert all(sum(p) <= budget for p in pages), (req, pages)
            assert sum(len(p) for p in pages) == count, (req, pages)
        assert sorted(p.metadata.name for p in (await pods.list()).items) == want
        assert sorted(p.metadata.name for p in (await pods.list(resource_version="0")).items) == want
        assert len((await pods.list(label_selector="big=y")).items) == 9
        assert sorted(p.metadata.name for p in (await pods.list_all(page_size=5)).items) == want
        first = await pods.list(limit=5)
        assert len(first.items) == 3 and first.continue_token and first.remaining == 9
    finally:
        await h.client.close()
        await h.server.stop(0)


async def test_list_limit_is_validated_and_clamped(api, monkeypatch):
    pods = api.client.pods("default")
    for i in range(3):
        await pods.create(pod(f"l{i}"))
    with pytest.raises(BadRequest, match="limit: Invalid value: -1"):
        await pods.list(limit=-1)
    huge = await pods.list(limit=1 << 62)
    assert [p.metadata.name for p in huge.items] == ["l0", "l1", "l2"] and not huge.continue_token
    # a limit above the server's maximum is served as pages of the maximum (2 here, in-process)
    from master.apiserver import store
    monkeypatch.setattr(store, "MAX_LIST_LIMIT", 2)
    page = await pods.list(limit=1 << 62)
    assert [p.metadata.name for p in page.items] == ["l0", "l1"] and page.continue_token
    rest = await pods.list(limit=1 << 62, continue_token=page.continue_token)
    assert [p.metadata.name for p in rest.items] == ["l2"] and not rest.continue_token


async def test_event_keeps_its_ttl_lease_through_updates(api, etcd_client):
    events = api.client.events("default")
    ev = v1.Event()
    ev.metadata.name = "web.1"
    ev.involvedObject.kind, ev.involvedObject.name = "Pod", "web"
    ev.reason, ev.count = "BackOff", 1
    created = await events.create(ev)
    key = b"/registry/events/default/web.1"
    kv, _ = await etcd_client.get(key)
    assert kv.lease
    for n in (2, 3):
        created.count = n  # a repeating event: the recorder bumps the count
        created = await events.update(created)
        kv, _ = await etcd_client.get(key)
        assert kv.lease, f"update {n} wrote the event without a lease: it would never expire"
        info = await etcd_client.lease_time_to_live(kv.lease)
        assert 3600 <= info.ttl <= info.granted_ttl


async def test_delete_preconditions(api):
    pods = api.client.pods("default")
    p = await pods.create(pod("pre"))
    with pytest.raises(Conflict, match="Precondition failed: UID in precondition: nope"):
        await pods.delete("pre", uid="nope")
    p.metadata.labels["v"] = "2"
    newer = await pods.update(p)
    with pytest.raises(Conflict, match="the object has been modified"):
        await pods.delete("pre", resource_version=p.metadata.resourceVersion)
    await pods.delete("pre", uid=newer.metadata.uid, resource_version=newer.metadata.resourceVersion)
    with pytest.raises(NotFound):
        await pods.get("pre")


async def test_binding_a_pod_being_deleted_is_a_conflict(api):
    pods = api.client.pods("default")
    p = pod("doomed")
    p.metadata.finalizers.append("example.com/hold")
    await pods.create(p)
    marked = await pods.delete("doomed")
    assert marked.metadata.deletionTimestamp
    with pytest.raises(Conflict, match="is being deleted, cannot be assigned to a host"):
        await api.client.bind("default", "doomed", "n1")
    assert not (await pods.get("doomed")).spec.nodeName


async def drop_finalizers(rc, name):
    obj = await rc.get(name)
    del obj.metadata.finalizers[:]
    return await rc.update(obj)


async def test_finalizers_hold_a_deletion_until_the_last_is_removed(api):
    pods = api.client.pods("default")
    # unbound: grace 0 at once, so the finalizer is all that holds it
    p = pod("unbound")
    p.metadata.finalizers.extend(["example.com/a", "example.com/b"])
    await pods.create(p)
    marked = await pods.delete("unbound")
    assert marked.metadata.deletionTimestamp and marked.metadata.deletionGracePeriodSeconds == 0
    one = await pods.get("unbound")
    one.metadata.finalizers.remove("example.com/a")
    assert (await pods.update(one)).metadata.finalizers == ["example.com/b"]
    await drop_finalizers(pods, "unbound")
    with pytest.raises(NotFound):
        await pods.get("unbound")

    # bound: the finalizer goes first, then the kubelet's confirmation (grace 0) deletes it
    p = pod("bound")
    p.metadata.finalizers.append("example.com/a")
    await pods.create(p)
    await api.client.bind("default", "bound", "n1")
    assert (await pods.delete("bound")).metadata.deletionGracePeriodSeconds == 30
    await drop_finalizers(pods, "bound")
    assert (await pods.get("bound")).metadata.deletionTimestamp  # the kubelet has not confirmed yet
    await pods.delete("bound", grace_period=0)
    with pytest.raises(NotFound):
        await pods.get("bound")

    # bound: the kubelet confirms first, then the finalizer's removal deletes it
    p = pod("confirmed")
    p.metadata.finalizers.append("example.com/a")
    await pods.create(p)
    await api.client.bind("default", "confirmed", "n1")
    await pods.delete("confirmed")
    assert (await pods.delete("confirmed", grace_period=0)).metadata.deletionGracePeriodSeconds == 0
    await drop_finalizers(pods, "confirmed")
    with pytest.raises(NotFound):
        await pods.get("confirmed")

    # another kind
    leases = api.client.leases("default")
    lease = v1.Lease()
    lease.metadata.name = "held"
    lease.metadata.finalizers.append("example.com/a")
    await leases.create(lease)
    assert (await leases.delete("held")).metadata.deletionTimestamp
    assert (await leases.get("held")).metadata.finalizers == ["example.com/a"]
    await drop_finalizers(leases, "held")
    with pytest.raises(NotFound):
        await leases.get("held")


@pytest.fixture
async def namespace_controller(api):
    from master.controllers.namespace import NamespaceController
    client = api.new_client()
    task = asyncio.create_task(NamespaceController(client, recheck=0.2).run())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()


async def test_namespace_with_a_finalized_pod_goes_away(api, namespace_controller):
    nss, pods = api.client.namespaces(), api.client.pods("fin")
    await nss.create(namespace("fin"))
    p = pod("held", ns="fin")
    p.metadata.finalizers.append("example.com/a")
    await pods.create(p)
    await pods.create(pod("free", ns="fin"))
    await nss.delete("fin")

    async def only_held_left():
        return [p.metadata.name for p in (await pods.list()).items] == ["held"]
    await wait_for(only_held_left, 30, what="the controller to delete all but the held pod")
    assert (await pods.get("held")).metadata.deletionTimestamp
    assert (await nss.get("fin")).status.phase == "Terminating"
    await drop_finalizers(pods, "held")

    async def gone():
        try:
            await nss.get("fin")
        except NotFound:
            return True
        return False
    await wait_for(gone, 30, what='namespace "fin" to be removed')


async def test_namespace_controller_deletes_objects_left_marked(api, etcd_client, namespace_controller):
    """A pod marked for deletion with nothing holding it any more (as an older API server left
    pods whose last finalizer was removed) is deleted by the namespace controller's pass."""
    nss, pods = api.client.namespaces(), api.client.pods("left")
    await nss.create(namespace("left"))
    await pods.create(pod("stale", ns="left"))
    key = b"/registry/pods/left/stale"
    kv, _ = await etcd_client.get(key)
    stale = v1.Pod.FromString(kv.value)
    stale.metadata.deletionTimestamp = "2026-01-01T00:00:00Z"
    stale.metadata.deletionGracePeriodSeconds = 0
    await etcd_client.put(key, stale.SerializeToString())
    await nss.delete("left")

    async def gone():
        try:
            await nss.get("left")
        except NotFound:
            return True
        return False
    await wait_for(gone, 30, what='namespace "left" to be removed')


async def test_creates_racing_a_namespace_deletion_never_land_after_it(api):
    """Creates in flight while the namespace is marked: each one either fails (Forbidden) or
    was written before the marking (a lower revision); none lands in a Terminating namespace.
    (test_store.py reproduces the race deterministically with a stopped cache.)"""
    await api.client.namespaces().create(namespace("race"))
    pods = api.client.pods("race")

    async def create(i):
        try:
            return int((await pods.create(pod(f"r{i}", ns="race"))).metadata.resourceVersion)
        except Forbidden:
            return None
    creates = [asyncio.ensure_future(create(i)) for i in range(40)]  # they start as the delete awaits
    marked = await api.client.namespaces().delete("race")
    landed = [rv for rv in await asyncio.gather(*creates) if rv is not None]
    assert all(rv < int(marked.metadata.resourceVersion) for rv in landed)
    assert len((await pods.list()).items) == len(landed)
