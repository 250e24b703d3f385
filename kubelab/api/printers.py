"""The columns of `get`, computed on the server: Kubernetes' printers (the table convertor behind
the API server's `as=Table` answers), one definition per kind of kubelab.api.kinds.

The API server's gRPC face fills `table` of Get and List answers from here; its HTTP face
re-encodes that Table as meta.k8s.io/v1 JSON for kubectl; kubelab's own `get` prints the same
cells. So a column is written once, with Kubernetes' name ("Nominated Node"; kubectl prints
it upper-cased), type, description and priority (1: shown with -o wide only). The server
always fills every column, wide ones included, as Kubernetes' does; the client picks.

Pure functions over API messages (and the clock): nothing here talks to anything.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Callable

from google.protobuf import struct_pb2
from google.protobuf.message import Message

from kubelab import meta
from kubelab.api import kinds
from kubelab.api.v1 import api_pb2

# -- time ------------------------------------------------------------------------------------


def human_duration(seconds: float) -> str:
    """kubectl's HumanDuration (k8s.io/apimachinery/pkg/util/duration)."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    m = s // 60
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    h = m // 60
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    if h < 24 * 8:
        return f"{h // 24}d{h % 24}h" if h % 24 else f"{h // 24}d"
    if h < 24 * 365 * 2:
        return f"{h // 24}d"
    y, d = h // 24 // 365, h // 24 % 365
    if h < 24 * 365 * 8:
        return f"{y}y{d}d" if d else f"{y}y"
    return f"{y}y"


def _parse(ts: str) -> dt.datetime | None:
    """A timestamp of an object; one written without a zone (a client may) is taken as UTC
    rather than failing the whole table."""
    t = meta.parse_time(ts)
    return t.replace(tzinfo=dt.timezone.utc) if t is not None and t.tzinfo is None else t


def age(ts: str, now: dt.datetime | None = None) -> str:
    """Time since an RFC 3339 timestamp, as the AGE column shows it; `<unknown>` if unset."""
    t = _parse(ts)
    if t is None:
        return "<unknown>"
    return human_duration(((now or meta.now()) - t).total_seconds())


# -- pods and nodes --------------------------------------------------------------------------


def _terminated_reason(t, prefix: str = "") -> str:
    if t.reason:
        return prefix + t.reason
    return f"{prefix}Signal:{t.signal}" if t.signal else f"{prefix}ExitCode:{t.exitCode}"


def _has_condition(p, ctype: str) -> bool:
    return any(c.type == ctype and c.status == "True" for c in p.status.conditions)


def pod_summary(p) -> tuple[str, int, int, int]:
    """(STATUS, ready, total, restarts) computed as kubectl's printPod does."""
    init_specs = {c.name: c for c in p.spec.initContainers}
    total = len(p.spec.containers) + sum(1 for c in p.spec.initContainers if c.restartPolicy == "Always")
    ready = restarts = sidecar_restarts = 0
    reason = p.status.reason or p.status.phase or "Pending"
    initializing = False
    for i, cs in enumerate(p.status.initContainerStatuses):
        restarts += cs.restartCount
        st = cs.state
        sidecar = init_specs.get(cs.name) is not None and init_specs[cs.name].restartPolicy == "Always"
        if st.HasField("terminated") and st.terminated.exitCode == 0:
            continue
        if sidecar:
            sidecar_restarts += cs.restartCount
        if sidecar and cs.started:
            ready += 1 if cs.ready else 0
            continue
        initializing = True
        if st.HasField("terminated"):
            reason = _terminated_reason(st.terminated, "Init:")
        elif st.HasField("waiting") and st.waiting.reason and st.waiting.reason != "PodInitializing":
            reason = "Init:" + st.waiting.reason
        else:
            reason = f"Init:{i}/{len(p.spec.initContainers)}"
        break
    if not initializing or _has_condition(p, "Initialized"):
        restarts = sidecar_restarts  # once initialized, kubectl counts the app containers (and sidecars)
        has_running = False
        for cs in reversed(p.status.containerStatuses):
            restarts += cs.restartCount
            st = cs.state
            if st.HasField("waiting") and st.waiting.reason:
                reason = st.waiting.reason
            elif st.HasField("terminated"):
                reason = _terminated_reason(st.terminated)
            elif cs.ready and st.HasField("running"):
                has_running = True
                ready += 1
        if reason == "Completed" and has_running:
            reason = "Running" if any(c.type == "Ready" for c in p.status.conditions) else "NotReady"
    if p.metadata.deletionTimestamp:
        if p.status.reason == "NodeLost":
            reason = "Unknown"
        elif p.status.phase not in ("Succeeded", "Failed"):
            reason = "Terminating"
    return reason, ready, total, restarts


