"""`kubelab describe pod|node NAME`: kubectl's human-readable detail, ending with the
object's Events (what the scheduler, kubelet and controllers reported about it)."""
from __future__ import annotations

from kubelab import quantity
from kubelab.errors import NotFound

from . import printers
from .common import CLIError, add_namespace_flags, cli_command, connect, resolve_kind


def register(sub, parents) -> None:
    p = sub.add_parser("describe", parents=parents, help="Show details of a specific resource")
    p.add_argument("resource", help="pod or node (po, no), namespace")
    p.add_argument("names", nargs="+")
    add_namespace_flags(p)
    p.set_defaults(func=run)


class Out:
    def __init__(self):
        self.lines: list[str] = []

    def kv(self, key: str, value="", indent: int = 0) -> None:
        pad = "  " * indent
        self.lines.append(f"{pad}{key + ':':<{max(0, 20 - len(pad))}}{value}".rstrip())

    def map(self, key: str, m, indent: int = 0) -> None:
        items = sorted(m.items())
        if not items:
            self.kv(key, "<none>", indent)
            return
        self.kv(key, f"{items[0][0]}={items[0][1]}", indent)
        for k, v in items[1:]:
            self.lines.append(" " * 20 + f"{k}={v}")

    def line(self, s: str = "") -> None:
        self.lines.append(s)

    def table(self, rows, indent: int = 2) -> None:
        for r in printers.format_table(rows).splitlines():
            self.lines.append(" " * indent + r)


def state_lines(out: Out, label: str, st, indent: int) -> None:
    if st.HasField("running"):
        out.kv(label, "Running", indent)
        out.kv("Started", st.running.startedAt, indent + 1)
    elif st.HasField("terminated"):
        t = st.terminated
        out.kv(label, "Terminated", indent)
        out.kv("Reason", t.reason, indent + 1)
        out.kv("Exit Code", t.exitCode, indent + 1)
        out.kv("Started", t.startedAt, indent + 1)
        out.kv("Finished", t.finishedAt, indent + 1)
    elif st.HasField("waiting"):
        out.kv(label, "Waiting", indent)
        out.kv("Reason", st.waiting.reason, indent + 1)
        if st.waiting.message:
            out.kv("Message", st.waiting.message, indent + 1)


def containers(out: Out, title: str, specs, statuses) -> None:
    out.line(f"{title}:")
    by_name = {s.name: s for s in statuses}
    for c in specs:
        s = by_name.get(c.name)
        out.line(f"  {c.name}:")
        out.kv("Container ID", s.containerID if s else "", 2)
        out.kv("Image", c.image, 2)
        out.kv("Image ID", s.imageID if s else "", 2)
        ports = ", ".join(f"{p.containerPort}/{p.protocol or 'TCP'}" for p in c.ports) or "<none>"
        out.kv("Port", ports, 2)
        if c.command:
            out.kv("Command", " ".join(c.command), 2)
        if c.args:
            out.kv("Args", " ".join(c.args), 2)
        if s:
            state_lines(out, "State", s.state, 2)
            if s.lastState.ListFields():
                state_lines(out, "Last State", s.lastState, 2)
            out.kv("Ready", "True" if s.ready else "False", 2)
            out.kv("Restart Count", s.restartCount, 2)
        else:
            out.kv("State", "Waiting", 2)
            out.kv("Reason", "ContainerCreating", 3)
            out.kv("Ready", "False", 2)
            out.kv("Restart Count", 0, 2)
        for what in ("limits", "requests"):
            m = getattr(c.resources, what)
            if m:
                out.line(f"    {what.capitalize()}:")
                for k, v in sorted(m.items()):
                    out.kv(k, v, 3)
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            if c.HasField(probe):
                p = getattr(c, probe)
                how = (f"exec {list(p.exec.command)}" if p.HasField("exec") else
                       f"http-get {p.httpGet.scheme.lower() or 'http'}://:{_port(p.httpGet.port)}{p.httpGet.path}"
                       if p.HasField("httpGet") else f"tcp-socket :{_port(p.tcpSocket.port)}")
                out.kv({"livenessProbe": "Liveness", "readinessProbe": "Readiness", "startupProbe": "Startup"}[probe],
                       f"{how} delay={p.initialDelaySeconds}s timeout={p.timeoutSeconds}s period={p.periodSeconds}s "
                       f"#success={p.successThreshold} #failure={p.failureThreshold}", 2)
        if c.env:
            out.line("    Environment:")
            for e in c.env:
                out.line(f"      {e.name}:  {e.value}")
        else:
            out.kv("Environment", "<none>", 2)
        out.line("    Mounts:" if c.volumeMounts else "    Mounts:             <none>")
        for m in c.volumeMounts:
            out.line(f"      {m.mountPath} from {m.name} ({'ro' if m.readOnly else 'rw'})")


