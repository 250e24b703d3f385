"""`kubelab describe pod|node|namespace|service NAME`: kubectl's human-readable page for an object,
ending with its Events (what the scheduler, the kubelet and the controllers reported about it).

Lines are written as tab-separated cells and laid out by printers.tabwrite, the way kubectl
feeds Go's tabwriter, so the columns line up where kubectl's do.
"""
from __future__ import annotations

from kubelab import meta, quantity
from kubelab.api.v1 import objects_pb2 as v1
from kubelab.errors import NotFound

from . import printers
from .apply import LAST_APPLIED
from .common import CLIError, add_namespace_flags, cli_command, connect, err, resolve_kind, split_type_names


def register(sub, parents) -> None:
    p = sub.add_parser("describe", parents=parents, help="Show details of a specific resource")
    p.add_argument("resource", help="pod, node, namespace or service (po, no, ns, svc), or TYPE/NAME")
    p.add_argument("names", nargs="*")
    add_namespace_flags(p)
    p.set_defaults(func=run)


class Page:
    """A describe page: `key:<TAB>value` lines, nested two spaces per level."""

    def __init__(self):
        self.lines: list[str] = []

    def kv(self, key: str, value="", level: int = 0) -> None:
        self.lines.append(f"{'  ' * level}{key}:\t{value}")

    def head(self, key: str, level: int = 0) -> None:
        self.lines.append(f"{'  ' * level}{key}:")

    def map(self, key: str, m, level: int = 0) -> None:
        """Labels or annotations, one per line; like kubectl, without the last-applied
        annotation and with long values cut at 140 characters."""
        items = [(k, v.strip() if len(v.strip()) <= 140 else v.strip()[:140] + "...")
                 for k, v in sorted(m.items()) if k != LAST_APPLIED]
        if not items:
            return self.kv(key, "<none>", level)
        self.kv(key, f"{items[0][0]}={items[0][1]}", level)
        self.lines += [f"\t{k}={v}" for k, v in items[1:]]

    def items(self, key: str, values: list[str], level: int = 0) -> None:
        self.kv(key, values[0] if values else "<none>", level)
        self.lines += [f"\t{v}" for v in values[1:]]

    def table(self, rows, level: int = 1) -> None:
        self.lines += ["  " * level + "\t".join(str(c) for c in r) for r in rows]

    def text(self) -> str:
        return printers.tabwrite(self.lines)


def state(page: Page, label: str, st, level: int) -> None:
    if st.HasField("running"):
        page.kv(label, "Running", level)
        page.kv("Started", printers.describe_time(st.running.startedAt), level + 1)
    elif st.HasField("terminated"):
        t = st.terminated
        page.kv(label, "Terminated", level)
        page.kv("Reason", t.reason, level + 1)
        if t.message:
            page.kv("Message", t.message, level + 1)
        page.kv("Exit Code", t.exitCode, level + 1)
        if t.signal:
            page.kv("Signal", t.signal, level + 1)
        page.kv("Started", printers.describe_time(t.startedAt), level + 1)
        page.kv("Finished", printers.describe_time(t.finishedAt), level + 1)
    else:
        page.kv(label, "Waiting", level)
        if st.waiting.reason:
            page.kv("Reason", st.waiting.reason, level + 1)
        if st.waiting.message:
            page.kv("Message", st.waiting.message, level + 1)


def _port(v) -> str:
    return v.string_value if v.WhichOneof("kind") == "string_value" else str(int(v.number_value))


def probe(p) -> str:
    if p.HasField("exec"):
        how = f"exec [{' '.join(p.exec.command)}]"
    elif p.HasField("httpGet"):
        g = p.httpGet
        how = f"http-get {(g.scheme or 'HTTP').lower()}://{g.host}:{_port(g.port)}{g.path}"
    else:
        how = f"tcp-socket {p.tcpSocket.host}:{_port(p.tcpSocket.port)}"
    return (f"{how} delay={p.initialDelaySeconds}s timeout={p.timeoutSeconds or 1}s period={p.periodSeconds or 10}s "
            f"#success={p.successThreshold or 1} #failure={p.failureThreshold or 3}")


