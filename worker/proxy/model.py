"""What kube-proxy knows, as plain data: one ServicePort per (service, port) with a cluster IP,
and the endpoints of each, read from Services and EndpointSlices (kube-proxy's ServicePortName,
ServiceInfo and endpoints map). rules.py turns these into iptables rules; proxier.py builds
them from its informers' stores on every sync, so nothing here outlives one sync.

Which endpoints count (as kube-proxy's topology filter in its simplest form): the ready ones;
when a service port has none, its serving-and-terminating ones (ProxyTerminatingEndpoints), so
a rolling update does not refuse connections while old pods drain.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
DEFAULT_AFFINITY_TIMEOUT = 10800  # seconds, Kubernetes' default for sessionAffinity ClientIP


@dataclass(frozen=True, order=True)
class ServicePort:
    namespace: str
    name: str
    port_name: str
    protocol: str          # TCP or UDP (iptables wants it lower case)
    cluster_ip: str
    port: int
    node_port: int = 0
    affinity_timeout: int = 0   # seconds of ClientIP session affinity; 0 = none
    external_local: bool = False  # externalTrafficPolicy Local (NodePort answers from local endpoints only)

    @property
    def key(self) -> str:
        """kube-proxy's ServicePortName string: `ns/name:port` (`ns/name` for an unnamed port)."""
        return f"{self.namespace}/{self.name}" + (f":{self.port_name}" if self.port_name else "")


@dataclass(frozen=True, order=True)
class Endpoint:
    ip: str
    port: int
    node_name: str = ""
    ready: bool = True
    serving: bool = True
    terminating: bool = False

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"


@dataclass
class ProxyState:
    """Everything one sync renders: the service ports and, per service port key, its endpoints."""
    ports: list[ServicePort] = field(default_factory=list)
    endpoints: dict[str, list[Endpoint]] = field(default_factory=dict)


def _valid_ipv4(s: str) -> bool:
    try:
        ipaddress.IPv4Address(s)
        return True
    except ValueError:
        return False


def service_ports(svc) -> list[ServicePort]:
    """The proxied ports of a v1.Service: none for a headless service (clusterIP None) or one not
    allocated yet; NodePorts only for type NodePort (or LoadBalancer)."""
    spec = svc.spec
    if not _valid_ipv4(spec.clusterIP):
        return []
    timeout = 0
    if spec.sessionAffinity == "ClientIP":
        cfg = spec.sessionAffinityConfig.clientIP
        timeout = cfg.timeoutSeconds if cfg.HasField("timeoutSeconds") and cfg.timeoutSeconds > 0 \
            else DEFAULT_AFFINITY_TIMEOUT
    node_ports = spec.type in ("NodePort", "LoadBalancer")
    out = []
    for p in spec.ports:
        if p.port <= 0:
            continue
        out.append(ServicePort(svc.metadata.namespace, svc.metadata.name, p.name, (p.protocol or "TCP").upper(),
                               spec.clusterIP, p.port, p.nodePort if node_ports else 0, timeout,
                               node_ports and spec.externalTrafficPolicy == "Local"))
    return out


def slice_endpoints(slices) -> dict[tuple[str, str, str, str], list[Endpoint]]:
    """(namespace, service, port name, protocol) -> endpoints, from EndpointSlices labelled with
    their service's name. Slices of one service are merged; an address in two slices counts once."""
    found: dict[tuple[str, str, str, str], set[Endpoint]] = {}
    for s in slices:
        svc = s.metadata.labels.get(SERVICE_NAME_LABEL, "")
        if not svc or (s.addressType and s.addressType != "IPv4"):
            continue
        for p in s.ports:
            if not p.HasField("port") or p.port <= 0:
                continue
            key = (s.metadata.namespace, svc, p.name if p.HasField("name") else "",
                   (p.protocol if p.HasField("protocol") else "TCP").upper())
            bucket = found.setdefault(key, set())
            for e in s.endpoints:
                c = e.conditions
                # unset conditions mean "unknown", which Kubernetes treats as ready/serving
                ready = c.ready if c.HasField("ready") else True
                serving = c.serving if c.HasField("serving") else ready
                terminating = c.terminating if c.HasField("terminating") else False
                node = e.nodeName if e.HasField("nodeName") else ""
                for ip in e.addresses[:1]:  # one endpoint per entry: the first address is the one
                    if _valid_ipv4(ip):
                        bucket.add(Endpoint(ip, p.port, node, ready, serving, terminating))
    return {k: sorted(v) for k, v in found.items()}


def usable(endpoints: list[Endpoint]) -> list[Endpoint]:
    """The endpoints traffic goes to: ready ones, else serving terminating ones."""
    ready = [e for e in endpoints if e.ready and not e.terminating]
    if ready:
        return ready
    return [e for e in endpoints if e.serving and e.terminating]


def build_state(services, slices) -> ProxyState:
    by_port = slice_endpoints(slices)
    state = ProxyState()
    for svc in sorted(services, key=lambda s: (s.metadata.namespace, s.metadata.name)):
        for sp in service_ports(svc):
            state.ports.append(sp)
            eps = by_port.get((sp.namespace, sp.name, sp.port_name, sp.protocol), [])
            state.endpoints[sp.key] = usable(eps)
    return state
