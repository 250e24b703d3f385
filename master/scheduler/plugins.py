"""Filter and score plugins, in the shape of kube-scheduler's framework.

A filter returns None when the pod fits the node, else the reason as kube-scheduler words it
("Insufficient cpu", "node(s) had untolerated taint {k: v}"); the reasons of all nodes are
counted into the FailedScheduling message. A score returns 0..100; the best sum wins.
"""
from __future__ import annotations

from typing import Callable

from kubelab.api.tolerations import tolerates
from kubelab.api.v1 import objects_pb2 as v1

from .cache import NodeInfo, PodRequest

Filter = Callable[[v1.Pod, PodRequest, NodeInfo], "str | None"]


def node_ready(pod, req, info: NodeInfo) -> str | None:
    return None if info.ready else "node(s) were not ready"


UNSCHEDULABLE_TAINT = v1.Taint(key="node.kubernetes.io/unschedulable", effect="NoSchedule")


def node_unschedulable(pod, req, info: NodeInfo) -> str | None:
    if not info.unschedulable or any(tolerates(t, UNSCHEDULABLE_TAINT) for t in req.tolerations):
        return None
    return "node(s) were unschedulable"


def taint_toleration(pod, req, info: NodeInfo) -> str | None:
    for taint in info.hard_taints:
        if not any(tolerates(t, taint) for t in req.tolerations):
            return f"node(s) had untolerated taint {{{taint.key}: {taint.value}}}"
    return None


def node_selector(pod, req, info: NodeInfo) -> str | None:
    labels = info.labels
    for k, v in req.node_selector.items():
        if labels.get(k) != v:
            return "node(s) didn't match Pod's node affinity/selector"
    return None


def node_name(pod, req, info: NodeInfo) -> str | None:
    return None  # pods with spec.nodeName never reach the scheduler


def resources_fit(pod, req: PodRequest, info: NodeInfo) -> str | list | None:
    missing = []
    if len(info.pods) + 1 > info.alloc_pods:
        missing.append("Too many pods")
    if req.cpu and info.cpu + req.cpu > info.alloc_cpu:
        missing.append("Insufficient cpu")
    if req.memory and info.memory + req.memory > info.alloc_memory:
        missing.append("Insufficient memory")
    for k, v in req.other.items():
        if v and info.other.get(k, 0) + v > info.alloc_other.get(k, 0):
            missing.append(f"Insufficient {k}")
    return missing or None


def node_ports(pod, req: PodRequest, info: NodeInfo) -> str | None:
    if not req.ports or not info.ports:
        return None
    for proto, ip, port in req.ports:
        for (p2, ip2, port2) in info.ports:
            if p2 == proto and port2 == port and (ip == ip2 or "0.0.0.0" in (ip, ip2)):
                return "node(s) didn't have free ports for the requested pod ports"
    return None


FILTERS: tuple[Filter, ...] = (node_ready, node_unschedulable, taint_toleration, node_selector,
                               node_ports, resources_fit)


def fits(pod, req: PodRequest, info: NodeInfo) -> bool:
    """All FILTERS at once, for the common case: cheap checks on precomputed fields. The
    individual filters run only for nodes that fail, to say why."""
    if not info.ready or info.unschedulable or info.hard_taints or req.ports:
        return not any(f(pod, req, info) for f in FILTERS)
    if req.node_selector:
        labels = info.labels
        for k, v in req.node_selector.items():
            if labels.get(k) != v:
                return False
    return (len(info.pods) < info.alloc_pods
            and (not req.cpu or info.cpu + req.cpu <= info.alloc_cpu)
            and (not req.memory or info.memory + req.memory <= info.alloc_memory)
            and (not req.other or resources_fit(pod, req, info) is None))


def why_not(pod, req: PodRequest, info: NodeInfo) -> list[str]:
    for f in FILTERS:
        r = f(pod, req, info)
        if r:
            return r if isinstance(r, list) else [r]
    return []


def least_allocated(pod, req: PodRequest, info: NodeInfo) -> float:
    ac, am = info.alloc_cpu, info.alloc_memory
    c = (ac - info.score_cpu - req.score_cpu) / ac if ac > 0 else 0.0
    m = (am - info.score_memory - req.score_memory) / am if am > 0 else 0.0
    return 50.0 * ((c if c > 0 else 0.0) + (m if m > 0 else 0.0))


def spread_scores(spread: str, infos: list[NodeInfo]) -> list[float]:
    """Fewer pods of the same group on a node is better (selector spreading)."""
    counts = [i.label_counts.get(spread, 0) for i in infos]
    top = max(counts) if counts else 0
    if top == 0:
        return [100.0] * len(infos)
    return [100.0 * (top - c) / top for c in counts]


def explain(total: int, reasons: dict[str, int]) -> str:
    """kube-scheduler's FailedScheduling message: `0/3 nodes are available: 2 Insufficient cpu.`"""
    if total == 0:
        return "0/0 nodes are available: no nodes available to schedule pods."
    parts = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items()))
    return f"0/{total} nodes are available: {parts}."
