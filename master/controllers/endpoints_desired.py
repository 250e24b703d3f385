"""What a Service's Endpoints and EndpointSlices should hold, from the Service and the pods
its selector matches: the pure half of the endpoint and endpointslice controllers
(endpoints.py does the watching and writing). Nothing here talks to the API server.

It follows Kubernetes' rules (pkg/controller/endpoint, pkg/controller/endpointslice):
- a pod counts once it has an IP and while it is not Succeeded or Failed; a pod being
  deleted is left out of Endpoints but kept in the slices as `terminating` (ready false);
  `publishNotReadyAddresses` makes every such pod ready;
- ready pods (condition Ready True) go into `addresses`, the others into
  `notReadyAddresses` (in a slice: conditions.ready false);
- ports are resolved per pod: a named targetPort is looked up by name (and protocol) in
  that pod's containers' ports; a pod without it is left out for that port;
- Endpoints subsets are repacked as Kubernetes' RepackSubsets does (addresses that share
  the same ports share a subset), one EndpointSlice per distinct port set, at most
  MAX_ENDPOINTS_PER_SLICE endpoints each, sorted so that equal input gives equal output.
"""
from __future__ import annotations

import hashlib
import ipaddress

from kubelab.api.v1 import objects_pb2 as v1

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
MANAGED_BY = "endpointslice-controller.k8s.io"
HEADLESS_LABEL = "service.kubernetes.io/headless"
MAX_ENDPOINTS_PER_SLICE = 100  # kube-controller-manager's --max-endpoints-per-slice default


def selects(svc: v1.Service, pod: v1.Pod) -> bool:
    """A Service's selector is a map: every key=value must be among the pod's labels."""
    sel = svc.spec.selector
    return bool(sel) and all(pod.metadata.labels.get(k) == v for k, v in sel.items())


def managed(svc: v1.Service) -> bool:
    """Services without a selector (their endpoints are written by hand, like the API server's
    `kubernetes` service) and ExternalName services are left alone."""
    return bool(svc.spec.selector) and svc.spec.type != "ExternalName"


def headless(svc: v1.Service) -> bool:
    return svc.spec.clusterIP == "None"


def pod_ready(pod: v1.Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions)


def in_endpoints(pod: v1.Pod, *, include_terminating: bool) -> bool:
    """Kubernetes' ShouldPodBeInEndpoints."""
    if pod.status.phase in ("Succeeded", "Failed") or not pod.status.podIP:
        return False
    return include_terminating or not pod.metadata.deletionTimestamp


def _int_or_string(v) -> int | str | None:
    kind = v.WhichOneof("kind")
    if kind == "number_value":
        return int(v.number_value)
    if kind == "string_value":
        s = v.string_value
        return int(s) if s.isdigit() else s
    return None


def find_port(pod: v1.Pod, port: v1.ServicePort) -> int | None:
    """Kubernetes' FindPort: the pod's port for a service port, None if the pod has no port of
    that name (and protocol). Sidecars (restartable init containers) count as containers."""
    target = _int_or_string(port.targetPort) if port.HasField("targetPort") else None
    if target is None or target == 0:
        return port.port  # an unset targetPort is the port itself
    if isinstance(target, int):
        return target
    protocol = port.protocol or "TCP"
    sidecars = [c for c in pod.spec.initContainers if c.restartPolicy == "Always"]
    for c in [*pod.spec.containers, *sidecars]:
        for cp in c.ports:
            if cp.name == target and (cp.protocol or "TCP") == protocol:
                return cp.containerPort
    return None


PortKey = tuple[tuple[str, int, str, str], ...]  # (name, port, protocol, appProtocol) per port


def pod_ports(svc: v1.Service, pod: v1.Pod) -> PortKey:
    out = []
    for sp in svc.spec.ports:
        n = find_port(pod, sp)
        if n is not None:
            out.append((sp.name, n, sp.protocol or "TCP", sp.appProtocol if sp.HasField("appProtocol") else ""))
    return tuple(out)


def target_ref(pod: v1.Pod) -> v1.ObjectReference:
    return v1.ObjectReference(kind="Pod", namespace=pod.metadata.namespace, name=pod.metadata.name,
                              uid=pod.metadata.uid)


def hostname(svc: v1.Service, pod: v1.Pod) -> str:
    """Kubernetes' ShouldSetHostname: a pod's hostname is published when its subdomain names
    the service (the headless-service-with-named-pods pattern of StatefulSets)."""
    return pod.spec.hostname if pod.spec.hostname and pod.spec.subdomain == svc.metadata.name else ""


def _ipv4(pod: v1.Pod) -> list[str]:
    ips = [ip.ip for ip in pod.status.podIPs] or [pod.status.podIP]
    out = []
    for ip in ips:
        try:
            if ipaddress.ip_address(ip).version == 4:
                out.append(ip)
        except ValueError:
            pass
    return out


def _ip_order(ip: str):
    try:
        return (0, int(ipaddress.ip_address(ip)), ip)
    except ValueError:
        return (1, 0, ip)