def pod_status(p) -> str:
    return pod_summary(p)[0]


def pod_ready(p) -> str:
    _, ready, total, _ = pod_summary(p)
    return f"{ready}/{total}"


def pod_restarts(p, now: dt.datetime | None = None, n: int | None = None) -> str:
    """RESTARTS (n: pod_summary's count, when at hand), with kubectl's `(5m ago)` for the most
    recent container exit."""
    n = pod_summary(p)[3] if n is None else n
    if not n:
        return "0"
    times = (_parse(cs.lastState.terminated.finishedAt)
             for cs in [*p.status.initContainerStatuses, *p.status.containerStatuses] if cs.restartCount)
    last = max((t for t in times if t is not None), default=None)
    if n and last is not None:
        return f"{n} ({human_duration(((now or meta.now()) - last).total_seconds())} ago)"
    return str(n)


def pod_ip(p) -> str:
    return (p.status.podIPs[0].ip if p.status.podIPs else p.status.podIP) or "<none>"


def node_status(n) -> str:
    ready = next((c for c in n.status.conditions if c.type == "Ready"), None)
    s = "Unknown" if ready is None else ("Ready" if ready.status == "True" else "NotReady")
    return s + ",SchedulingDisabled" if n.spec.unschedulable else s


def node_roles(n) -> str:
    roles = {k.split("/", 1)[1] for k in n.metadata.labels if k.startswith("node-role.kubernetes.io/")}
    if n.metadata.labels.get("kubernetes.io/role"):
        roles.add(n.metadata.labels["kubernetes.io/role"])
    return ",".join(sorted(r for r in roles if r)) or "<none>"


def node_ip(n, kind: str = "InternalIP") -> str:
    return next((a.address for a in n.status.addresses if a.type == kind), "<none>")


# -- events ----------------------------------------------------------------------------------


def event_object(e) -> str:
    o = e.involvedObject
    return f"{o.kind.lower()}/{o.name}" if o.name else o.kind.lower()


def event_first_seen(e, now: dt.datetime | None = None) -> str:
    return age(e.firstTimestamp or e.eventTime, now)


def event_last_seen(e, now: dt.datetime | None = None) -> str:
    """LAST SEEN as `describe` writes it: `2m (x3 over 10m)` for a repeated event."""
    first = age(e.firstTimestamp or e.eventTime or e.metadata.creationTimestamp, now)
    last = age(e.lastTimestamp, now) if e.lastTimestamp else first
    return f"{last} (x{e.count} over {first})" if e.count > 1 else last


def event_last_timestamp(e, now: dt.datetime | None = None) -> str:
    """LAST SEEN of `get events` (printEvent): the last time, else the first."""
    return age(e.lastTimestamp, now) if e.lastTimestamp else event_first_seen(e, now)


def event_source(e) -> str:
    """formatEventSource: `component, host`, each falling back to the reporting fields."""
    component = e.source.component or e.reportingComponent
    host = e.source.host or e.reportingInstance
    return f"{component}, {host}" if component and host else component


# -- services and endpoints ------------------------------------------------------------------


def format_labels(m) -> str:
    """labels.FormatLabels: `k=v,k2=v2` sorted, `<none>` when empty."""
    return ",".join(f"{k}={v}" for k, v in sorted(m.items())) or "<none>"


def service_cluster_ip(s) -> str:
    return (s.spec.clusterIPs[0] if s.spec.clusterIPs else s.spec.clusterIP) or "<none>"


