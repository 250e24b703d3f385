"""Per-kind strategies: defaulting, validation and update rules, the part of the API server
that differs between kinds (Kubernetes' pkg/registry/*/strategy.go). Everything else (storage,
watch, the gRPC verbs) is one code path for all kinds in store.py and service.py.
"""
from __future__ import annotations

import secrets
import uuid

from google.protobuf.message import Message

from kubelab import meta
from kubelab.api import kinds
from kubelab.api.v1 import objects_pb2 as v1
from kubelab.errors import Forbidden, Invalid

from . import validation as val

MAX_OBJECT_BYTES = 1536 * 1024  # etcd's default request size limit
PROTECTED_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"


class Strategy:
    """Defaults for everything; kinds override what differs."""

    name_check = staticmethod(val.check_dns_subdomain)

    def __init__(self, kind: kinds.Kind):
        self.kind = kind

    # -- create --
    def prepare_create(self, obj: Message) -> None:
        m = obj.metadata
        m.uid = str(uuid.uuid4())
        m.creationTimestamp = meta.rfc3339()
        m.resourceVersion = ""
        m.generation = 1
        m.ClearField("deletionTimestamp")
        m.ClearField("deletionGracePeriodSeconds")
        if not self.kind.namespaced:
            m.namespace = ""
        self.default(obj)

    def default(self, obj: Message) -> None:
        pass

    def validate(self, obj: Message, old: Message | None = None) -> None:
        errs: list = []
        val.check_meta(obj.metadata, errs, name_check=self.name_check)
        self.validate_kind(obj, old, errs)
        val.raise_if(errs, self.kind.resource, obj.metadata.name)

    def validate_kind(self, obj, old, errs) -> None:
        pass

    # -- update --
    def prepare_update(self, obj: Message, old: Message) -> None:
        """A spec update keeps the stored status and the server-owned metadata."""
        keep_server_meta(obj.metadata, old.metadata)
        if self.kind.has_status and hasattr(old, "status"):
            obj.status.CopyFrom(old.status)
        if hasattr(obj, "spec") and obj.spec != old.spec:
            obj.metadata.generation = old.metadata.generation + 1
        self.default(obj)

    def prepare_status_update(self, obj: Message, old: Message) -> Message:
        """A status update changes status only: the result is old with obj's status."""
        new = type(old)()
        new.CopyFrom(old)
        new.status.CopyFrom(obj.status)
        return new


def keep_server_meta(m: v1.ObjectMeta, old: v1.ObjectMeta) -> None:
    m.uid = old.uid
    m.creationTimestamp = old.creationTimestamp
    m.generation = old.generation
    m.namespace = old.namespace
    m.generateName = old.generateName
    if old.deletionTimestamp:
        m.deletionTimestamp = old.deletionTimestamp
        m.deletionGracePeriodSeconds = old.deletionGracePeriodSeconds
    elif m.deletionTimestamp:
        m.ClearField("deletionTimestamp")
        m.ClearField("deletionGracePeriodSeconds")


def generate_name(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_NAME_CHARS) for _ in range(5))


class NamespaceStrategy(Strategy):
    name_check = staticmethod(val.check_dns_label)

    def default(self, ns: v1.Namespace) -> None:
        if not ns.status.phase:
            ns.status.phase = "Active"

    def prepare_create(self, ns: v1.Namespace) -> None:
        super().prepare_create(ns)
        ns.metadata.labels["kubernetes.io/metadata.name"] = ns.metadata.name
        del ns.spec.finalizers[:]
        ns.spec.finalizers.append("kubernetes")
        ns.status.phase = "Active"

    def prepare_update(self, ns: v1.Namespace, old: v1.Namespace) -> None:
        super().prepare_update(ns, old)
        ns.metadata.labels["kubernetes.io/metadata.name"] = ns.metadata.name
        # spec.finalizers may only shrink: the namespace controller empties it (/finalize).
        if not set(ns.spec.finalizers) <= set(old.spec.finalizers):
            raise Forbidden(f'namespaces "{ns.metadata.name}" is forbidden: spec.finalizers may only be removed')

    @staticmethod
    def check_delete(name: str) -> None:
        if name in PROTECTED_NAMESPACES[:3]:
            raise Forbidden(f'namespaces "{name}" is forbidden: this namespace may not be deleted')