def _endpoint_port(p) -> v1.EndpointPort:
    e = v1.EndpointPort(name=p[0], port=p[1], protocol=p[2])
    if p[3]:
        e.appProtocol = p[3]
    return e


def desired_subsets(svc: v1.Service, pods: list[v1.Pod]) -> list[v1.EndpointSubset]:
    """The Endpoints object's subsets (the endpoint controller's syncService + RepackSubsets)."""
    tolerate = svc.spec.publishNotReadyAddresses
    by_ports: dict[PortKey, dict[str, list]] = {}
    for pod in pods:
        if not in_endpoints(pod, include_terminating=tolerate):
            continue
        ports = pod_ports(svc, pod)
        if not ports and not (headless(svc) and not svc.spec.ports):
            continue  # headless services may have no ports; others need a resolved one
        ready = tolerate or pod_ready(pod)
        addr = v1.EndpointAddress(ip=pod.status.podIP, hostname=hostname(svc, pod), targetRef=target_ref(pod))
        if pod.spec.nodeName:
            addr.nodeName = pod.spec.nodeName
        group = by_ports.setdefault(ports, {"ready": [], "notReady": []})
        group["ready" if ready else "notReady"].append(addr)
    subsets = []
    for ports in sorted(by_ports):
        g = by_ports[ports]
        s = v1.EndpointSubset()
        for field, addrs in (("addresses", g["ready"]), ("notReadyAddresses", g["notReady"])):
            addrs.sort(key=lambda a: (_ip_order(a.ip), a.targetRef.uid))
            getattr(s, field).extend(addrs)
        s.ports.extend(_endpoint_port(p) for p in ports)
        subsets.append(s)
    return subsets


def endpoints_labels(svc: v1.Service) -> dict[str, str]:
    labels = {k: v for k, v in svc.metadata.labels.items() if k != HEADLESS_LABEL}
    if headless(svc):
        labels[HEADLESS_LABEL] = ""
    return labels


def slice_labels(svc: v1.Service) -> dict[str, str]:
    labels = endpoints_labels(svc)
    labels[SERVICE_NAME_LABEL] = svc.metadata.name
    labels[MANAGED_BY_LABEL] = MANAGED_BY
    return labels


def owner_ref(svc: v1.Service) -> v1.OwnerReference:
    return v1.OwnerReference(apiVersion="v1", kind="Service", name=svc.metadata.name, uid=svc.metadata.uid,
                             controller=True, blockOwnerDeletion=True)


def slice_name(svc_name: str, ports: PortKey, chunk: int) -> str:
    """A stable name per (service, port set, chunk): Kubernetes uses generateName `<svc>-`
    with a random suffix; a name derived from the content lets a restarted controller find
    the slice it made without remembering anything."""
    digest = hashlib.sha256(repr((ports, chunk)).encode()).hexdigest()[:5]
    return f"{svc_name[:57].rstrip('-.')}-{digest}"


def _slice_endpoint(svc: v1.Service, pod: v1.Pod, ip: str) -> v1.Endpoint:
    serving = pod_ready(pod)
    terminating = bool(pod.metadata.deletionTimestamp)
    ready = svc.spec.publishNotReadyAddresses or (serving and not terminating)
    e = v1.Endpoint(addresses=[ip], targetRef=target_ref(pod))
    e.conditions.ready, e.conditions.serving, e.conditions.terminating = ready, serving, terminating
    if pod.spec.nodeName:
        e.nodeName = pod.spec.nodeName
    if h := hostname(svc, pod):
        e.hostname = h
    return e


def desired_slices(svc: v1.Service, pods: list[v1.Pod]) -> list[v1.EndpointSlice]:
    """The service's EndpointSlices (IPv4), one per distinct resolved port set, sorted by name."""
    by_ports: dict[PortKey, list] = {}
    for pod in pods:
        if not in_endpoints(pod, include_terminating=True):
            continue
        ips = _ipv4(pod)
        if ips:
            by_ports.setdefault(pod_ports(svc, pod), []).append(_slice_endpoint(svc, pod, ips[0]))
    if not by_ports:
        by_ports[()] = []  # Kubernetes keeps one empty slice (no ports) for a service with no endpoints
    out = []
    labels = slice_labels(svc)
    for ports, eps in by_ports.items():
        eps.sort(key=lambda e: (_ip_order(e.addresses[0]), e.targetRef.uid))
        for chunk, start in enumerate(range(0, max(len(eps), 1), MAX_ENDPOINTS_PER_SLICE)):
            s = v1.EndpointSlice(addressType="IPv4")
            s.metadata.name = slice_name(svc.metadata.name, ports, chunk)
            s.metadata.namespace = svc.metadata.namespace
            s.metadata.labels.update(labels)
            s.metadata.ownerReferences.append(owner_ref(svc))
            s.endpoints.extend(eps[start:start + MAX_ENDPOINTS_PER_SLICE])
            for name, port, protocol, app in ports:
                p = s.ports.add(name=name, port=port, protocol=protocol)
                if app:
                    p.appProtocol = app
            out.append(s)
    return sorted(out, key=lambda s: s.metadata.name)
