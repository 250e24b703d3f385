"""The scheduler's node snapshot: per node, what its bound pods request and which host ports
they hold. Pods are added when the pod informer shows them bound, or earlier when the
scheduler "assumes" them right after choosing a node (so the next decision already counts
them, before the binding is written and seen back through the watch).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from kubelab import quantity
from kubelab.api.v1 import objects_pb2 as v1

# Pods without requests still take something when scoring (kube-scheduler's non-zero defaults).
DEFAULT_MILLI_CPU = 100
DEFAULT_MEMORY = 200 * 1024 * 1024


@dataclass(slots=True)
class PodRequest:
    cpu: int = 0  # millicores
    memory: int = 0
    other: dict = field(default_factory=dict)
    ports: tuple = ()  # (protocol, hostIP, hostPort)
    score_cpu: int = 0
    score_memory: int = 0
    tolerations: tuple = ()
    node_selector: dict = field(default_factory=dict)


def pod_request(pod: v1.Pod) -> PodRequest:
    """Sum of app containers' requests, or the largest init container's if that is larger."""
    def sums(containers):
        r: dict[str, int] = {}
        for c in containers:
            for name, q in c.resources.requests.items():
                r[name] = r.get(name, 0) + quantity.amount(name, q)
        return r
    total = sums(pod.spec.containers)
    for c in pod.spec.initContainers:
        for name, q in sums([c]).items():
            total[name] = max(total.get(name, 0), q)
    ports = tuple((p.protocol or "TCP", p.hostIP or "0.0.0.0", p.hostPort)
                  for c in pod.spec.containers for p in c.ports if p.hostPort)
    cpu, mem = total.pop("cpu", 0), total.pop("memory", 0)
    return PodRequest(cpu, mem, total, ports, cpu or DEFAULT_MILLI_CPU, mem or DEFAULT_MEMORY,
                      tuple(pod.spec.tolerations), dict(pod.spec.nodeSelector))


@dataclass
class NodeInfo:
    node: v1.Node
    alloc_cpu: int = 0
    alloc_memory: int = 0
    alloc_pods: int = 110
    alloc_other: dict = field(default_factory=dict)
    cpu: int = 0
    memory: int = 0
    score_cpu: int = 0
    score_memory: int = 0
    other: dict = field(default_factory=dict)
    ports: dict = field(default_factory=dict)  # (proto, ip, port) -> count
    pods: dict = field(default_factory=dict)  # pod key -> PodRequest
    label_counts: dict = field(default_factory=dict)  # spread key -> pods on this node

    ready: bool = False
    unschedulable: bool = False
    hard_taints: tuple = ()  # NoSchedule and NoExecute taints
    labels: dict = field(default_factory=dict)

    def set_node(self, node: v1.Node) -> None:
        """Read once per node change what every filter pass would otherwise read per pod."""
        self.node = node
        self.ready = any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)
        self.unschedulable = node.spec.unschedulable
        self.hard_taints = tuple(t for t in node.spec.taints if t.effect in ("NoSchedule", "NoExecute"))
        self.labels = dict(node.metadata.labels)
        a = node.status.allocatable or node.status.capacity
        self.alloc_cpu = quantity.milli(a["cpu"]) if "cpu" in a else 0
        self.alloc_memory = quantity.value(a["memory"]) if "memory" in a else 0
        self.alloc_pods = quantity.value(a["pods"]) if "pods" in a else 110
        self.alloc_other = {k: quantity.value(v) for k, v in a.items() if k not in ("cpu", "memory", "pods")}

    def add(self, key: str, req: PodRequest, spread: str) -> None:
        if key in self.pods:
            return
        self.pods[key] = (req, spread)
        self._apply(req, spread, 1)

    def remove(self, key: str) -> None:
        entry = self.pods.pop(key, None)
        if entry is not None:
            self._apply(entry[0], entry[1], -1)

    def _apply(self, req: PodRequest, spread: str, sign: int) -> None:
        self.cpu += sign * req.cpu
        self.memory += sign * req.memory
        self.score_cpu += sign * req.score_cpu
        self.score_memory += sign * req.score_memory
        for k, v in req.other.items():
            self.other[k] = self.other.get(k, 0) + sign * v
        for p in req.ports:
            self.ports[p] = self.ports.get(p, 0) + sign
            if self.ports[p] <= 0:
                del self.ports[p]
        self.label_counts[spread] = self.label_counts.get(spread, 0) + sign


def spread_key(pod: v1.Pod) -> str:
    """Pods that belong together (same namespace, same owner or else same labels) are spread."""
    m = pod.metadata
    owner = next((o.uid for o in m.ownerReferences if o.controller), "")
    return f"{m.namespace}/{owner or ','.join(f'{k}={v}' for k, v in sorted(m.labels.items()))}"


class Cache:
    def __init__(self):
        self.nodes: dict[str, NodeInfo] = {}
        self.pod_node: dict[str, str] = {}  # pod key -> node it is counted on
        self.assumed: set[str] = set()
        self._node_list: list[NodeInfo] | None = None

    def node_list(self) -> list[NodeInfo]:
        """Known, registered nodes in a stable order (rebuilt only when the node set changes)."""
        if self._node_list is None:
            self._node_list = [i for i in self.nodes.values() if i.node.metadata.uid]
        return self._node_list

    def set_node(self, node: v1.Node) -> None:
        info = self.nodes.get(node.metadata.name)
        if info is None or not info.node.metadata.uid:
            self._node_list = None
        if info is None:
            info = self.nodes[node.metadata.name] = NodeInfo(node)
        info.set_node(node)

    def remove_node(self, name: str) -> None:
        self.nodes.pop(name, None)
        self._node_list = None

    def add_pod(self, key: str, pod: v1.Pod, node_name: str, *, assumed: bool = False) -> None:
        prev = self.pod_node.get(key)
        if prev == node_name:
            if not assumed:
                self.assumed.discard(key)
            return
        if prev is not None:
            self.remove_pod(key)
        info = self.nodes.get(node_name)
        if info is None:
            # a pod bound to a node we do not know yet: make room for it
            info = self.nodes[node_name] = NodeInfo(v1.Node())
            info.node.metadata.name = node_name
            info.alloc_pods = 0
        info.add(key, pod_request(pod), spread_key(pod))
        self.pod_node[key] = node_name
        if assumed:
            self.assumed.add(key)
        else:
            self.assumed.discard(key)

    def remove_pod(self, key: str) -> None:
        node = self.pod_node.pop(key, None)
        self.assumed.discard(key)
        if node is not None and node in self.nodes:
            self.nodes[node].remove(key)
