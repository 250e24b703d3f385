"""How the CLI prints objects the way kubectl does: tables with kubectl's columns (and its
STATUS logic for pods and nodes), ages like `5s`/`3m2s`/`5h`/`3d`, and -o yaml|json|name.
"""
from __future__ import annotations

import datetime as dt
import json

import yaml
from google.protobuf import json_format
from google.protobuf.message import Message

from kubelab import meta
from kubelab.api import kinds


def age(ts: str, now: dt.datetime | None = None) -> str:
    t = meta.parse_time(ts)
    if t is None:
        return "<unknown>"
    s = int(((now or meta.now()) - t).total_seconds())
    if s < 0:
        s = 0
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
    d = h // 24
    if d < 8:
        return f"{d}d{h % 24}h" if h % 24 else f"{d}d"
    return f"{d}d" if d < 365 * 2 else f"{d // 365}y"


def pod_status(p) -> str:
    """kubectl's STATUS column: a waiting/terminated reason beats the phase."""
    reason = p.status.reason or p.status.phase or "Pending"
    inits = list(p.spec.initContainers)
    for i, cs in enumerate(p.status.initContainerStatuses):
        sidecar = i < len(inits) and inits[i].restartPolicy == "Always"
        st = cs.state
        if st.HasField("terminated") and st.terminated.exitCode == 0:
            continue
        if sidecar and cs.started:
            continue
        if st.HasField("terminated"):
            reason = "Init:" + (st.terminated.reason or f"ExitCode:{st.terminated.exitCode}")
        elif st.HasField("waiting") and st.waiting.reason and st.waiting.reason != "PodInitializing":
            reason = "Init:" + st.waiting.reason
        else:
            reason = f"Init:{i}/{len(inits)}"
        break
    else:
        running = False
        for cs in reversed(p.status.containerStatuses):
            st = cs.state
            if st.HasField("waiting") and st.waiting.reason:
                reason = st.waiting.reason
            elif st.HasField("terminated") and st.terminated.reason:
                reason = st.terminated.reason
            elif st.HasField("terminated"):
                reason = f"Signal:{st.terminated.signal}" if st.terminated.signal else f"ExitCode:{st.terminated.exitCode}"
            elif st.HasField("running") and cs.ready:
                running = True
        if reason == "Completed" and running:
            reason = "Running"
    if p.metadata.deletionTimestamp:
        reason = "Unknown" if p.status.reason == "NodeLost" else "Terminating"
    return reason


def pod_ready(p) -> str:
    total = len(p.spec.containers) + sum(1 for c in p.spec.initContainers if c.restartPolicy == "Always")
    ready = sum(1 for cs in p.status.containerStatuses if cs.ready)
    ready += sum(1 for cs in p.status.initContainerStatuses if cs.ready)
    return f"{ready}/{total}"


def pod_restarts(p) -> str:
    return str(sum(cs.restartCount for cs in p.status.containerStatuses) +
               sum(cs.restartCount for cs in p.status.initContainerStatuses))


def node_status(n) -> str:
    ready = next((c for c in n.status.conditions if c.type == "Ready"), None)
    s = "Ready" if ready is not None and ready.status == "True" else (
        "NotReady" if ready is not None else "Unknown")
    if n.spec.unschedulable:
        s += ",SchedulingDisabled"
    return s


def node_roles(n) -> str:
    roles = sorted(k.split("/", 1)[1] for k in n.metadata.labels if k.startswith("node-role.kubernetes.io/"))
    return ",".join(r for r in roles if r) or "<none>"


def node_ip(n, kind: str = "InternalIP") -> str:
    return next((a.address for a in n.status.addresses if a.type == kind), "<none>")


