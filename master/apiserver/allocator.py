"""ClusterIP and NodePort allocation for Services (Kubernetes' pkg/registry/core/service/ipallocator
and portallocator), called by the generic Store around its etcd transactions.

Why one etcd key per allocated IP or port, and not a bitmap object with compare-and-swap (the
RangeAllocation Kubernetes used until its IPAddress objects, which are also one object per IP):
the key, /registry/ipaddresses/<ip> or /registry/servicenodeports/<port>, is created in the same
transaction as the Service itself, guarded by create_revision == 0, and deleted in the same
transaction that deletes the Service. So an allocation and its Service exist together or not at
all: a failed create leaks nothing and needs no repair loop, and two racing creates of the same
address cannot both commit (the loser's guard fails, it picks again, or, when it asked for that
address, is refused with the field named). A bitmap would serialise every create on one key.

Picking: random start, then a linear probe, within the upper part of the range first; the lower
"static band" (Kubernetes' KEP-3070/3668: 1/16 of the range, 16 to 256 addresses; 1/32 of the
ports, 16 to 128) is used only when the rest is full, so addresses people pick by hand stay free.
The first address (the `kubernetes` Service) and the tenth (kube-dns) are never picked at all,
only given when asked for. Network and broadcast addresses are not in the range.
"""
from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass, field

from kubelab.api.v1 import objects_pb2 as v1
from kubelab.errors import ApiError, Invalid
from kubelab.etcd.client import Compare, EtcdClient, Op
from kubelab.etcd.txn import prefix_end

IP_PREFIX = b"/registry/ipaddresses/"
PORT_PREFIX = b"/registry/servicenodeports/"
DEFAULT_SERVICE_CIDR = "10.96.0.0/12"
DEFAULT_NODE_PORTS = "30000-32767"
RESERVED_OFFSETS = (1, 10)  # kubernetes, kube-dns: only when asked for


class RangeFull(ApiError):
    """Nothing left to allocate: a 500 in Kubernetes (InternalError), as here."""


class Range:
    """Offsets lo..hi (inclusive) of some range, and how to pick a free one."""

    def __init__(self, lo: int, hi: int, band: int, reserved: tuple[int, ...] = ()):
        self.lo, self.hi, self.band, self.reserved = lo, hi, band, frozenset(reserved)

    def __contains__(self, off: int) -> bool:
        return self.lo <= off <= self.hi

    def pick(self, taken: set[int]) -> int | None:
        """A free offset, from the dynamic part (above the static band) first; None when full."""
        for lo, hi in ((self.lo + self.band, self.hi), (self.lo, min(self.lo + self.band - 1, self.hi))):
            if lo > hi:
                continue
            n = hi - lo + 1
            start = random.randrange(n)
            for i in range(n):
                off = lo + (start + i) % n
                if off not in taken and off not in self.reserved:
                    return off
        return None