def _port(v) -> str:
    return v.string_value if v.WhichOneof("kind") == "string_value" else str(int(v.number_value))


def events_table(out: Out, events) -> None:
    if not events:
        out.kv("Events", "<none>")
        return
    out.line("Events:")
    rows = [["Type", "Reason", "Age", "From", "Message"], ["----", "------", "----", "----", "-------"]]
    for e in events:
        seen = printers.age(e.lastTimestamp or e.metadata.creationTimestamp)
        if e.count > 1:
            seen = f"{seen} (x{e.count} over {printers.age(e.firstTimestamp)})"
        rows.append([e.type, e.reason, seen, e.source.component or e.reportingComponent, e.message])
    out.table(rows)


async def object_events(client, obj, namespace: str):
    evs = (await client.events(namespace).list_all(
        field_selector=f"involvedObject.name={obj.metadata.name}")).items
    evs = [e for e in evs if not e.involvedObject.uid or e.involvedObject.uid == obj.metadata.uid]
    return sorted(evs, key=lambda e: e.lastTimestamp or e.metadata.creationTimestamp)


async def describe_pod(client, pod) -> str:
    out = Out()
    m, s = pod.metadata, pod.status
    out.kv("Name", m.name)
    out.kv("Namespace", m.namespace)
    out.kv("Priority", pod.spec.priority)
    out.kv("Node", f"{pod.spec.nodeName}/{s.hostIP}" if pod.spec.nodeName else "<none>")
    out.kv("Start Time", s.startTime or "<unset>")
    out.map("Labels", m.labels)
    out.map("Annotations", m.annotations)
    out.kv("Status", printers.pod_status(pod) if m.deletionTimestamp else (s.phase or "Pending"))
    if m.deletionTimestamp:
        out.kv("Termination Grace Period", f"{m.deletionGracePeriodSeconds}s")
    if s.reason:
        out.kv("Reason", s.reason)
    if s.message:
        out.kv("Message", s.message)
    out.kv("IP", s.podIP)
    out.line("IPs:" if s.podIPs else "IPs:                <none>")
    for ip in s.podIPs:
        out.kv("IP", ip.ip, 1)
    if pod.spec.initContainers:
        containers(out, "Init Containers", pod.spec.initContainers, s.initContainerStatuses)
    containers(out, "Containers", pod.spec.containers, s.containerStatuses)
    if s.conditions:
        out.line("Conditions:")
        out.table([["Type", "Status"]] + [[c.type, c.status] for c in s.conditions])
    out.line("Volumes:" if pod.spec.volumes else "Volumes:            <none>")
    for v in pod.spec.volumes:
        out.line(f"  {v.name}:")
        if v.HasField("emptyDir"):
            out.kv("Type", "EmptyDir (a temporary directory that shares a pod's lifetime)", 2)
            out.kv("Medium", v.emptyDir.medium, 2)
        elif v.HasField("hostPath"):
            out.kv("Type", "HostPath (bare host directory volume)", 2)
            out.kv("Path", v.hostPath.path, 2)
    out.kv("QoS Class", s.qosClass)
    out.kv("Node-Selectors", ",".join(f"{k}={v}" for k, v in sorted(pod.spec.nodeSelector.items())) or "<none>")
    tols = [f"{t.key}{':' + t.effect if t.effect else ''}"
            f"{' op=' + t.operator if t.operator == 'Exists' else '=' + t.value}"
            f"{' for ' + str(t.tolerationSeconds) + 's' if t.HasField('tolerationSeconds') else ''}"
            for t in pod.spec.tolerations]
    out.kv("Tolerations", tols[0] if tols else "<none>")
    for t in tols[1:]:
        out.line(" " * 20 + t)
    events_table(out, await object_events(client, pod, m.namespace))
    return "\n".join(out.lines)


