"""Pure-logic tests of the scheduler's filters, scores and queue (no API server)."""
import asyncio
import random

from kubelab.api.v1 import objects_pb2 as v1
from master.scheduler import plugins
from master.scheduler.cache import Cache
from master.scheduler.queue import SchedulingQueue
from master.scheduler.scheduler import Scheduler, nodes_to_find


def node(name, cpu="1", memory="1Gi", ready=True, taints=(), labels=None, unschedulable=False):
    n = v1.Node()
    n.metadata.name, n.metadata.uid = name, "uid-" + name
    n.metadata.labels.update(labels or {})
    n.status.allocatable.update({"cpu": cpu, "memory": memory, "pods": "110"})
    n.status.conditions.add(type="Ready", status="True" if ready else "False")
    for t in taints:
        n.spec.taints.add(**t)
    n.spec.unschedulable = unschedulable
    return n


def pod(name, cpu="", labels=None, node_selector=None, tolerations=(), host_port=0):
    p = v1.Pod()
    p.metadata.name, p.metadata.namespace = name, "default"
    p.metadata.labels.update(labels or {"app": "x"})
    c = p.spec.containers.add(name="c", image="busybox")
    if cpu:
        c.resources.requests["cpu"] = cpu
    if host_port:
        c.ports.add(containerPort=80, hostPort=host_port, protocol="TCP")
    p.spec.nodeSelector.update(node_selector or {})
    for t in tolerations:
        p.spec.tolerations.add(**t)
    return p


class Bare(Scheduler):
    """A scheduler with only its cache and decision logic (no client)."""
    def __init__(self):
        self.cache, self.percentage, self.rng, self._next_start = Cache(), 0, random.Random(1), 0


def test_failed_scheduling_message_counts_reasons():
    s = Bare()
    s.cache.set_node(node("a", taints=[{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]))
    s.cache.set_node(node("b", cpu="100m"))
    s.cache.set_node(node("c", cpu="100m"))
    feasible, reasons, total = s.find_nodes(pod("p", cpu="500m"))
    assert feasible == []
    assert plugins.explain(total, reasons) == (
        "0/3 nodes are available: 2 Insufficient cpu, "
        "1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }.")


def test_filters():
    s = Bare()
    s.cache.set_node(node("notready", ready=False))
    s.cache.set_node(node("cordoned", unschedulable=True))
    s.cache.set_node(node("ssd", labels={"disk": "ssd"}))
    s.cache.set_node(node("tainted", taints=[{"key": "k", "value": "v", "effect": "NoExecute"}]))
    assert [i.node.metadata.name for i in s.find_nodes(pod("p", node_selector={"disk": "ssd"}))[0]] == ["ssd"]
    tol = [{"key": "k", "operator": "Equal", "value": "v", "effect": "NoExecute"}]
    names = {i.node.metadata.name for i in s.find_nodes(pod("p", tolerations=tol))[0]}
    assert names == {"ssd", "tainted"}


def test_host_port_conflict():
    s = Bare()
    s.cache.set_node(node("a"))
    s.cache.add_pod("default/p1", pod("p1", host_port=8080), "a")
    assert s.find_nodes(pod("p2", host_port=8080))[0] == []
    assert len(s.find_nodes(pod("p3", host_port=8081))[0]) == 1


def test_pods_spread_over_equal_nodes():
    s = Bare()
    for n in "abc":
        s.cache.set_node(node(n, cpu="4", memory="16Gi"))
    for i in range(30):
        p = pod(f"p{i}", cpu="10m")
        feasible, _, _ = s.find_nodes(p)
        s.cache.add_pod(f"default/p{i}", p, s.pick(p, feasible), assumed=True)
    counts = sorted(len(i.pods) for i in s.cache.nodes.values())
    assert counts == [10, 10, 10]


def test_nodes_to_find_matches_kube_scheduler():
    assert nodes_to_find(50) == 50
    assert nodes_to_find(1000) == 420
    assert nodes_to_find(5000) == 500


async def test_queue_parks_and_moves_back():
    q = SchedulingQueue(initial_backoff=0.01)
    q.add("a")
    assert await q.pop() == "a"
    q.park("a")
    assert len(q) == 0
    q.move_all_to_active()
    assert await asyncio.wait_for(q.pop(), 1) == "a"