def containers(page: Page, title: str, specs, statuses) -> None:
    page.head(title)
    by_name = {s.name: s for s in statuses}
    for c in specs:
        s = by_name.get(c.name)
        page.head(c.name, 1)
        page.kv("Container ID", s.containerID if s else "", 2)
        page.kv("Image", c.image, 2)
        page.kv("Image ID", s.imageID if s else "", 2)
        ports = [f"{p.containerPort}/{p.protocol or 'TCP'}" for p in c.ports]
        page.kv("Ports" if len(ports) > 1 else "Port", ", ".join(ports) or "<none>", 2)
        page.kv("Host Ports" if len(ports) > 1 else "Host Port",
                ", ".join(f"{p.hostPort}/{p.protocol or 'TCP'}" for p in c.ports) or "<none>", 2)
        for label, words in (("Command", c.command), ("Args", c.args)):
            if words:
                page.head(label, 2)
                page.lines += ["      " + line for w in words for line in w.split("\n")]
        state(page, "State", s.state if s else v1.ContainerState(), 2)
        if s and s.lastState.ListFields():
            state(page, "Last State", s.lastState, 2)
        page.kv("Ready", "True" if s and s.ready else "False", 2)
        page.kv("Restart Count", s.restartCount if s else 0, 2)
        for what in ("limits", "requests"):
            m = getattr(c.resources, what)
            if m:
                page.head(what.capitalize(), 2)
                for k, v in sorted(m.items()):
                    page.kv(k, v, 3)
        for field, label in (("livenessProbe", "Liveness"), ("readinessProbe", "Readiness"),
                             ("startupProbe", "Startup")):
            if c.HasField(field):
                page.kv(label, probe(getattr(c, field)), 2)
        if c.env:
            page.head("Environment", 2)
            for e in c.env:
                page.kv(e.name, e.value, 3)
        else:
            page.kv("Environment", "<none>", 2)
        if c.volumeMounts:
            page.head("Mounts", 2)
            page.lines += [f"      {m.mountPath} from {m.name} ({'ro' if m.readOnly else 'rw'})" for m in c.volumeMounts]
        else:
            page.kv("Mounts", "<none>", 2)


async def object_events(client, obj, kind: str, namespace: str) -> list:
    sel = f"involvedObject.kind={kind},involvedObject.name={obj.metadata.name}"
    evs = (await client.events(namespace).list_all(field_selector=sel)).items
    uid = obj.metadata.uid
    evs = [e for e in evs if e.involvedObject.uid in ("", uid, obj.metadata.name)]
    return sorted(evs, key=lambda e: e.lastTimestamp or e.eventTime or e.metadata.creationTimestamp)


def events(page: Page, evs) -> None:
    if not evs:
        return page.kv("Events", "<none>")
    page.head("Events")
    rows = [["Type", "Reason", "Age", "From", "Message"], ["----", "------", "----", "----", "-------"]]
    rows += [[e.type, e.reason, printers.event_last_seen(e), e.source.component or e.reportingComponent,
              e.message.strip()] for e in evs]
    page.table(rows)


def _owner(m) -> str:
    o = next((o for o in m.ownerReferences if o.controller), None)
    return f"{o.kind}/{o.name}" if o else ""