async def describe_node(client, node) -> str:
    out = Out()
    m, s = node.metadata, node.status
    out.kv("Name", m.name)
    out.kv("Roles", printers.node_roles(node))
    out.map("Labels", m.labels)
    out.map("Annotations", m.annotations)
    out.kv("CreationTimestamp", m.creationTimestamp)
    taints = [f"{t.key}{'=' + t.value if t.value else ''}:{t.effect}" for t in node.spec.taints]
    out.kv("Taints", taints[0] if taints else "<none>")
    for t in taints[1:]:
        out.line(" " * 20 + t)
    out.kv("Unschedulable", "true" if node.spec.unschedulable else "false")
    out.line("Lease:")
    try:
        lease = await client.leases("kube-node-lease").get(m.name)
        out.kv("HolderIdentity", lease.spec.holderIdentity, 1)
        out.kv("AcquireTime", lease.spec.acquireTime or "<unset>", 1)
        out.kv("RenewTime", lease.spec.renewTime, 1)
    except NotFound:
        out.kv("HolderIdentity", "<unset>", 1)
    out.line("Conditions:")
    rows = [["Type", "Status", "LastHeartbeatTime", "LastTransitionTime", "Reason", "Message"],
            ["----", "------", "-----------------", "------------------", "------", "-------"]]
    rows += [[c.type, c.status, c.lastHeartbeatTime, c.lastTransitionTime, c.reason, c.message]
             for c in s.conditions]
    out.table(rows)
    out.line("Addresses:")
    for a in s.addresses:
        out.kv(a.type, a.address, 1)
    for title, res in (("Capacity", s.capacity), ("Allocatable", s.allocatable)):
        out.line(f"{title}:")
        for k, v in sorted(res.items()):
            out.kv(k, v, 1)
    out.line("System Info:")
    for label, field in (("Kernel Version", "kernelVersion"), ("OS Image", "osImage"),
                         ("Operating System", "operatingSystem"), ("Architecture", "architecture"),
                         ("Container Runtime Version", "containerRuntimeVersion"),
                         ("Kubelet Version", "kubeletVersion"), ("Kube-Proxy Version", "kubeProxyVersion")):
        out.line(f"  {label}:  {getattr(s.nodeInfo, field)}")
    out.kv("PodCIDR", node.spec.podCIDR or "<none>")
    pods = [p for p in (await client.pods("").list_all(field_selector=f"spec.nodeName={m.name}")).items
            if p.status.phase not in ("Succeeded", "Failed")]
    out.line(f"Non-terminated Pods:          ({len(pods)} in total)")
    rows = [["Namespace", "Name", "CPU Requests", "Memory Requests", "Age"],
            ["---------", "----", "------------", "---------------", "---"]]
    tot_cpu = tot_mem = 0
    for p in pods:
        cpu = sum(quantity.milli(c.resources.requests["cpu"]) for c in p.spec.containers if "cpu" in c.resources.requests)
        mem = sum(quantity.value(c.resources.requests["memory"]) for c in p.spec.containers
                  if "memory" in c.resources.requests)
        tot_cpu, tot_mem = tot_cpu + cpu, tot_mem + mem
        rows.append([p.metadata.namespace, p.metadata.name, quantity.format_milli(cpu) if cpu else "0 (0%)",
                     quantity.format_bytes(mem) if mem else "0 (0%)", printers.age(p.metadata.creationTimestamp)])
    out.table(rows)
    out.line("Allocated resources:")
    alloc_cpu = quantity.milli(s.allocatable["cpu"]) if "cpu" in s.allocatable else 0
    alloc_mem = quantity.value(s.allocatable["memory"]) if "memory" in s.allocatable else 0
    pct = lambda a, b: f"{100 * a // b}%" if b else "0%"  # noqa: E731
    out.table([["Resource", "Requests"], ["--------", "--------"],
               ["cpu", f"{quantity.format_milli(tot_cpu)} ({pct(tot_cpu, alloc_cpu)})"],
               ["memory", f"{quantity.format_bytes(tot_mem)} ({pct(tot_mem, alloc_mem)})"]])
    events_table(out, await object_events(client, node, "default"))
    return "\n".join(out.lines)


async def describe_namespace(client, ns) -> str:
    out = Out()
    out.kv("Name", ns.metadata.name)
    out.map("Labels", ns.metadata.labels)
    out.map("Annotations", ns.metadata.annotations)
    out.kv("Status", ns.status.phase)
    out.line()
    out.line("No resource quota.")
    out.line()
    out.line("No LimitRange resource.")
    return "\n".join(out.lines)


@cli_command
async def run(args) -> int:
    kind = resolve_kind(args.resource)
    fn = {"Pod": describe_pod, "Node": describe_node, "Namespace": describe_namespace}.get(kind.kind)
    if fn is None:
        raise CLIError(f"describe supports pods, nodes and namespaces, not {kind.resource}")
    async with connect(args) as client:
        args._server = getattr(client, "server", "")
        rc = client.resource(kind, args.namespace or "default")
        texts = [await fn(client, await rc.get(n)) for n in args.names]
    print("\n\n".join(texts))
    return 0