def service_external_ip(s) -> str:
    """kubectl's getServiceExternalIP for the types this API has (ExternalName: its name)."""
    t = s.spec.type or "ClusterIP"
    if t in ("ClusterIP", "NodePort"):
        return ",".join(s.spec.externalIPs) or "<none>"
    if t == "ExternalName":
        return getattr(s.spec, "externalName", "") or "<none>"
    if t == "LoadBalancer":
        ips = [i.ip or i.hostname for i in s.status.loadBalancer.ingress] + list(s.spec.externalIPs)
        return ",".join(ips) or "<pending>"
    return "<unknown>"


def service_ports(s) -> str:
    """PORT(S): `80/TCP`, `81:30123/TCP` with a node port, comma-separated; `<none>`."""
    return ",".join(f"{p.port}:{p.nodePort}/{p.protocol or 'TCP'}" if p.nodePort else f"{p.port}/{p.protocol or 'TCP'}"
                    for p in s.spec.ports) or "<none>"


def _more(items: list[str], count: int, empty: str, limit: int = 3) -> str:
    """kubectl's listWithMoreString: the first three, then ` + N more...`."""
    text = ",".join(items[:limit])
    if count > limit:
        return f"{text} + {count - limit} more..."
    return text or empty


def endpoints_list(ep) -> str:
    """ENDPOINTS of `get endpoints` (kubectl's formatEndpoints): ready ip:port for every port of
    every subset, ip alone for a headless service without ports."""
    if not ep.subsets:
        return "<none>"
    items, count = [], 0
    for ss in ep.subsets:
        if not ss.ports:
            count += len(ss.addresses)
            items += [a.ip for a in ss.addresses]
            continue
        for p in ss.ports:
            count += len(ss.addresses)
            items += [f"[{a.ip}]:{p.port}" if ":" in a.ip else f"{a.ip}:{p.port}" for a in ss.addresses]
    return _more(items, count, "<none>")


def slice_ports(s) -> str:
    """PORTS of `get endpointslices` (formatDiscoveryPorts): numbers, the name where unset, `*`."""
    items = [str(p.port) if p.HasField("port") else (p.name if p.HasField("name") else "*") for p in s.ports]
    return _more(items, len(items), "<unset>")


def slice_endpoints(s) -> str:
    items = [a for e in s.endpoints for a in e.addresses]
    return _more(items, len(items), "<unset>")


# -- certificates ----------------------------------------------------------------------------


def csr_condition(o) -> str:
    """kubectl's CONDITION of a CSR: Pending, or its conditions joined, plus Issued once signed."""
    conds = [c.type for c in o.status.conditions if c.status in ("True", "")] or ["Pending"]
    if o.status.certificate and "Approved" in conds:
        conds.append("Issued")
    return ",".join(conds)


def csr_duration(o) -> str:
    return human_duration(o.spec.expirationSeconds) if o.spec.HasField("expirationSeconds") else "<none>"


# -- the columns -----------------------------------------------------------------------------

class Row:
    """What a row's cells share: the clock, and a pod's summary (READY, STATUS and RESTARTS
    come from one pass over its container statuses)."""
    __slots__ = ("obj", "now", "_summary")

    def __init__(self, obj: Message, now: dt.datetime):
        self.obj, self.now, self._summary = obj, now, None

    @property
    def summary(self) -> tuple[str, int, int, int]:
        if self._summary is None:
            self._summary = pod_summary(self.obj)
        return self._summary


Cell = Callable[[Message, Row], object]


@dataclass(frozen=True)
class Column:
    """A meta.k8s.io/v1 TableColumnDefinition and the function that fills its cells."""
    name: str
    cell: Cell
    description: str
    type: str = "string"
    format: str = ""
    priority: int = 0

    def definition(self) -> dict:
        return {"name": self.name, "type": self.type, "format": self.format,
                "description": self.description, "priority": self.priority}


# descriptions: the first sentence of the field's documentation, as Kubernetes takes it from
# the field's SwaggerDoc
_NAME = Column("Name", lambda o, r: o.metadata.name,
               "Name must be unique within a namespace.", format="name")
_AGE = Column("Age", lambda o, r: age(o.metadata.creationTimestamp, r.now),
              "CreationTimestamp is a timestamp representing the server time when this object was created.")


def _c(name: str, fn: Callable[[Message], object], description: str, **kw) -> Column:
    """A column whose cell does not depend on the clock."""
    return Column(name, lambda o, r: fn(o), description, **kw)