async def describe_pod(client, pod) -> str:
    page, m, s = Page(), pod.metadata, pod.status
    page.kv("Name", m.name)
    page.kv("Namespace", m.namespace)
    page.kv("Priority", pod.spec.priority)
    page.kv("Node", f"{pod.spec.nodeName}/{s.hostIP}" if pod.spec.nodeName and s.hostIP else
            pod.spec.nodeName or "<none>")
    if s.startTime:
        page.kv("Start Time", printers.describe_time(s.startTime))
    page.map("Labels", m.labels)
    page.map("Annotations", m.annotations)
    if m.deletionTimestamp:
        until = meta.parse_time(m.deletionTimestamp)
        lasts = printers.human_duration((until - meta.now()).total_seconds()) if until else "<unknown>"
        page.kv("Status", f"Terminating (lasts {lasts})")
        page.kv("Termination Grace Period", f"{m.deletionGracePeriodSeconds}s")
    else:
        page.kv("Status", s.phase or "Pending")
    if s.reason:
        page.kv("Reason", s.reason)
    if s.message:
        page.kv("Message", s.message)
    page.kv("IP", s.podIP)
    if s.podIPs:
        page.head("IPs")
        for ip in s.podIPs:
            page.kv("IP", ip.ip, 1)
    else:
        page.kv("IPs", "<none>")
    if _owner(m):
        page.kv("Controlled By", _owner(m))
    if s.nominatedNodeName:
        page.kv("NominatedNodeName", s.nominatedNodeName)
    if pod.spec.initContainers:
        containers(page, "Init Containers", pod.spec.initContainers, s.initContainerStatuses)
    containers(page, "Containers", pod.spec.containers, s.containerStatuses)
    if s.conditions:
        page.head("Conditions")
        page.table([["Type", "Status"]] + [[f"{c.type} ", f"{c.status} "] for c in s.conditions])
    if pod.spec.volumes:
        page.head("Volumes")
        for vol in pod.spec.volumes:
            page.head(vol.name, 1)
            if vol.HasField("hostPath"):
                page.kv("Type", "HostPath (bare host directory volume)", 2)
                page.kv("Path", vol.hostPath.path, 2)
                page.kv("HostPathType", vol.hostPath.type, 2)
            else:
                page.kv("Type", "EmptyDir (a temporary directory that shares a pod's lifetime)", 2)
                page.kv("Medium", vol.emptyDir.medium, 2)
                page.kv("SizeLimit", vol.emptyDir.sizeLimit or "<unset>", 2)
    else:
        page.kv("Volumes", "<none>")
    page.kv("QoS Class", s.qosClass)
    page.items("Node-Selectors", [f"{k}={v}" for k, v in sorted(pod.spec.nodeSelector.items())])
    page.items("Tolerations", [
        f"{t.key}{'=' + t.value if t.value else ''}{':' + t.effect if t.effect else ''}"
        f"{' op=Exists' if t.operator == 'Exists' else ''}"
        f"{' for ' + str(t.tolerationSeconds) + 's' if t.HasField('tolerationSeconds') else ''}"
        for t in pod.spec.tolerations])
    events(page, await object_events(client, pod, "Pod", m.namespace))
    return page.text()


def pod_requests(p) -> dict[str, tuple[int, int]]:
    """{resource: (requests, limits)} summed over the app containers (cpu in millicores)."""
    out = {"cpu": [0, 0], "memory": [0, 0]}
    for c in p.spec.containers:
        for i, m in enumerate((c.resources.requests, c.resources.limits)):
            for r in out:
                if r in m:
                    try:
                        out[r][i] += quantity.amount(r, m[r])
                    except quantity.QuantityError:
                        pass
    return {r: tuple(v) for r, v in out.items()}


def _share(r: str, amount: int, allocatable: int) -> str:
    text = quantity.format_milli(amount) if r == "cpu" else quantity.format_bytes(amount)
    return f"{text} ({int(100 * amount / allocatable) if allocatable else 0}%)"


