"""Node controllers end to end: pod CIDRs for every node, and a node whose heartbeat stops
goes Ready=Unknown, gets the unreachable taints, and its pods are evicted after their
toleration seconds; the scheduler then avoids it."""
from __future__ import annotations

import ipaddress

import pytest

from kubelab.api.v1 import objects_pb2 as v1

from .conftest import launch_control_plane, stop_control_plane, wait_for


@pytest.fixture(scope="module")
def fast_cp(tmp_path_factory):
    cp = launch_control_plane(tmp_path_factory.mktemp("fastcp"), "--node-monitor-grace-period", "4",
                              "--node-monitor-period", "1", "--default-toleration-seconds", "3")
    try:
        yield cp
    finally:
        stop_control_plane(cp)


async def test_pod_cidrs_and_unreachable_node(fast_cp):
    stable = fast_cp.start("hollow-nodes", "--count", "2", "--prefix", "stable-", "--renew-interval", "1",
                           log="stable.log")
    doomed = fast_cp.start("hollow-nodes", "--count", "1", "--prefix", "doomed-", "--renew-interval", "1",
                           log="doomed.log")
    async with fast_cp.client() as c:
        async def cidrs():
            nodes = (await c.nodes().list()).items
            return len(nodes) == 3 and all(n.spec.podCIDR for n in nodes) and nodes
        nodes = await wait_for(cidrs, 60, what="podCIDR on 3 nodes")
        nets = [ipaddress.ip_network(n.spec.podCIDR) for n in nodes]
        assert len(set(nets)) == 3 and all(n.prefixlen == 24 and n.subnet_of(ipaddress.ip_network("10.244.0.0/16"))
                                           for n in nets)

        p = v1.Pod()
        p.metadata.name = "victim"
        p.spec.nodeSelector["kubernetes.io/hostname"] = "doomed-0"
        p.spec.containers.add(name="c", image="busybox")
        await c.pods("default").create(p)
        await wait_for(lambda: _phase(c, "victim", "Running"), 30, what="victim Running on doomed-0")

        doomed.terminate()
        doomed.wait(10)

        async def unknown():
            n = await c.nodes().get("doomed-0")
            ready = next(x for x in n.status.conditions if x.type == "Ready")
            keys = {(t.key, t.effect) for t in n.spec.taints}
            return ready.status == "Unknown" and ("node.kubernetes.io/unreachable", "NoExecute") in keys
        await wait_for(unknown, 30, what="doomed-0 Ready=Unknown and tainted")
        events = (await c.events("default").list(field_selector="reason=NodeNotReady")).items
        assert any(e.involvedObject.name == "doomed-0" for e in events)

        async def evicted():
            return bool((await c.pods("default").get("victim")).metadata.deletionTimestamp)
        await wait_for(evicted, 30, what="victim evicted after 3 s of toleration")
        for n in ("stable-0", "stable-1"):
            assert not (await c.nodes().get(n)).spec.taints

        q = v1.Pod()
        q.metadata.name = "newcomer"
        q.spec.nodeSelector["kubernetes.io/hostname"] = "doomed-0"
        q.spec.containers.add(name="c", image="busybox")
        await c.pods("default").create(q)

        async def refused():
            pod = await c.pods("default").get("newcomer")
            cond = next((x for x in pod.status.conditions if x.type == "PodScheduled"), None)
            return cond is not None and cond.status == "False" and cond.message
        msg = await wait_for(refused, 30, what="newcomer unschedulable")
        assert "untolerated taint {node.kubernetes.io/unreachable: }" in msg or "not ready" in msg
    stable.terminate()


async def _phase(c, name, phase):
    return (await c.pods("default").get(name)).status.phase == phase
