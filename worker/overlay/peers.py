"""What the overlay should look like, as pure functions of the Node list (no kernel, no API):
the annotations a node publishes about its VTEP (flannel's names, so the Node reads as it does
in a flannel cluster), the entries every other node therefore needs, and the plan that turns
the entries a device holds into the wanted ones. The agent feeds these from its informer and
from netlink; unit tests feed them by hand.

As flannel's VXLAN backend: the VTEP address of a node is the network address of its podCIDR
(10.244.1.0 for 10.244.1.0/24), held as a /32 by its flannel.1; a peer's /24 is routed via its
VTEP address onlink on flannel.1, that address has a permanent neighbour entry with the peer's
VTEP MAC, and that MAC has an FDB entry pointing at the peer's underlay (public) IP.
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from kubelab.api.v1 import objects_pb2 as v1

PREFIX = "flannel.alpha.coreos.com/"
BACKEND_TYPE = PREFIX + "backend-type"
BACKEND_DATA = PREFIX + "backend-data"
PUBLIC_IP = PREFIX + "public-ip"
SUBNET_MANAGER = PREFIX + "kube-subnet-manager"
VXLAN = "vxlan"


class InvalidPeer(ValueError):
    """A Node whose overlay annotations or podCIDR cannot be used; the message names the field."""


@dataclass(frozen=True, order=True)
class Route:
    dst: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address
    onlink: bool = True
    metric: int = 0


@dataclass(frozen=True, order=True)
class Neigh:
    ip: ipaddress.IPv4Address
    mac: str
    permanent: bool = True


@dataclass(frozen=True, order=True)
class Fdb:
    mac: str
    dst: ipaddress.IPv4Address


@dataclass(frozen=True)
class Peer:
    node: str
    subnet: ipaddress.IPv4Network
    vtep_mac: str
    public_ip: ipaddress.IPv4Address

    @property
    def vtep_ip(self) -> ipaddress.IPv4Address:
        return vtep_ip(self.subnet)


@dataclass
class Entries:
    """Entries on the VXLAN device. Lists, not sets: what the kernel holds may repeat a key
    (two routes to one /24 at different metrics, one MAC with two FDB destinations)."""
    routes: list[Route] = field(default_factory=list)
    neighs: list[Neigh] = field(default_factory=list)
    fdbs: list[Fdb] = field(default_factory=list)

    def counts(self) -> tuple[int, int, int]:
        return len(self.routes), len(self.neighs), len(self.fdbs)


@dataclass
class Plan:
    """Deletes run before adds, so that replacing an entry (a peer's new MAC or underlay IP)
    never leaves the old one next to the new one."""
    delete: Entries = field(default_factory=Entries)
    add: Entries = field(default_factory=Entries)

    def empty(self) -> bool:
        return not any(self.delete.counts()) and not any(self.add.counts())


def vtep_ip(subnet: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    return subnet.network_address


def vtep_mac(node_name: str) -> str:
    """A fixed, locally administered MAC per node: a recreated flannel.1 (after a reboot or an
    incompatible change) keeps its MAC, so the other nodes' entries for it stay right."""
    h = hashlib.sha256(f"kubelab-vtep/{node_name}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *h[:5]))


def normalize_mac(mac: str) -> str:
    parts = mac.strip().lower().replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdef" for c in p) for p in parts):
        raise ValueError(f"{mac!r} is not a MAC address")
    if int(parts[0], 16) & 1:
        raise ValueError(f"{mac!r} is a multicast MAC address")
    return ":".join(parts)


def own_annotations(mac: str, public_ip: str, vni: int) -> dict[str, str]:
    """What this node publishes on its Node, as flannel writes it."""
    return {BACKEND_TYPE: VXLAN,
            BACKEND_DATA: json.dumps({"VNI": vni, "VtepMAC": mac}, separators=(",", ":")),
            PUBLIC_IP: public_ip,
            SUBNET_MANAGER: "true"}


def node_pod_cidr(node: v1.Node, cluster_cidr: ipaddress.IPv4Network) -> ipaddress.IPv4Network:
    cidr = node.spec.podCIDR or (node.spec.podCIDRs[0] if node.spec.podCIDRs else "")
    if not cidr:
        raise InvalidPeer(f'nodes "{node.metadata.name}": spec.podCIDR: Required value (assigned by the '
                          "controller manager's node IPAM controller)")
    try:
        subnet = ipaddress.IPv4Network(cidr)
    except ValueError:
        raise InvalidPeer(f'nodes "{node.metadata.name}": spec.podCIDR: Invalid value: "{cidr}": '
                          "must be an IPv4 CIDR") from None
    if not subnet.subnet_of(cluster_cidr):
        raise InvalidPeer(f'nodes "{node.metadata.name}": spec.podCIDR: Invalid value: "{cidr}": '
                          f"not inside the cluster CIDR {cluster_cidr}")
    return subnet


def has_overlay(node: v1.Node) -> bool:
    """True once the node's agent has published its VTEP (before that it is not a peer yet)."""
    return BACKEND_DATA in node.metadata.annotations or PUBLIC_IP in node.metadata.annotations


def peer_from_node(node: v1.Node, *, vni: int, cluster_cidr: ipaddress.IPv4Network) -> Peer:
    """The VTEP a Node announces; InvalidPeer names the annotation or field that is wrong."""
    name, ann = node.metadata.name, node.metadata.annotations
    where = f'nodes "{name}": metadata.annotations[{{}}]'
    backend = ann.get(BACKEND_TYPE, "")
    if backend != VXLAN:
        raise InvalidPeer(f'{where.format(BACKEND_TYPE)}: Unsupported value: "{backend}": supported values: "vxlan"')
    raw = ann.get(BACKEND_DATA, "")
    try:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        raise InvalidPeer(f'{where.format(BACKEND_DATA)}: Invalid value: {raw!r}: {e}') from None
    if "VNI" in data and data["VNI"] != vni:
        raise InvalidPeer(f'{where.format(BACKEND_DATA)}: Invalid value: VNI {data["VNI"]!r}: this node uses VNI {vni}')
    try:
        mac = normalize_mac(str(data.get("VtepMAC", "")))
    except ValueError as e:
        raise InvalidPeer(f"{where.format(BACKEND_DATA)}: Invalid value: VtepMAC: {e}") from None
    raw_ip = ann.get(PUBLIC_IP, "")
    try:
        public_ip = ipaddress.IPv4Address(raw_ip)
    except ValueError:
        raise InvalidPeer(f'{where.format(PUBLIC_IP)}: Invalid value: "{raw_ip}": must be an IPv4 address') from None
    return Peer(name, node_pod_cidr(node, cluster_cidr), mac, public_ip)


def desired_peers(nodes: Iterable[v1.Node], self_name: str, *, vni: int,
                  cluster_cidr: ipaddress.IPv4Network) -> tuple[list[Peer], dict[str, str]]:
    """The peers to program, and for each Node left out a reason (bad annotations, a podCIDR
    that overlaps this node's or another peer's). Nodes that have not published a VTEP yet are
    left out silently: their agent has not run. Nodes being deleted are left out too."""
    mine: ipaddress.IPv4Network | None = None
    candidates: list[Peer] = []
    problems: dict[str, str] = {}
    for node in sorted(nodes, key=lambda n: n.metadata.name):
        name = node.metadata.name
        if name == self_name:
            try:
                mine = node_pod_cidr(node, cluster_cidr)
            except InvalidPeer:
                pass
            continue
        if node.metadata.deletionTimestamp or not has_overlay(node):
            continue
        try:
            candidates.append(peer_from_node(node, vni=vni, cluster_cidr=cluster_cidr))
        except InvalidPeer as e:
            problems[name] = str(e)
    peers: list[Peer] = []
    for p in candidates:
        clash = [q.node for q in candidates if q is not p and q.subnet.overlaps(p.subnet)]
        if mine is not None and mine.overlaps(p.subnet):
            clash.insert(0, self_name)
        if clash:
            problems[p.node] = (f'nodes "{p.node}": spec.podCIDR: Invalid value: "{p.subnet}": overlaps '
                                f"the podCIDR of node {', '.join(clash)}")
            continue
        peers.append(p)
    return peers, problems


def entries_for(peers: Iterable[Peer]) -> Entries:
    e = Entries()
    for p in peers:
        e.routes.append(Route(p.subnet, p.vtep_ip))
        e.neighs.append(Neigh(p.vtep_ip, p.vtep_mac))
        e.fdbs.append(Fdb(p.vtep_mac, p.public_ip))
    return e


def _split(want: list, have: list) -> tuple[list, list]:
    """(to delete, to add): every entry held but not wanted, or held more than once, goes;
    every wanted entry not held comes."""
    wanted, seen, delete = set(want), set(), []
    for h in have:
        if h not in wanted or h in seen:
            delete.append(h)
        seen.add(h)
    return delete, [w for w in dict.fromkeys(want) if w not in seen]


def plan(want: Entries, have: Entries) -> Plan:
    p = Plan()
    p.delete.routes, p.add.routes = _split(want.routes, have.routes)
    p.delete.neighs, p.add.neighs = _split(want.neighs, have.neighs)
    p.delete.fdbs, p.add.fdbs = _split(want.fdbs, have.fdbs)
    return p