async def describe_node(client, node) -> str:
    page, m, s = Page(), node.metadata, node.status
    page.kv("Name", m.name)
    page.kv("Roles", printers.node_roles(node))
    page.map("Labels", m.labels)
    page.map("Annotations", m.annotations)
    page.kv("CreationTimestamp", printers.describe_time(m.creationTimestamp))
    page.items("Taints", [f"{t.key}{'=' + t.value if t.value else ''}:{t.effect}" for t in node.spec.taints])
    page.kv("Unschedulable", "true" if node.spec.unschedulable else "false")
    page.head("Lease")
    try:
        lease = await client.leases("kube-node-lease").get(m.name)
        page.kv("HolderIdentity", lease.spec.holderIdentity or "<unset>", 1)
        page.kv("AcquireTime", printers.describe_time(lease.spec.acquireTime), 1)
        page.kv("RenewTime", printers.describe_time(lease.spec.renewTime), 1)
    except NotFound:
        page.kv("Failed to get lease", f'leases.coordination.k8s.io "{m.name}" not found', 1)
    page.head("Conditions")
    page.table([["Type", "Status", "LastHeartbeatTime", "LastTransitionTime", "Reason", "Message"],
                ["----", "------", "-----------------", "------------------", "------", "-------"]] +
               [[c.type, c.status, printers.describe_time(c.lastHeartbeatTime),
                 printers.describe_time(c.lastTransitionTime), c.reason, c.message] for c in s.conditions])
    page.head("Addresses")
    for a in s.addresses:
        page.kv(a.type, a.address, 1)
    for title, res in (("Capacity", s.capacity), ("Allocatable", s.allocatable)):
        page.head(title)
        for k, v in sorted(res.items()):
            page.kv(k, v, 1)
    page.head("System Info")
    info = s.nodeInfo
    for label, value in (("Machine ID", info.machineID), ("System UUID", info.systemUUID), ("Boot ID", info.bootID),
                         ("Kernel Version", info.kernelVersion), ("OS Image", info.osImage),
                         ("Operating System", info.operatingSystem), ("Architecture", info.architecture),
                         ("Container Runtime Version", info.containerRuntimeVersion),
                         ("Kubelet Version", info.kubeletVersion), ("Kube-Proxy Version", info.kubeProxyVersion)):
        page.kv(label, value, 1)
    page.kv("PodCIDR", node.spec.podCIDR or "<none>")
    page.kv("PodCIDRs", ",".join(node.spec.podCIDRs) or node.spec.podCIDR or "<none>")
    if node.spec.providerID:
        page.kv("ProviderID", node.spec.providerID)
    pods = [p for p in (await client.pods("").list_all(field_selector=f"spec.nodeName={m.name}")).items
            if p.status.phase not in ("Succeeded", "Failed")]
    alloc = {}
    for r in ("cpu", "memory"):
        try:
            alloc[r] = quantity.amount(r, s.allocatable[r]) if r in s.allocatable else 0
        except quantity.QuantityError:
            alloc[r] = 0
    page.kv("Non-terminated Pods", f"({len(pods)} in total)")
    rows = [["Namespace", "Name", "CPU Requests", "CPU Limits", "Memory Requests", "Memory Limits", "Age"],
            ["---------", "----", "------------", "----------", "---------------", "-------------", "---"]]
    total = {"cpu": [0, 0], "memory": [0, 0]}
    for p in pods:
        req = pod_requests(p)
        for r in total:
            total[r][0] += req[r][0]
            total[r][1] += req[r][1]
        rows.append([p.metadata.namespace, p.metadata.name, _share("cpu", req["cpu"][0], alloc["cpu"]),
                     _share("cpu", req["cpu"][1], alloc["cpu"]), _share("memory", req["memory"][0], alloc["memory"]),
                     _share("memory", req["memory"][1], alloc["memory"]), printers.age(p.metadata.creationTimestamp)])
    page.table(rows)
    page.head("Allocated resources")
    page.lines.append("  (Total limits may be over 100 percent, i.e., overcommitted.)")
    page.table([["Resource", "Requests", "Limits"], ["--------", "--------", "------"]] +
               [[r, _share(r, total[r][0], alloc[r]), _share(r, total[r][1], alloc[r])] for r in ("cpu", "memory")])
    events(page, await object_events(client, node, "Node", ""))
    return page.text()


async def describe_namespace(client, ns) -> str:
    page = Page()
    page.kv("Name", ns.metadata.name)
    page.map("Labels", ns.metadata.labels)
    page.map("Annotations", ns.metadata.annotations)
    page.kv("Status", ns.status.phase or "Active")
    page.lines += ["", "No resource quota.", "", "No LimitRange resource."]
    return page.text()