def _unknown(v: str) -> str:
    return v or "<unknown>"


COLUMNS: dict[str, tuple[Column, ...]] = {
    "Pod": (
        _NAME,
        Column("Ready", lambda o, r: f"{r.summary[1]}/{r.summary[2]}",
               "The aggregate readiness state of this pod for accepting traffic."),
        Column("Status", lambda o, r: r.summary[0], "The aggregate status of the containers in this pod."),
        Column("Restarts", lambda o, r: pod_restarts(o, r.now, r.summary[3]),
               "The number of times the containers in this pod have been restarted and when the last "
               "container in this pod has restarted."),
        _AGE,
        _c("IP", pod_ip, "podIP address allocated to the pod.", priority=1),
        _c("Node", lambda o: o.spec.nodeName or "<none>",
           "NodeName indicates in which node this pod is scheduled.", priority=1),
        _c("Nominated Node", lambda o: o.status.nominatedNodeName or "<none>",
           "nominatedNodeName is set only when this pod preempts other pods on the node, but it cannot "
           "be scheduled right away as preemption victims receive their graceful termination periods.",
           priority=1),
        # this API has no readinessGates: kubectl's cell for a pod without them
        _c("Readiness Gates", lambda o: "<none>",
           "If specified, all readiness gates will be evaluated for pod readiness.", priority=1),
    ),
    "Node": (
        _NAME,
        _c("Status", node_status, "The status of the node"),
        _c("Roles", node_roles, "The roles of the node"),
        _AGE,
        _c("Version", lambda o: o.status.nodeInfo.kubeletVersion, "Kubelet Version reported by the node."),
        _c("Internal-IP", node_ip, "List of addresses reachable to the node.", priority=1),
        _c("External-IP", lambda o: node_ip(o, "ExternalIP"), "List of addresses reachable to the node.",
           priority=1),
        _c("OS-Image", lambda o: _unknown(o.status.nodeInfo.osImage),
           "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).", priority=1),
        _c("Kernel-Version", lambda o: _unknown(o.status.nodeInfo.kernelVersion),
           "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).", priority=1),
        _c("Container-Runtime", lambda o: _unknown(o.status.nodeInfo.containerRuntimeVersion),
           "ContainerRuntime Version reported by the node through runtime remote API "
           "(e.g. containerd://1.4.2).", priority=1),
    ),
    "Namespace": (
        _NAME,
        _c("Status", lambda o: o.status.phase or "Active", "The status of the namespace"),
        _AGE,
    ),
    "Lease": (
        _NAME,
        _c("Holder", lambda o: o.spec.holderIdentity,
           "holderIdentity contains the identity of the holder of a current lease."),
        _AGE,
    ),
    "Event": (
        Column("Last Seen", lambda o, r: event_last_timestamp(o, r.now),
               "The time at which the most recent occurrence of this event was recorded."),
        _c("Type", lambda o: o.type, "Type of this event (Normal, Warning), new types could be added in the future"),
        _c("Reason", lambda o: o.reason, "This should be a short, machine understandable string that gives "
           "the reason for the transition into the object's current status."),
        _c("Object", event_object, "The object that this event is about."),
        _c("Subobject", lambda o: o.involvedObject.fieldPath,
           "If referring to a piece of an object instead of an entire object, this string should contain a "
           "valid JSON/Go field access statement, such as desiredState.manifest.containers[2].", priority=1),
        _c("Source", event_source, "The component reporting this event.", priority=1),
        _c("Message", lambda o: o.message.strip(), "A human-readable description of the status of this operation."),
        Column("First Seen", lambda o, r: event_first_seen(o, r.now),
               "The time at which the event was first recorded. (Time of server receipt is in TypeMeta.)",
               priority=1),
        # a singleton event of the events.k8s.io API has no count: kubectl shows 1
        _c("Count", lambda o: o.count or 1, "The number of times this event has occurred.", priority=1),
        Column("Name", _NAME.cell, _NAME.description, format="name", priority=1),
    ),
    "CertificateSigningRequest": (
        _NAME,
        _AGE,
        _c("SignerName", lambda o: o.spec.signerName,
           "signerName indicates the requested signer, and is a qualified name."),
        _c("Requestor", lambda o: o.spec.username,
           "request contains an x509 certificate signing request encoded in a \"CERTIFICATE REQUEST\" "
           "PEM block."),
        _c("RequestedDuration", csr_duration,
           "expirationSeconds is the requested duration of validity of the issued certificate."),
        _c("Condition", csr_condition,
           "conditions applied to the request. Known conditions are \"Approved\", \"Denied\", and \"Failed\"."),
    ),
    "Secret": (
        _NAME,
        _c("Type", lambda o: o.type, "Used to facilitate programmatic handling of secret data."),
        _c("Data", lambda o: len(o.data), "Data contains the secret data."),
        _AGE,
    ),
    "ConfigMap": (
        _NAME,
        _c("Data", lambda o: len(o.data) + len(o.binaryData), "Data contains the configuration data."),
        _AGE,
    ),
    "Service": (
        _NAME,
        _c("Type", lambda o: o.spec.type or "ClusterIP", "type determines how the Service is exposed."),
        _c("Cluster-IP", service_cluster_ip,
           "clusterIP is the IP address of the service and is usually assigned randomly."),
        _c("External-IP", service_external_ip, "externalIPs is a list of IP addresses for which nodes in "
           "the cluster will also accept traffic for this service."),
        _c("Port(s)", service_ports, "The list of ports that are exposed by this service."),
        _AGE,
        _c("Selector", lambda o: format_labels(o.spec.selector), "Route service traffic to pods with label "
           "keys and values matching this selector.", priority=1),
    ),
    "Endpoints": (
        _NAME,
        _c("Endpoints", endpoints_list, "The set of all endpoints is the union of all subsets."),
        _AGE,
    ),
    "EndpointSlice": (
        _NAME,
        _c("AddressType", lambda o: o.addressType,
           "addressType specifies the type of address carried by this EndpointSlice."),
        _c("Ports", slice_ports, "ports specifies the list of network ports exposed by each endpoint in "
           "this slice."),
        _c("Endpoints", slice_endpoints, "endpoints is a list of unique endpoints in this slice."),
        _AGE,
    ),
}
DEFAULT: tuple[Column, ...] = (_NAME, _AGE)  # a kind without a printer of its own