class NodeStrategy(Strategy):
    def validate_kind(self, node: v1.Node, old, errs) -> None:
        val.validate_node_spec(node.spec, errs)
        if old is not None and old.spec.podCIDR and node.spec.podCIDR != old.spec.podCIDR:
            errs.append(val.FieldError("spec.podCIDR", "Forbidden: podCIDR cannot be changed once set"))


DEFAULT_TOLERATIONS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")
DEFAULT_TOLERATION_SECONDS = 300


class PodStrategy(Strategy):
    toleration_seconds = DEFAULT_TOLERATION_SECONDS  # --default-toleration-seconds

    def default(self, pod: v1.Pod) -> None:
        s = pod.spec
        s.restartPolicy = s.restartPolicy or "Always"
        if not s.HasField("terminationGracePeriodSeconds"):
            s.terminationGracePeriodSeconds = 30
        s.schedulerName = s.schedulerName or "default-scheduler"
        s.dnsPolicy = s.dnsPolicy or "ClusterFirst"
        for c in list(s.initContainers) + list(s.containers):
            if not c.imagePullPolicy:
                c.imagePullPolicy = "Always" if image_tag(c.image) == "latest" else "IfNotPresent"
            c.terminationMessagePath = c.terminationMessagePath or "/dev/termination-log"
            for p in c.ports:
                p.protocol = p.protocol or "TCP"
            for probe in (c.livenessProbe, c.readinessProbe, c.startupProbe):
                default_probe(probe)
        # the DefaultTolerationSeconds admission plugin's job
        have = {(t.key, t.effect) for t in s.tolerations}
        for key in DEFAULT_TOLERATIONS:
            if (key, "NoExecute") not in have and not any(t.operator == "Exists" and not t.key for t in s.tolerations):
                s.tolerations.add(key=key, operator="Exists", effect="NoExecute",
                                  tolerationSeconds=self.toleration_seconds)

    def prepare_create(self, pod: v1.Pod) -> None:
        super().prepare_create(pod)
        pod.status.Clear()
        pod.status.phase = "Pending"
        pod.status.qosClass = qos_class(pod.spec)

    def validate_kind(self, pod: v1.Pod, old, errs) -> None:
        val.validate_pod_spec(pod.spec, errs)
        val.validate_pod_dns(pod.spec, errs)
        if old is None:
            return
        # Kubernetes allows only a few pod spec fields to change after creation.
        a, b = v1.PodSpec(), v1.PodSpec()
        a.CopyFrom(pod.spec)
        b.CopyFrom(old.spec)
        b.dnsPolicy = b.dnsPolicy or "ClusterFirst"  # stored before dnsPolicy was defaulted
        for s in (a, b):
            for c in list(s.containers) + list(s.initContainers):
                c.image = ""
            del s.tolerations[:]
        if a != b:
            errs.append(val.FieldError("spec", "Forbidden: pod updates may not change fields other "
                                       "than `spec.containers[*].image`, `spec.initContainers[*].image` "
                                       "or `spec.tolerations` (only additions to existing tolerations)"))

    def prepare_update(self, pod: v1.Pod, old: v1.Pod) -> None:
        super().prepare_update(pod, old)
        pod.spec.nodeName = old.spec.nodeName  # only a Binding sets it


def default_probe(p: v1.Probe) -> None:
    if not (p.HasField("exec") or p.HasField("httpGet") or p.HasField("tcpSocket")):
        return
    p.timeoutSeconds = p.timeoutSeconds or 1
    p.periodSeconds = p.periodSeconds or 10
    p.successThreshold = p.successThreshold or 1
    p.failureThreshold = p.failureThreshold or 3
    if p.HasField("httpGet"):
        p.httpGet.path = p.httpGet.path or "/"
        p.httpGet.scheme = p.httpGet.scheme or "HTTP"


def image_tag(image: str) -> str:
    if "@" in image:
        return ""
    last = image.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else "latest"


def qos_class(spec: v1.PodSpec) -> str:
    cs = list(spec.containers) + list(spec.initContainers)
    if not any(c.resources.requests or c.resources.limits for c in cs):
        return "BestEffort"
    guaranteed = all(
        all(r in c.resources.limits for r in ("cpu", "memory")) and
        all(c.resources.requests.get(r, c.resources.limits[r]) == c.resources.limits[r] for r in ("cpu", "memory"))
        for c in cs)
    return "Guaranteed" if guaranteed else "Burstable"