def _target_port(sp) -> str:
    v = sp.targetPort
    if v.WhichOneof("kind") == "string_value":
        return v.string_value
    return str(int(v.number_value)) if v.WhichOneof("kind") == "number_value" else str(sp.port)


async def describe_service(client, svc) -> str:
    """kubectl's describeService; Endpoints per port from the Endpoints object (ready ones)."""
    page, m, spec = Page(), svc.metadata, svc.spec
    try:
        ep = await client.resource("endpoints", m.namespace).get(m.name)
    except NotFound:
        ep = v1.Endpoints()
    page.kv("Name", m.name)
    page.kv("Namespace", m.namespace)
    page.map("Labels", m.labels)
    page.map("Annotations", m.annotations)
    page.kv("Selector", printers.format_labels(spec.selector))
    page.kv("Type", spec.type)
    if spec.HasField("ipFamilyPolicy"):
        page.kv("IP Family Policy", spec.ipFamilyPolicy)
    page.kv("IP Families", ",".join(spec.ipFamilies) or "<none>")
    page.kv("IP", spec.clusterIP)
    page.kv("IPs", ",".join(spec.clusterIPs) or "<none>")
    if spec.externalIPs:
        page.kv("External IPs", ",".join(spec.externalIPs))
    for sp in spec.ports:
        name, proto = sp.name or "<unset>", sp.protocol or "TCP"
        page.lines.append(f"Port:\t{name}\t{sp.port}/{proto}")
        page.kv("TargetPort", f"{_target_port(sp)}/{proto}")
        if sp.nodePort:
            page.lines.append(f"NodePort:\t{name}\t{sp.nodePort}/{proto}")
        page.kv("Endpoints", endpoints_of_port(ep, sp.name))
    if not spec.ports:
        page.kv("Endpoints", printers.endpoints_list(ep))
    page.kv("Session Affinity", spec.sessionAffinity)
    if spec.externalTrafficPolicy:
        page.kv("External Traffic Policy", spec.externalTrafficPolicy)
    if spec.internalTrafficPolicy:
        page.kv("Internal Traffic Policy", spec.internalTrafficPolicy)
    events(page, await object_events(client, svc, "Service", m.namespace))
    return page.text()


def endpoints_of_port(ep, port_name: str) -> str:
    """kubectl's formatEndpoints(endpoints, {port name}): that port's ready addresses."""
    only = v1.Endpoints()
    for ss in ep.subsets:
        ports = [p for p in ss.ports if p.name == port_name]
        if ports:
            only.subsets.add(addresses=ss.addresses, ports=ports)
    return printers.endpoints_list(only)


DESCRIBERS = {"Pod": describe_pod, "Node": describe_node, "Namespace": describe_namespace,
              "Service": describe_service}
SUPPORTED = "pods, nodes, namespaces and services"


@cli_command
async def run(args) -> int:
    pairs = split_type_names(args.resource, args.names) if args.names or "/" in args.resource else []
    for kind, _ in pairs:
        if kind.kind not in DESCRIBERS:
            raise CLIError(f"describe supports {SUPPORTED}, not {kind.resource}")
    ns = args.namespace or "default"
    failed, pages = 0, []
    async with connect(args) as client:
        if not pairs:  # `describe pods`: every object of the type in the namespace
            kind = resolve_kind(args.resource)
            if kind.kind not in DESCRIBERS:
                raise CLIError(f"describe supports {SUPPORTED}, not {kind.resource}")
            objs = (await client.resource(kind, ns).list_all()).items
            pages = [await DESCRIBERS[kind.kind](client, o) for o in objs]
            if not objs:
                err(f"No resources found in {ns} namespace." if kind.namespaced else "No resources found")
        for kind, name in pairs:
            try:
                obj = await client.resource(kind, ns).get(name)
            except NotFound as e:
                err(e.kubectl())
                failed = 1
                continue
            pages.append(await DESCRIBERS[kind.kind](client, obj))
    if pages:
        print("\n\n\n".join(pages))
    return failed