class IPRange:
    """--service-cluster-ip-range: an IPv4 CIDR, /12 (Kubernetes' largest) to /28."""

    def __init__(self, cidr: str):
        try:
            net = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ValueError(f'--service-cluster-ip-range "{cidr}": not a CIDR (e.g. 10.96.0.0/12)') from None
        if net.version != 4:
            raise ValueError(f'--service-cluster-ip-range "{cidr}": only IPv4 is supported')
        if not 12 <= net.prefixlen <= 28:
            raise ValueError(f'--service-cluster-ip-range "{cidr}": the mask must be between /12 and /28')
        self.net = net
        size = net.num_addresses - 2  # without network and broadcast
        self.range = Range(1, size, min(max(16, size // 16), 256), RESERVED_OFFSETS)

    def __str__(self) -> str:
        return str(self.net)

    def address(self, n: int) -> str:
        """The n-th address of the range (1: the `kubernetes` Service's, 10: kube-dns')."""
        return str(self.net.network_address + n)

    def offset(self, ip: str) -> int | None:
        try:
            a = ipaddress.IPv4Address(ip)
        except ValueError:
            return None
        off = int(a) - int(self.net.network_address)
        return off if off in self.range else None


class PortRange:
    """--service-node-port-range: FROM-TO, inclusive."""

    def __init__(self, spec: str):
        try:
            lo, _, hi = spec.partition("-")
            self.lo, self.hi = int(lo), int(hi or lo)
        except ValueError:
            raise ValueError(f'--service-node-port-range "{spec}": must be FROM-TO, e.g. 30000-32767') from None
        if not 1 <= self.lo <= self.hi <= 65535:
            raise ValueError(f'--service-node-port-range "{spec}": must be FROM-TO within 1-65535, FROM <= TO')
        size = self.hi - self.lo + 1
        self.range = Range(self.lo, self.hi, min(max(16, size // 32), 128))

    def __str__(self) -> str:
        return f"{self.lo}-{self.hi}"


def ip_key(ip: str) -> bytes:
    return IP_PREFIX + ip.encode()


def port_key(port: int) -> bytes:
    return PORT_PREFIX + str(port).encode()


@dataclass
class Plan:
    """What one write allocates and releases, as parts of the Store's transaction."""
    owner: bytes = b""
    create: dict[bytes, tuple[str, str]] = field(default_factory=dict)  # key -> (field, value) asked for
    release: list[bytes] = field(default_factory=list)
    resource: str = "services"
    name: str = ""

    def guards(self) -> list:
        return [Compare.create_revision(k, "==", 0) for k in self.create]

    def ops(self) -> list:
        return [Op.put(k, self.owner) for k in self.create] + [Op.delete(k) for k in self.release]

    def reads(self) -> list:
        return [Op.get(k, keys_only=True) for k in self.create]

    def lost(self, responses: list) -> bool:
        """After a failed transaction, given the results of reads(): True when one of our picks
        was taken meanwhile (pick again); Invalid when one that was asked for is taken."""
        lost = False
        for (key, (path, value)), r in zip(self.create.items(), responses):
            if not r.kvs:
                continue
            if path:
                kind = "IP" if key.startswith(IP_PREFIX) else "port"
                shown = f'"{value}"' if kind == "IP" else value
                raise Invalid(f'{self.resource} "{self.name}" is invalid: {path}: Invalid value: {shown}: '
                              f"provided {kind} is already allocated")
            lost = True
        return lost


def node_ports(svc: v1.Service) -> set[int]:
    return {p.nodePort for p in svc.spec.ports if p.nodePort}


def cluster_ips(svc: v1.Service) -> list[str]:
    return [ip for ip in svc.spec.clusterIPs if ip and ip != "None"]


class Allocator:
    def __init__(self, etcd: EtcdClient, ips: IPRange, ports: PortRange):
        self.etcd, self.ips, self.ports = etcd, ips, ports

    async def _taken(self, prefix: bytes) -> set[int]:
        r = await self.etcd.range(prefix, range_end=prefix_end(prefix), keys_only=True)
        out = set()
        for kv in r.kvs:
            tail = kv.key[len(prefix):].decode()
            if prefix == IP_PREFIX:
                off = self.ips.offset(tail)
                if off is not None:
                    out.add(off)
            elif tail.isdigit():
                out.add(int(tail))
        return out

    async def plan_create(self, svc: v1.Service) -> Plan:
        """Fill in the Service's clusterIP(s) and nodePorts (validated already), and say which
        keys the create must make; Invalid for an asked-for value outside the range."""
        m = svc.metadata
        plan = Plan(owner=f"services/{m.namespace}/{m.name}".encode(), name=m.name)
        s = svc.spec
        if s.clusterIP != "None":
            if s.clusterIP:
                if self.ips.offset(s.clusterIP) is None:
                    raise self._invalid(svc, "spec.clusterIPs", f'"{s.clusterIP}"',
                                        f"failed to allocate IP {s.clusterIP}: provided IP is not in the "
                                        f"valid range. The range of valid IPs is {self.ips}")
                plan.create[ip_key(s.clusterIP)] = ("spec.clusterIPs", s.clusterIP)
            else:
                off = self.ips.range.pick(await self._taken(IP_PREFIX))
                if off is None:
                    raise RangeFull("Internal error occurred: failed to allocate a serviceIP: range is full")
                s.clusterIP = self.ips.address(off)
                plan.create[ip_key(s.clusterIP)] = ("", s.clusterIP)
            del s.clusterIPs[:]
            s.clusterIPs.append(s.clusterIP)
        await self._plan_ports(svc, set(), plan)
        return plan

    async def plan_update(self, svc: v1.Service, old: v1.Service) -> Plan:
        """An update keeps its IPs (clusterIP is immutable); nodePorts it adds are allocated,
        those it drops (a port removed, or type NodePort -> ClusterIP) are released."""
        m = svc.metadata
        plan = Plan(owner=f"services/{m.namespace}/{m.name}".encode(), name=m.name)
        held = node_ports(old)
        await self._plan_ports(svc, held, plan)
        plan.release = [port_key(p) for p in sorted(held - node_ports(svc))]
        return plan

    async def _plan_ports(self, svc: v1.Service, held: set[int], plan: Plan) -> None:
        if svc.spec.type != "NodePort":
            return
        taken: set[int] | None = None
        mine = set(held)
        for i, p in enumerate(svc.spec.ports):
            path = f"spec.ports[{i}].nodePort"
            if p.nodePort:
                if p.nodePort not in mine:
                    if p.nodePort not in self.ports.range:
                        raise self._invalid(svc, path, str(p.nodePort), "provided port is not in the valid "
                                            f"range. The range of valid ports is {self.ports}")
                    plan.create[port_key(p.nodePort)] = (path, str(p.nodePort))
                    mine.add(p.nodePort)
                continue
            if taken is None:
                taken = await self._taken(PORT_PREFIX)
            port = self.ports.range.pick(taken | mine)
            if port is None:
                raise RangeFull("Internal error occurred: failed to allocate a nodePort: range is full")
            p.nodePort = port
            plan.create[port_key(port)] = ("", str(port))
            mine.add(port)

    def release(self, svc: v1.Service) -> list:
        """The ops that free everything a Service holds, for the transaction that deletes it."""
        return ([Op.delete(ip_key(ip)) for ip in cluster_ips(svc)]
                + [Op.delete(port_key(p)) for p in sorted(node_ports(svc))])

    @staticmethod
    def _invalid(svc: v1.Service, path: str, shown: str, why: str) -> Invalid:
        return Invalid(f'services "{svc.metadata.name}" is invalid: {path}: Invalid value: {shown}: {why}')
