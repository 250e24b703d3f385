"""The registry Store against a real etcd, with real watch caches that a test can stop, so that
a cache that is behind etcd (the window every cache-served read lives with) is reproduced on
purpose instead of by luck: writes that trust the cache must still be decided by etcd."""
from __future__ import annotations

import pytest

from kubelab.api import kinds
from kubelab.api.v1 import objects_pb2 as v1
from kubelab.errors import Conflict, Forbidden, NotFound
from master.apiserver.store import Store
from master.apiserver.watchcache import WatchCache

from .conftest import wait_for


def pod(name, ns="default"):
    p = v1.Pod()
    p.metadata.name, p.metadata.namespace = name, ns
    p.spec.containers.add(name="c", image="busybox")
    return p


def namespace(name):
    ns = v1.Namespace()
    ns.metadata.name = name
    return ns


@pytest.fixture
async def stores(etcd_client):
    """Stores as the API server wires them (cached), plus uncached ones writing past the caches."""
    caches = {r: WatchCache(kinds.BY_RESOURCE[r], etcd_client, f"/registry/{r}/") for r in ("namespaces", "pods")}
    for c in caches.values():
        await c.start()
    try:
        ns = Store(kinds.BY_RESOURCE["namespaces"], etcd_client, caches["namespaces"])
        direct_ns = Store(kinds.BY_RESOURCE["namespaces"], etcd_client, None)
        yield {"caches": caches, "namespaces": ns, "direct_namespaces": direct_ns,
               "pods": Store(kinds.BY_RESOURCE["pods"], etcd_client, caches["pods"], ns),
               "direct_pods": Store(kinds.BY_RESOURCE["pods"], etcd_client, None)}
    finally:
        for c in caches.values():
            await c.stop()


async def cached(cache: WatchCache, namespace: str, name: str, rv: int):
    await wait_for(lambda: (e := cache.get(namespace, name)) is not None and e.rv == rv, 10,
                   what=f"{name} at {rv} in the cache")


async def test_noop_update_through_a_stale_cache_is_decided_by_etcd(stores):
    await stores["namespaces"].create("", namespace("dev"))
    pods, direct = stores["pods"], stores["direct_pods"]
    created = v1.Pod.FromString(await pods.create("dev", pod("p", "dev")))
    rv = int(created.metadata.resourceVersion)
    await cached(stores["caches"]["pods"], "dev", "p", rv)
    await stores["caches"]["pods"].stop()  # from here the cache is behind etcd

    moved = v1.Pod()
    moved.CopyFrom(created)
    moved.metadata.labels["moved"] = "yes"
    await direct.update("dev", moved)
    same = v1.Pod()
    same.CopyFrom(created)  # unchanged, at the version the cache still holds
    with pytest.raises(Conflict, match="the object has been modified"):
        await pods.update("dev", same)

    await direct.delete("dev", "p")
    with pytest.raises(NotFound, match='pods "p" not found'):
        await pods.update("dev", same)


async def test_create_in_a_namespace_marked_since_the_cache_saw_it_is_forbidden(stores):
    await stores["namespaces"].create("", namespace("racing"))
    seen = v1.Namespace.FromString(await stores["direct_namespaces"].get("", "racing"))
    await cached(stores["caches"]["namespaces"], "", "racing", int(seen.metadata.resourceVersion))
    await stores["caches"]["namespaces"].stop()  # the cache still says Active from here on

    await stores["direct_namespaces"].delete("", "racing")  # Terminating in etcd
    with pytest.raises(Forbidden, match="because it is being terminated"):
        await stores["pods"].create("racing", pod("late", "racing"))
    items, _, _, _ = await stores["direct_pods"].list("racing", "", "")
    assert items == []

    # removed altogether (finalized) while the cache still has it Active
    ns = v1.Namespace.FromString(await stores["direct_namespaces"].get("", "racing"))
    del ns.spec.finalizers[:]
    await stores["direct_namespaces"].update("", ns)
    with pytest.raises(NotFound, match='namespaces "racing" not found'):
        await stores["pods"].create("racing", pod("later", "racing"))
