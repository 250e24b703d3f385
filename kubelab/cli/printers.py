"""How the CLI shows objects the way kubectl does: the columns of `get` (with kubectl's STATUS
logic for pods and nodes), ages like `5s`/`3m2s`/`5h`/`3d`, -o yaml|json|name, and the
column layout of Go's text/tabwriter that both `get` tables and `describe` pages use.

Pure functions over API messages: nothing here talks to the API server.
"""
from __future__ import annotations

import datetime as dt
import json

import yaml
from google.protobuf.message import Message

from kubelab import meta
from kubelab.api import kinds

from . import manifest

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


def age(ts: str, now: dt.datetime | None = None) -> str:
    """Time since an RFC 3339 timestamp, as the AGE column shows it; `<unknown>` if unset."""
    t = meta.parse_time(ts)
    if t is None:
        return "<unknown>"
    return human_duration(((now or meta.now()) - t).total_seconds())


def describe_time(ts: str) -> str:
    """The long form `describe` uses (Go's RFC1123Z): `Mon, 24 Nov 2026 20:51:39 +0000`."""
    t = meta.parse_time(ts)
    return t.strftime("%a, %d %b %Y %H:%M:%S %z") if t else "<unset>"


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


def pod_restarts(p, now: dt.datetime | None = None) -> str:
    """RESTARTS, with kubectl's `(5m ago)` for the most recent container exit."""
    n = pod_summary(p)[3]
    times = (meta.parse_time(cs.lastState.terminated.finishedAt)
             for cs in [*p.status.initContainerStatuses, *p.status.containerStatuses] if cs.restartCount)
    last = max((t for t in times if t is not None), default=None)
    if n and last is not None:
        return f"{n} ({human_duration(((now or meta.now()) - last).total_seconds())} ago)"
    return str(n)


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


def event_object(e) -> str:
    o = e.involvedObject
    return f"{o.kind.lower()}/{o.name}" if o.name else o.kind.lower()


def event_last_seen(e, now: dt.datetime | None = None) -> str:
    first = age(e.firstTimestamp or e.eventTime or e.metadata.creationTimestamp, now)
    last = age(e.lastTimestamp, now) if e.lastTimestamp else first
    return f"{last} (x{e.count} over {first})" if e.count > 1 else last


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


# -- get tables ------------------------------------------------------------------------------

def _name(o):
    return o.metadata.name


def csr_condition(o) -> str:
    """kubectl's CONDITION of a CSR: Pending, or its conditions joined, plus Issued once signed."""
    conds = [c.type for c in o.status.conditions if c.status in ("True", "")] or ["Pending"]
    if o.status.certificate and "Approved" in conds:
        conds.append("Issued")
    return ",".join(conds)


def csr_duration(o) -> str:
    return human_duration(o.spec.expirationSeconds) if o.spec.HasField("expirationSeconds") else "<none>"


def _age(o):
    return age(o.metadata.creationTimestamp)


def columns(kind: str, wide: bool) -> list[tuple[str, object]]:
    """(header, cell function) for each column `kubectl get` shows for this kind."""
    if kind == "Pod":
        cols = [("NAME", _name), ("READY", pod_ready), ("STATUS", pod_status), ("RESTARTS", pod_restarts),
                ("AGE", _age)]
        if wide:
            cols += [("IP", lambda o: o.status.podIP or "<none>"), ("NODE", lambda o: o.spec.nodeName or "<none>"),
                     ("NOMINATED NODE", lambda o: o.status.nominatedNodeName or "<none>"),
                     ("READINESS GATES", lambda o: "<none>")]
        return cols
    if kind == "Node":
        cols = [("NAME", _name), ("STATUS", node_status), ("ROLES", node_roles), ("AGE", _age),
                ("VERSION", lambda o: o.status.nodeInfo.kubeletVersion)]
        if wide:
            cols += [("INTERNAL-IP", node_ip), ("EXTERNAL-IP", lambda o: node_ip(o, "ExternalIP")),
                     ("OS-IMAGE", lambda o: o.status.nodeInfo.osImage or "<unknown>"),
                     ("KERNEL-VERSION", lambda o: o.status.nodeInfo.kernelVersion or "<unknown>"),
                     ("CONTAINER-RUNTIME", lambda o: o.status.nodeInfo.containerRuntimeVersion or "<unknown>")]
        return cols
    if kind == "Namespace":
        return [("NAME", _name), ("STATUS", lambda o: o.status.phase or "Active"), ("AGE", _age)]
    if kind == "Lease":
        return [("NAME", _name), ("HOLDER", lambda o: o.spec.holderIdentity), ("AGE", _age)]
    if kind == "Event":
        if wide:
            return [("LAST SEEN", event_last_seen), ("TYPE", lambda o: o.type), ("REASON", lambda o: o.reason),
                    ("OBJECT", event_object), ("SUBOBJECT", lambda o: o.involvedObject.fieldPath),
                    ("SOURCE", lambda o: o.source.component or o.reportingComponent),
                    ("MESSAGE", lambda o: o.message.strip()),
                    ("FIRST SEEN", lambda o: age(o.firstTimestamp or o.eventTime)),
                    ("COUNT", lambda o: o.count), ("NAME", _name)]
        return [("LAST SEEN", event_last_seen), ("TYPE", lambda o: o.type), ("REASON", lambda o: o.reason),
                ("OBJECT", event_object), ("MESSAGE", lambda o: o.message.strip())]
    if kind == "CertificateSigningRequest":
        return [("NAME", _name), ("AGE", _age), ("SIGNERNAME", lambda o: o.spec.signerName),
                ("REQUESTOR", lambda o: o.spec.username), ("REQUESTEDDURATION", csr_duration),
                ("CONDITION", csr_condition)]
    if kind == "Secret":
        return [("NAME", _name), ("TYPE", lambda o: o.type), ("DATA", lambda o: len(o.data)), ("AGE", _age)]
    if kind == "ConfigMap":
        return [("NAME", _name), ("DATA", lambda o: len(o.data) + len(o.binaryData)), ("AGE", _age)]
    if kind == "Service":
        cols = [("NAME", _name), ("TYPE", lambda o: o.spec.type or "ClusterIP"), ("CLUSTER-IP", service_cluster_ip),
                ("EXTERNAL-IP", service_external_ip), ("PORT(S)", service_ports), ("AGE", _age)]
        return cols + [("SELECTOR", lambda o: format_labels(o.spec.selector))] if wide else cols
    if kind == "Endpoints":
        return [("NAME", _name), ("ENDPOINTS", endpoints_list), ("AGE", _age)]
    if kind == "EndpointSlice":
        return [("NAME", _name), ("ADDRESSTYPE", lambda o: o.addressType), ("PORTS", slice_ports),
                ("ENDPOINTS", slice_endpoints), ("AGE", _age)]
    return [("NAME", _name), ("AGE", _age)]