class LeaseStrategy(Strategy):
    def prepare_update(self, obj, old) -> None:
        keep_server_meta(obj.metadata, old.metadata)


class EventStrategy(Strategy):
    def validate_kind(self, ev: v1.Event, old, errs) -> None:
        if not ev.involvedObject.name and not ev.involvedObject.kind:
            errs.append(val.required("involvedObject"))
        if ev.type and ev.type not in ("Normal", "Warning"):
            errs.append(val.unsupported("type", ev.type, ("Normal", "Warning")))

    def prepare_update(self, obj, old) -> None:
        keep_server_meta(obj.metadata, old.metadata)


class BindingStrategy(Strategy):
    def validate_kind(self, b: v1.Binding, old, errs) -> None:
        if not b.target.name:
            errs.append(val.required("target.name"))
        if b.target.kind and b.target.kind != "Node":
            errs.append(val.unsupported("target.kind", b.target.kind, ("Node",)))


class SecretStrategy(Strategy):
    """stringData is folded into data (it wins on a shared key, as in Kubernetes) and never stored."""

    def default(self, s: v1.Secret) -> None:
        for k, v in s.stringData.items():
            s.data[k] = v.encode()
        s.ClearField("stringData")
        s.type = s.type or "Opaque"

    def prepare_update(self, s: v1.Secret, old: v1.Secret) -> None:
        keep_server_meta(s.metadata, old.metadata)
        self.default(s)

    def validate_kind(self, s: v1.Secret, old, errs) -> None:
        val.validate_secret(s, errs)
        if old is not None:
            val.validate_immutable(s, old, ("type",), errs)


class ConfigMapStrategy(Strategy):
    def prepare_update(self, obj, old) -> None:
        keep_server_meta(obj.metadata, old.metadata)

    def validate_kind(self, cm: v1.ConfigMap, old, errs) -> None:
        val.validate_configmap(cm, errs)
        if old is not None:
            val.validate_immutable(cm, old, (), errs)


class CSRStrategy(Strategy):
    """spec is immutable; status (conditions, certificate) changes through UpdateStatus only.
    spec.username/groups are set by the API service from the caller's identity."""

    def prepare_create(self, csr: v1.CertificateSigningRequest) -> None:
        super().prepare_create(csr)
        csr.status.Clear()

    def validate_kind(self, csr: v1.CertificateSigningRequest, old, errs) -> None:
        val.validate_csr(csr, errs)
        if old is None:
            return
        if csr.spec != old.spec:
            errs.append(val.FieldError("spec", "Forbidden: field is immutable"))
        val.validate_csr_status(csr, old, errs)


