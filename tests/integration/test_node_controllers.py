"""Node controllers end to end: pod CIDRs for every node (and what happens when the cluster
CIDR runs out), and a node whose heartbeat stops goes Ready=Unknown, gets the unreachable
taints, and its pods are evicted after their toleration seconds; the scheduler then avoids it."""
from __future__ import annotations

import ipaddress

import pytest

from kubelab.api.v1 import objects_pb2 as v1

from .conftest import launch_control_plane, stop_control_plane, stop_group, wait_for


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


@pytest.fixture(scope="module")
def small_cp(tmp_path_factory):
    # room for two nodes only: 10.250.0.0/24 and 10.250.1.0/24
    cp = launch_control_plane(tmp_path_factory.mktemp("smallcp"), "--cluster-cidr", "10.250.0.0/23")
    try:
        yield cp
    finally:
        stop_control_plane(cp)


async def test_cluster_cidr_exhausted_then_a_freed_range_is_reused(small_cp):
    first = small_cp.start("hollow-nodes", "--count", "2", "--prefix", "first-", log="first.log")
    async with small_cp.client() as c:
        async def two_cidrs():
            nodes = [n for n in (await c.nodes().list()).items if n.metadata.name.startswith("first-")]
            return len(nodes) == 2 and all(n.spec.podCIDR for n in nodes) and {n.metadata.name: n.spec.podCIDR
                                                                             for n in nodes}
        cidrs = await wait_for(two_cidrs, 60, what="podCIDRs on first-0 and first-1")
        assert sorted(cidrs.values()) == ["10.250.0.0/24", "10.250.1.0/24"], cidrs

        late = small_cp.start("hollow-nodes", "--count", "1", "--prefix", "late-", log="late.log")

        async def refused():
            evs = (await c.events("default").list(field_selector="reason=CIDRNotAvailable")).items
            return [e for e in evs if e.involvedObject.name == "late-0"]
        ev = (await wait_for(refused, 60, what="CIDRNotAvailable event for late-0"))[0]
        assert ev.type == "Warning"
        assert "all 2 /24 ranges of the cluster CIDR 10.250.0.0/23 are in use" in ev.message, ev.message
        assert (await c.nodes().get("late-0")).spec.podCIDR == ""

        # first-1 goes away for good: its range is free, and late-0 gets it
        stop_group(first)
        await c.nodes().delete("first-1")

        async def reused():
            return (await c.nodes().get("late-0")).spec.podCIDR
        assert await wait_for(reused, 90, what="late-0 given the freed range") == cidrs["first-1"]
        assert (await c.nodes().get("first-0")).spec.podCIDR == cidrs["first-0"]
    stop_group(late)


def test_bad_cluster_cidr_is_refused_naming_the_flag(small_cp):
    r = small_cp.kubelab("controller-manager", "--cluster-cidr", "10.250.0.0/33", check=False)
    assert r.returncode == 1 and "invalid --cluster-cidr" in r.stderr, (r.returncode, r.stderr)
    r = small_cp.kubelab("controller-manager", "--cluster-cidr", "10.250.0.0/23", "--node-cidr-mask-size", "16",
                         check=False)
    assert r.returncode == 1 and "invalid --node-cidr-mask-size" in r.stderr, (r.returncode, r.stderr)
    r = small_cp.kubelab("control-plane", "--data-dir", str(small_cp.data_dir / "unused"),
                         "--cluster-cidr", "banana", check=False)
    assert r.returncode == 1 and "invalid --cluster-cidr" in r.stderr, (r.returncode, r.stderr)