def _columns(kind: str, wide: bool):
    if kind == "Pod":
        cols = [("NAME", lambda o: o.metadata.name), ("READY", pod_ready), ("STATUS", pod_status),
                ("RESTARTS", pod_restarts), ("AGE", lambda o: age(o.metadata.creationTimestamp))]
        if wide:
            cols += [("IP", lambda o: o.status.podIP or "<none>"), ("NODE", lambda o: o.spec.nodeName or "<none>"),
                     ("NOMINATED NODE", lambda o: o.status.nominatedNodeName or "<none>"),
                     ("READINESS GATES", lambda o: "<none>")]
        return cols
    if kind == "Node":
        cols = [("NAME", lambda o: o.metadata.name), ("STATUS", node_status), ("ROLES", node_roles),
                ("AGE", lambda o: age(o.metadata.creationTimestamp)),
                ("VERSION", lambda o: o.status.nodeInfo.kubeletVersion)]
        if wide:
            cols += [("INTERNAL-IP", node_ip), ("EXTERNAL-IP", lambda o: node_ip(o, "ExternalIP")),
                     ("OS-IMAGE", lambda o: o.status.nodeInfo.osImage or "<unknown>"),
                     ("KERNEL-VERSION", lambda o: o.status.nodeInfo.kernelVersion or "<unknown>"),
                     ("CONTAINER-RUNTIME", lambda o: o.status.nodeInfo.containerRuntimeVersion or "<unknown>")]
        return cols
    if kind == "Namespace":
        return [("NAME", lambda o: o.metadata.name), ("STATUS", lambda o: o.status.phase or "Active"),
                ("AGE", lambda o: age(o.metadata.creationTimestamp))]
    if kind == "Lease":
        return [("NAME", lambda o: o.metadata.name), ("HOLDER", lambda o: o.spec.holderIdentity),
                ("AGE", lambda o: age(o.metadata.creationTimestamp))]
    if kind == "Event":
        return [("LAST SEEN", lambda o: age(o.lastTimestamp or o.eventTime or o.metadata.creationTimestamp)),
                ("TYPE", lambda o: o.type), ("REASON", lambda o: o.reason),
                ("OBJECT", lambda o: f"{o.involvedObject.kind.lower()}/{o.involvedObject.name}"),
                ("MESSAGE", lambda o: o.message)]
    return [("NAME", lambda o: o.metadata.name), ("AGE", lambda o: age(o.metadata.creationTimestamp))]


def table_rows(objs: list[Message], *, wide: bool = False, with_namespace: bool = False,
               headers: bool = True) -> list[list[str]]:
    if not objs:
        return []
    cols = _columns(kinds.kind_of(objs[0]).kind, wide)
    if with_namespace:
        cols = [("NAMESPACE", lambda o: o.metadata.namespace)] + cols
    rows = [[h for h, _ in cols]] if headers else []
    rows += [[str(f(o)) for _, f in cols] for o in objs]
    return rows


def format_table(rows: list[list[str]], widths: list[int] | None = None) -> str:
    if not rows:
        return ""
    widths = widths or [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        out.append("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return "\n".join(out)


def to_dict(obj: Message) -> dict:
    """An object in Kubernetes' shape: apiVersion and kind first, then metadata, spec, status."""
    k = kinds.kind_of(obj)
    body = json_format.MessageToDict(obj, preserving_proto_field_name=True)
    if k.kind == "Pod" or k.kind == "Node":
        body.setdefault("spec", {})
        body.setdefault("status", {})
    return {"apiVersion": k.api_version, "kind": k.kind, **body}


def to_list(objs: list[Message]) -> dict:
    return {"apiVersion": "v1", "items": [to_dict(o) for o in objs], "kind": "List",
            "metadata": {"resourceVersion": ""}}


def dump(objs: list[Message], fmt: str, *, single: bool) -> str:
    if fmt == "name":
        return "\n".join(f"{kinds.kind_of(o).singular}/{o.metadata.name}" for o in objs)
    doc = to_dict(objs[0]) if single and len(objs) == 1 else to_list(objs)
    if fmt == "json":
        return json.dumps(doc, indent=4)
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False).rstrip()
