"""The cluster DNS zone: pure and in memory, fed by Service and EndpointSlice events.

The names are those of Kubernetes' DNS specification (what CoreDNS's `kubernetes` plugin
serves), under the cluster domain D (cluster.local):

- `<svc>.<ns>.svc.D`: A (AAAA) -> the service's cluster IPs; for a headless service
  (clusterIP None) -> the addresses of its ready endpoints (all of them with
  publishNotReadyAddresses).
- `<host>.<svc>.<ns>.svc.D` for each endpoint of a headless service, host being the
  endpoint's hostname, else its address with dashes (10-244-1-5).
- `_<port>._<proto>.<svc>.<ns>.svc.D`: SRV for each named port (to the service name, or to
  each endpoint's name for headless services, with the targets' A records as additional
  data); `<svc>.<ns>.svc.D` itself answers SRV for all ports.
- `<a-b-c-d>.<ns>.pod.D` -> a.b.c.d, for any address (CoreDNS's `pods insecure`, what
  kubeadm configures): no pod informer needed.
- PTR in in-addr.arpa / ip6.arpa for cluster IPs and headless endpoints.

A name under D that does not exist is NXDOMAIN; an existing name (or an empty non-terminal,
such as svc.D) asked for another type is NOERROR with no answer; both carry the zone's SOA in
the authority section, as CoreDNS does, so resolvers cache the negative answer for the SOA's
minimum (5 s, CoreDNS's TTL). `lookup` returns None for a name outside the zone: the server
refuses it, or forwards it when an upstream is configured.

Records are presentation-format text (RR), so this module knows nothing of the wire format.
"""
from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass, field

TTL = 5  # CoreDNS's default for the kubernetes plugin
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


@dataclass(frozen=True)
class RR:
    name: str   # absolute, lower case, without the trailing dot
    rtype: str  # A, AAAA, SRV, PTR, SOA, NS
    data: str   # presentation format ("10.96.0.10", "0 100 53 kube-dns.kube-system.svc.cluster.local.")
    ttl: int = TTL


@dataclass
class Answer:
    rcode: str  # NOERROR or NXDOMAIN
    answer: list[RR] = field(default_factory=list)
    authority: list[RR] = field(default_factory=list)
    additional: list[RR] = field(default_factory=list)


@dataclass(frozen=True)
class _Endpoint:
    address: str
    hostname: str
    ready: bool


@dataclass(frozen=True)
class _Slice:
    endpoints: tuple[_Endpoint, ...]
    ports: tuple[tuple[str, str, int], ...]  # (name, protocol, port)


def _ip_family_type(ip: str) -> str | None:
    try:
        return "A" if ipaddress.ip_address(ip).version == 4 else "AAAA"
    except ValueError:
        return None


def _dashed(ip: str) -> str:
    return ip.replace(".", "-").replace(":", "-")


def reverse_name(ip: str) -> str:
    return ipaddress.ip_address(ip).reverse_pointer


def _ready(ep) -> bool:
    # the conditions are pointers in Kubernetes: an unset `ready` means ready
    c = ep.conditions
    return c.ready if c.HasField("ready") else True


