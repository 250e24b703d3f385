"""The scheduler end to end: real control plane processes, hollow nodes, pods through the API."""
from __future__ import annotations

import asyncio
import collections

import pytest

from kubelab.api.v1 import objects_pb2 as v1
from kubelab.errors import NotFound

from .conftest import wait_for


def pod(name, ns, cpu="10m", memory="16Mi", labels=None, tolerations=()):
    p = v1.Pod()
    p.metadata.name, p.metadata.namespace = name, ns
    p.metadata.labels.update(labels or {"app": "many"})
    c = p.spec.containers.add(name="c", image="busybox")
    if cpu:
        c.resources.requests["cpu"] = cpu
    if memory:
        c.resources.requests["memory"] = memory
    for t in tolerations:
        p.spec.tolerations.add(**t)
    return p


@pytest.fixture(scope="module")
def hollow(control_plane):
    control_plane.start("hollow-nodes", "--count", "3", "--cpu", "2", log="hollow.log")
    return control_plane


async def test_pending_until_nodes_then_scheduled_and_spread(control_plane, request):
    async with control_plane.client() as c:
        # first in the module: the control plane has no nodes yet (the hollow fixture starts them)
        assert (await c.nodes().list()).items == []
        ns = v1.Namespace()
        ns.metadata.name = "spread"
        await c.namespaces().create(ns)
        names = [f"p{i}" for i in range(60)]
        await asyncio.gather(*(c.pods("spread").create(pod(n, "spread")) for n in names))

        async def all_pending():
            items = (await c.pods("spread").list()).items
            return len(items) == 60 and all(
                p.status.phase == "Pending" and not p.spec.nodeName and any(
                    x.type == "PodScheduled" and x.status == "False" and x.reason == "Unschedulable"
                    and x.message.startswith("0/0 nodes are available") for x in p.status.conditions)
                for p in items)
        await wait_for(all_pending, 60, what="60 pods Pending, PodScheduled=False with no nodes")

        request.getfixturevalue("hollow")  # now the nodes come
        await wait_for(lambda: _ready_nodes(c, 3), 60, what="3 ready hollow nodes")

        async def all_running():
            items = (await c.pods("spread").list()).items
            return len(items) == 60 and all(p.status.phase == "Running" for p in items) and items
        items = await wait_for(all_running, 60, what="60 pods Running")
        per_node = collections.Counter(p.spec.nodeName for p in items)
        assert len(per_node) == 3 and min(per_node.values()) >= 15, per_node
        # each pod bound once, and its Scheduled event names the node it is on
        node_of = {p.metadata.name: p.spec.nodeName for p in items}

        async def scheduled_events():
            evs = (await c.events("spread").list(field_selector="reason=Scheduled")).items
            return len({e.involvedObject.name for e in evs}) == 60 and evs
        events = await wait_for(scheduled_events, 30, what="a Scheduled event for every pod")
        assert sorted(e.involvedObject.name for e in events) == sorted(names)
        for e in events:
            assert e.count == 1, (e.involvedObject.name, e.count)
            assert e.message == f"Successfully assigned spread/{e.involvedObject.name} to " \
                                f"{node_of[e.involvedObject.name]}", e.message


async def test_unschedulable_reason_and_retry(control_plane, hollow):
    async with control_plane.client() as c:
        ns = v1.Namespace()
        ns.metadata.name = "big"
        await c.namespaces().create(ns)
        await wait_for(lambda: _ready_nodes(c, 3), 60, what="3 ready hollow nodes")
        await c.pods("big").create(pod("huge", "big", cpu="64"))

        async def reason():
            p = await c.pods("big").get("huge")
            return next((x for x in p.status.conditions if x.type == "PodScheduled" and x.status == "False"), None)
        cond = await wait_for(reason, 30, what="PodScheduled=False")
        assert cond.reason == "Unschedulable"
        assert cond.message.startswith("0/3 nodes are available: 3 Insufficient cpu"), cond.message
        ev = await wait_for(lambda: _events(c, "big", "FailedScheduling"), 30, what="FailedScheduling event")
        assert "Insufficient cpu" in ev[0].message
        # a bigger node appears: the parked pod is retried and lands there
        control_plane.start("hollow-nodes", "--count", "1", "--prefix", "big-node-", "--cpu", "128",
                            log="big-node.log")

        async def placed():
            return (await c.pods("big").get("huge")).spec.nodeName
        assert await wait_for(placed, 60, what="huge pod scheduled") == "big-node-0"


async def test_two_schedulers_one_leader(control_plane, hollow):
    async with control_plane.client() as c:
        async def held():
            lease = await c.leases("kube-system").get("kube-scheduler")
            return lease.spec.holderIdentity and lease
        lease = await wait_for(held, 60, what="the control plane's scheduler holding the lease")
    leader = lease.spec.holderIdentity
    second = control_plane.start("scheduler", "--identity", "second-scheduler", log="scheduler2.log")
    second_log = control_plane.data_dir / "scheduler2.log"
    try:
        async with control_plane.client() as c:
            # the second one is up and campaigning before any pod arrives: it has read the lease
            await wait_for(lambda: f"second-scheduler sees the leader is {leader}" in second_log.read_text(),
                           60, what="the second scheduler campaigning")
            ns = v1.Namespace()
            ns.metadata.name = "two"
            await c.namespaces().create(ns)
            names = [f"p{i}" for i in range(20)]
            await asyncio.gather(*(c.pods("two").create(pod(n, "two")) for n in names))

            async def bound():
                items = (await c.pods("two").list()).items
                return len(items) == 20 and all(p.spec.nodeName for p in items) and items
            await wait_for(bound, 60, what="20 pods bound")

            async def scheduled():
                evs = (await c.events("two").list(field_selector="reason=Scheduled")).items
                return len({e.involvedObject.name for e in evs}) == 20 and evs
            events = await wait_for(scheduled, 30, what="a Scheduled event for every pod")
            # every binding was made by the leader (events name the instance), none by the second
            assert sorted(e.involvedObject.name for e in events) == sorted(names)
            assert {e.source.host for e in events} == {leader}, {e.source.host for e in events}
            after = await c.leases("kube-system").get("kube-scheduler")
            assert after.spec.holderIdentity == leader
            assert after.spec.leaseTransitions == lease.spec.leaseTransitions
            assert "second-scheduler started leading" not in second_log.read_text()
    finally:
        second.terminate()
        second.wait(10)


async def test_namespace_deletion_removes_content(control_plane, hollow):
    async with control_plane.client() as c:
        ns = v1.Namespace()
        ns.metadata.name = "gone"
        await c.namespaces().create(ns)
        await wait_for(lambda: _ready_nodes(c, 3), 60, what="3 ready hollow nodes")
        await asyncio.gather(*(c.pods("gone").create(pod(f"p{i}", "gone")) for i in range(10)))
        await wait_for(lambda: _running(c, "gone", 10), 60, what="10 pods running")
        await c.namespaces().delete("gone")

        async def vanished():
            try:
                await c.namespaces().get("gone")
                return False
            except NotFound:
                return True
        await wait_for(vanished, 60, what="namespace removed")
        assert (await c.pods("gone").list()).items == []


async def _ready_nodes(c, n):
    nodes = (await c.nodes().list()).items
    ready = [x for x in nodes if any(k.type == "Ready" and k.status == "True" for k in x.status.conditions)]
    return len(ready) >= n


async def _running(c, ns, n):
    items = (await c.pods(ns).list()).items
    return len([p for p in items if p.status.phase == "Running"]) >= n


async def _events(c, ns, reason):
    return (await c.events(ns).list(field_selector=f"reason={reason}")).items