def columns(kind: str) -> tuple[Column, ...]:
    """Every column of the kind's table, wide ones included, in Kubernetes' order."""
    return COLUMNS.get(kind, DEFAULT)


def cells(kind: str, obj: Message, now: dt.datetime | None = None) -> list:
    r = Row(obj, now or meta.now())
    return [c.cell(obj, r) for c in columns(kind)]


def table(kind: kinds.Kind, objs: list[Message], raws: list[bytes] | None = None, *,
          now: dt.datetime | None = None) -> api_pb2.Table:
    """The api.proto Table of these objects: every column, one row each, the row's object as
    an Any (from `raws`, the stored bytes, when given, so it is not encoded again)."""
    now = now or meta.now()
    cols = columns(kind.kind)
    t = api_pb2.Table(columnDefinitions=[
        api_pb2.TableColumnDefinition(name=c.name, type=c.type, format=c.format, description=c.description,
                                      priority=c.priority) for c in cols])
    url = kind.type_url
    for i, o in enumerate(objs):
        r = Row(o, now)
        row = t.rows.add()
        row.cells.values.extend(_value(c.cell(o, r)) for c in cols)
        row.object.type_url = url
        row.object.value = raws[i] if raws is not None else o.SerializeToString()
    return t


def _value(v) -> struct_pb2.Value:
    if isinstance(v, int) and not isinstance(v, bool):
        return struct_pb2.Value(number_value=v)
    return struct_pb2.Value(string_value=v if isinstance(v, str) else str(v))


def cell_values(row: api_pb2.TableRow) -> list:
    """A row's cells as Python values again (ListValue numbers are doubles: integers back)."""
    out: list = []
    for v in row.cells.values:
        which = v.WhichOneof("kind")
        if which == "number_value":
            n = v.number_value
            out.append(int(n) if n.is_integer() else n)
        elif which == "string_value":
            out.append(v.string_value)
        elif which == "bool_value":
            out.append(v.bool_value)
        else:
            out.append(None)
    return out