class ServiceStrategy(Strategy):
    """Defaults as Kubernetes' (type ClusterIP, protocol TCP, targetPort = port, ...); the
    ClusterIP and NodePorts themselves are the Store's allocator's (allocator.py), after
    validation. An update that leaves clusterIP or a nodePort empty keeps the allocated one
    (Kubernetes' patchAllocatedValues: a replace from a manifest does not know them), and a
    NodePort -> ClusterIP change drops the node ports it did not touch."""

    name_check = staticmethod(val.check_dns1035_label)  # a service's name is a DNS name

    def default(self, svc: v1.Service) -> None:
        s = svc.spec
        s.type = s.type or "ClusterIP"
        s.sessionAffinity = s.sessionAffinity or "None"
        if s.sessionAffinity == "ClientIP" and not s.sessionAffinityConfig.clientIP.HasField("timeoutSeconds"):
            s.sessionAffinityConfig.clientIP.timeoutSeconds = 10800
        for p in s.ports:
            p.protocol = p.protocol or "TCP"
            kind = p.targetPort.WhichOneof("kind")
            if p.port and (kind is None or (kind == "number_value" and p.targetPort.number_value == 0) or (
                    kind == "string_value" and not p.targetPort.string_value)):
                p.targetPort.number_value = p.port
        if s.clusterIP and not s.clusterIPs:
            s.clusterIPs.append(s.clusterIP)
        elif s.clusterIPs and not s.clusterIP:
            s.clusterIP = s.clusterIPs[0]
        if s.type == "NodePort" and not s.externalTrafficPolicy:
            s.externalTrafficPolicy = "Cluster"
        s.internalTrafficPolicy = s.internalTrafficPolicy or "Cluster"
        if not s.ipFamilies:
            s.ipFamilies.append("IPv4")
        if not s.HasField("ipFamilyPolicy"):
            s.ipFamilyPolicy = "SingleStack"

    def prepare_create(self, svc: v1.Service) -> None:
        super().prepare_create(svc)
        svc.status.Clear()

    def prepare_update(self, svc: v1.Service, old: v1.Service) -> None:
        s, o = svc.spec, old.spec
        if not s.clusterIP and not s.clusterIPs:
            s.clusterIP = o.clusterIP
            s.clusterIPs[:] = o.clusterIPs
        if s.type == "NodePort" and o.type == "NodePort":
            by_name = {p.name: p.nodePort for p in o.ports}
            by_port = {(p.port, p.protocol or "TCP"): p.nodePort for p in o.ports}
            for p in s.ports:
                if not p.nodePort:
                    p.nodePort = by_port.get((p.port, p.protocol or "TCP")) or by_name.get(p.name, 0)
        elif o.type == "NodePort" and s.type != "NodePort":
            if {p.nodePort for p in s.ports if p.nodePort} <= {p.nodePort for p in o.ports}:
                for p in s.ports:
                    p.nodePort = 0
            if s.externalTrafficPolicy == o.externalTrafficPolicy:
                s.externalTrafficPolicy = ""
        super().prepare_update(svc, old)

    def validate_kind(self, svc: v1.Service, old, errs) -> None:
        val.validate_service(svc, errs)
        if old is not None:
            val.validate_service_update(svc, old, errs)


class EndpointsStrategy(Strategy):
    def default(self, ep: v1.Endpoints) -> None:
        for sub in ep.subsets:
            for p in sub.ports:
                p.protocol = p.protocol or "TCP"

    def prepare_update(self, obj, old) -> None:
        keep_server_meta(obj.metadata, old.metadata)
        self.default(obj)

    def validate_kind(self, ep: v1.Endpoints, old, errs) -> None:
        val.validate_endpoints(ep, errs)


class EndpointSliceStrategy(Strategy):
    def default(self, es: v1.EndpointSlice) -> None:
        for p in es.ports:
            if not p.HasField("protocol"):
                p.protocol = "TCP"

    def prepare_update(self, obj, old) -> None:
        keep_server_meta(obj.metadata, old.metadata)
        self.default(obj)

    def validate_kind(self, es: v1.EndpointSlice, old, errs) -> None:
        val.validate_endpoint_slice(es, errs, old)


STRATEGIES: dict[str, Strategy] = {
    "namespaces": NamespaceStrategy(kinds.BY_RESOURCE["namespaces"]),
    "nodes": NodeStrategy(kinds.BY_RESOURCE["nodes"]),
    "pods": PodStrategy(kinds.BY_RESOURCE["pods"]),
    "bindings": BindingStrategy(kinds.BY_RESOURCE["bindings"]),
    "leases": LeaseStrategy(kinds.BY_RESOURCE["leases"]),
    "events": EventStrategy(kinds.BY_RESOURCE["events"]),
    "secrets": SecretStrategy(kinds.BY_RESOURCE["secrets"]),
    "configmaps": ConfigMapStrategy(kinds.BY_RESOURCE["configmaps"]),
    "certificatesigningrequests": CSRStrategy(kinds.BY_RESOURCE["certificatesigningrequests"]),
    "services": ServiceStrategy(kinds.BY_RESOURCE["services"]),
    "endpoints": EndpointsStrategy(kinds.BY_RESOURCE["endpoints"]),
    "endpointslices": EndpointSliceStrategy(kinds.BY_RESOURCE["endpointslices"]),
}


def check_size(raw: bytes, kind: kinds.Kind, name: str) -> None:
    if len(raw) > MAX_OBJECT_BYTES:
        from kubelab.errors import RequestEntityTooLarge
        raise RequestEntityTooLarge(f'{kind.resource} "{name}" is too large: {len(raw)} bytes, '
                                    f'the limit is {MAX_OBJECT_BYTES}')


def invalid_type(kind: kinds.Kind, got: str) -> Invalid:
    return Invalid(f"{kind.resource}: object type {got!r} does not match {kind.type_url!r}")