def table_rows(objs: list[Message], *, wide: bool = False, with_namespace: bool = False,
               headers: bool = True, show_labels: bool = False) -> list[list[str]]:
    """The cells of `kubectl get`'s table (header row first unless headers=False)."""
    if not objs:
        return []
    cols = columns(kinds.kind_of(objs[0]).kind, wide)
    if with_namespace:
        cols = [("NAMESPACE", lambda o: o.metadata.namespace)] + cols
    if show_labels:
        cols = cols + [("LABELS", lambda o: ",".join(f"{k}={v}" for k, v in sorted(o.metadata.labels.items()))
                        or "<none>")]
    rows = [[h for h, _ in cols]] if headers else []
    rows += [[str(f(o)) for _, f in cols] for o in objs]
    return rows


def format_table(rows: list[list[str]], widths: list[int] | None = None, *, pad: int = 3,
                 minwidth: int = 6) -> str:
    """Columns as kubectl's tabwriter lays them out (cell + 3 spaces, at least 6 wide).

    Pass the same `widths` list for later rows (get -w): widths only grow, as with Go's
    tabwriter.RememberWidths, so a row printed later lines up with the header.
    """
    if not rows:
        return ""
    widths = widths if widths is not None else []
    for r in rows:
        for i, cell in enumerate(r[:-1]):
            w = max(len(cell) + pad, minwidth)
            if i >= len(widths):
                widths.append(w)
            elif w > widths[i]:
                widths[i] = w
    return "\n".join("".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + r[-1] for r in rows)


def tabwrite(lines: list[str], *, pad: int = 2) -> str:
    """Go's text/tabwriter over `\\t`-separated cells, as `kubectl describe` uses it.

    A column is aligned over a block of consecutive lines that all have a cell in it; a line
    with fewer cells ends the block. The last cell of a line is never padded.
    """
    rows = [line.split("\t") for line in lines]
    widths: list[list[int]] = [[] for _ in rows]

    def block(start: int, end: int, col: int) -> None:
        i = start
        while i < end:
            if col >= len(rows[i]) - 1:
                i += 1
                continue
            j = i
            while j < end and col < len(rows[j]) - 1:
                j += 1
            w = max(len(rows[k][col]) for k in range(i, j)) + pad
            for k in range(i, j):
                widths[k].append(w)
            block(i, j, col + 1)
            i = j

    block(0, len(rows), 0)
    return "\n".join("".join(c.ljust(w) for c, w in zip(r[:-1], ws)) + r[-1] for r, ws in zip(rows, widths))


# -- -o yaml|json|name ------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """YAML as kubectl (go-yaml) writes it: a string that would read back as another type
    ("22", "true", a timestamp) in double quotes, a multi-line one as a literal block."""


def _represent_str(dumper: yaml.SafeDumper, data: str):
    style = None
    if "\n" in data and not any(line != line.rstrip() for line in data.split("\n")):
        style = "|"
    elif dumper.resolve(yaml.ScalarNode, data, (True, False)) != "tag:yaml.org,2002:str":
        style = '"'
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _represent_str)


def to_list(objs: list[Message]) -> dict:
    return {"apiVersion": "v1", "items": [manifest.to_dict(o) for o in objs], "kind": "List",
            "metadata": {"resourceVersion": ""}}


def dump(objs: list[Message], fmt: str, *, single: bool) -> str:
    """-o name|json|yaml: one object as itself when single, otherwise a `kind: List`."""
    if fmt == "name":
        return "\n".join(f"{kinds.kind_of(o).singular}/{o.metadata.name}" for o in objs)
    doc = manifest.to_dict(objs[0]) if single and len(objs) == 1 else to_list(objs)
    if fmt == "json":
        return json.dumps(doc, indent=4)
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=True, default_flow_style=False, allow_unicode=True,
                     width=1 << 16).rstrip()