class Zone:
    def __init__(self, domain: str = "cluster.local", *, serial: int = 1):
        self.domain = domain.lower().strip(".")
        if not self.domain:
            raise ValueError("cluster domain must not be empty")
        self.serial = serial
        self._services: dict[tuple[str, str], object] = {}
        self._slices: dict[tuple[str, str], dict[str, _Slice]] = {}  # service key -> slice name -> slice
        self._slice_owner: dict[tuple[str, str], tuple[str, str]] = {}  # (ns, slice) -> service key
        self._contrib: dict[tuple[str, str], list[RR]] = {}  # service key -> its records
        self._index: dict[str, dict[str, list[RR]]] = {}  # name -> type -> records
        self._ancestors: Counter[str] = Counter()  # empty non-terminals, reference-counted
        self.apex_names = {self.domain, f"svc.{self.domain}", f"pod.{self.domain}"}

    # -- feeding (informer events) --
    def upsert_service(self, svc) -> None:
        key = (svc.metadata.namespace, svc.metadata.name)
        self._services[key] = svc
        self._rebuild(key)

    def delete_service(self, svc) -> None:
        key = (svc.metadata.namespace, svc.metadata.name)
        self._services.pop(key, None)
        self._rebuild(key)

    def upsert_slice(self, sl) -> None:
        ns, name = sl.metadata.namespace, sl.metadata.name
        old = self._slice_owner.get((ns, name))
        svc = sl.metadata.labels.get(SERVICE_NAME_LABEL, "")
        if old is not None and old != (ns, svc):  # relabelled: it left its old service
            self._drop_slice(ns, name)
        if not svc:
            return
        key = (ns, svc)
        ports = tuple((p.name if p.HasField("name") else "", (p.protocol if p.HasField("protocol") else "TCP"),
                       p.port) for p in sl.ports if p.HasField("port"))
        eps = tuple(_Endpoint(a, ep.hostname if ep.HasField("hostname") else "", _ready(ep))
                    for ep in sl.endpoints for a in ep.addresses)
        self._slices.setdefault(key, {})[name] = _Slice(eps, ports)
        self._slice_owner[(ns, name)] = key
        self._rebuild(key)

    def delete_slice(self, sl) -> None:
        self._drop_slice(sl.metadata.namespace, sl.metadata.name)

    def _drop_slice(self, ns: str, name: str) -> None:
        key = self._slice_owner.pop((ns, name), None)
        if key is None:
            return
        self._slices.get(key, {}).pop(name, None)
        if not self._slices.get(key):
            self._slices.pop(key, None)
        self._rebuild(key)

    # -- the records of one service --
    def _rebuild(self, key: tuple[str, str]) -> None:
        for rr in self._contrib.pop(key, []):
            rrs = self._index[rr.name][rr.rtype]
            rrs.remove(rr)
            if not rrs:
                del self._index[rr.name][rr.rtype]
                if not self._index[rr.name]:
                    del self._index[rr.name]
            for parent in self._parents(rr.name):
                self._ancestors[parent] -= 1
                if not self._ancestors[parent]:
                    del self._ancestors[parent]
        svc = self._services.get(key)
        new = self.service_records(svc, self._slices.get(key, {})) if svc is not None else []
        for rr in new:
            self._index.setdefault(rr.name, {}).setdefault(rr.rtype, []).append(rr)
            self._ancestors.update(self._parents(rr.name))
        if new:
            self._contrib[key] = new
        self.serial += 1

    def _parents(self, name: str) -> list[str]:
        if not name.endswith("." + self.domain):
            return []  # reverse names: their parents are not the zone's
        out, rest = [], name
        while True:
            rest = rest.partition(".")[2]
            if len(rest) <= len(self.domain):
                return out
            out.append(rest)

    def service_records(self, svc, slices: dict[str, _Slice]) -> list[RR]:
        ns, name = svc.metadata.namespace, svc.metadata.name
        base = f"{name}.{ns}.svc.{self.domain}".lower()
        spec = svc.spec
        out: list[RR] = []
        srv: dict[str, list[tuple[int, str]]] = {}  # SRV name -> [(port, target)]
        if spec.clusterIP == "None":
            seen: set[tuple[str, str]] = set()
            for sl in slices.values():
                for ep in sl.endpoints:
                    rtype = _ip_family_type(ep.address)
                    if rtype is None or not (ep.ready or spec.publishNotReadyAddresses):
                        continue
                    host = f"{(ep.hostname or _dashed(ep.address)).lower()}.{base}"
                    if (host, ep.address) in seen:
                        continue
                    seen.add((host, ep.address))
                    out += [RR(base, rtype, ep.address), RR(host, rtype, ep.address),
                            RR(reverse_name(ep.address), "PTR", host + ".")]
                    for pname, proto, port in sl.ports:
                        if pname:
                            srv.setdefault(f"_{pname}._{proto}.{base}".lower(), []).append((port, host))
                        srv.setdefault(base, []).append((port, host))
        else:
            ips = list(spec.clusterIPs) or ([spec.clusterIP] if spec.clusterIP else [])
            for ip in dict.fromkeys(ips):
                rtype = _ip_family_type(ip)
                if rtype is not None:
                    out += [RR(base, rtype, ip), RR(reverse_name(ip), "PTR", base + ".")]
            if out:
                for p in spec.ports:
                    proto = p.protocol or "TCP"
                    if p.name:
                        srv.setdefault(f"_{p.name}._{proto}.{base}".lower(), []).append((p.port, base))
                    srv.setdefault(base, []).append((p.port, base))
        for sname, targets in srv.items():
            targets = list(dict.fromkeys(targets))
            weight = max(1, 100 // len(targets))  # equal shares, as CoreDNS weighs them
            out += [RR(sname, "SRV", f"0 {weight} {port} {target}.") for port, target in targets]
        return list(dict.fromkeys(out))  # an address under two hostnames is one A record of the service

    # -- asking --
    def soa(self) -> RR:
        return RR(self.domain, "SOA", f"ns.dns.{self.domain}. hostmaster.{self.domain}. {self.serial} "
                                      f"7200 1800 86400 {TTL}")

    def in_zone(self, name: str) -> bool:
        return name == self.domain or name.endswith("." + self.domain)

    def lookup(self, qname: str, qtype: str) -> Answer | None:
        """The answer for one question, or None when the name is not this zone's."""
        name = qname.lower().rstrip(".")
        if not self.in_zone(name):
            rrsets = self._index.get(name)
            if rrsets is None:  # a reverse name of no cluster IP or endpoint: not ours
                return None
            return self._from(rrsets, qtype)
        if name == self.domain:
            apex = {"SOA": [self.soa()], "NS": [RR(self.domain, "NS", f"ns.dns.{self.domain}.")]}
            return self._from(apex, qtype)
        rrsets = self._index.get(name)
        if rrsets is None:
            pod = self._pod_record(name)
            if pod is not None:
                rrsets = {pod.rtype: [pod]}
            elif name in self._ancestors or name in self.apex_names or self._is_pod_namespace(name):
                rrsets = {}
            else:
                return Answer("NXDOMAIN", authority=[self.soa()])
        return self._from(rrsets, qtype)

    def _from(self, rrsets: dict[str, list[RR]], qtype: str) -> Answer:
        found = [rr for rrs in rrsets.values() for rr in rrs] if qtype == "ANY" else list(rrsets.get(qtype, ()))
        if not found:
            return Answer("NOERROR", authority=[self.soa()])
        extra: list[RR] = []
        for rr in found:
            if rr.rtype == "SRV":
                target = rr.data.rsplit(" ", 1)[1].rstrip(".")
                for t in ("A", "AAAA"):
                    extra += [x for x in self._index.get(target, {}).get(t, ()) if x not in extra]
        return Answer("NOERROR", answer=found, additional=extra)

    def _pod_record(self, name: str) -> RR | None:
        labels = name[:-len(self.domain) - 1].split(".")
        if len(labels) != 3 or labels[2] != "pod":
            return None
        parts = labels[0].split("-")
        if len(parts) != 4 or not all(p.isdigit() and len(p) <= 3 and int(p) <= 255 for p in parts):
            return None
        return RR(name, "A", ".".join(str(int(p)) for p in parts))

    def _is_pod_namespace(self, name: str) -> bool:
        labels = name[:-len(self.domain) - 1].split(".")
        return len(labels) == 2 and labels[1] == "pod"

    def stats(self) -> dict[str, int]:
        return {"services": len(self._services), "slices": len(self._slice_owner), "names": len(self._index)}
