"""The CLI's pure logic: kubectl's AGE, STATUS/READY/RESTARTS columns, node status and roles,
table and describe layout, -o yaml|json|name, and the run/delete argument rules."""
import argparse
import datetime as dt
import json

import pytest
import yaml

from kubelab.api.v1 import objects_pb2 as v1
from kubelab.cli import delete, printers
from kubelab.cli.common import CLIError
from kubelab.cli.expose import build_service
from kubelab.cli.run import build_pod

NOW = dt.datetime(2026, 1, 10, tzinfo=dt.timezone.utc)


def ago(**kw) -> str:
    return (NOW - dt.timedelta(**kw)).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize("delta,want", [
    (dict(seconds=0), "0s"), (dict(seconds=5), "5s"), (dict(seconds=119), "119s"), (dict(minutes=2), "2m"),
    (dict(minutes=3, seconds=2), "3m2s"), (dict(minutes=10, seconds=30), "10m"), (dict(minutes=179), "179m"),
    (dict(hours=3), "3h"), (dict(hours=5, minutes=30), "5h30m"), (dict(hours=8, minutes=30), "8h"),
    (dict(hours=47), "47h"), (dict(days=3), "3d"), (dict(days=3, hours=5), "3d5h"), (dict(days=8, hours=5), "8d"),
    (dict(days=729), "729d"), (dict(days=730), "2y"), (dict(days=740), "2y10d"), (dict(days=9 * 365), "9y"),
])
def test_age_like_kubectl(delta, want):
    assert printers.age(ago(**delta), NOW) == want


def test_age_edges():
    assert printers.age("", NOW) == "<unknown>"
    assert printers.age(ago(seconds=-1), NOW) == "0s"  # clock skew of a second is "now"
    assert printers.age(ago(seconds=-30), NOW) == "<invalid>"
    assert printers.describe_time("2026-11-24T20:51:39Z") == "Tue, 24 Nov 2026 20:51:39 +0000"


def pod(*containers: str, phase: str = "Running", init: tuple[str, ...] = ()) -> v1.Pod:
    p = v1.Pod()
    p.metadata.name = "p"
    p.status.phase = phase
    for n in init:
        p.spec.initContainers.add(name=n, image="busybox")
        p.status.initContainerStatuses.add(name=n)
    for n in containers:
        p.spec.containers.add(name=n, image="busybox")
        p.status.containerStatuses.add(name=n)
    return p


def test_pod_status_reasons():
    p = pod("a", phase="Pending")
    assert printers.pod_status(v1.Pod()) == "Pending"
    p.status.containerStatuses[0].state.waiting.reason = "ContainerCreating"
    assert printers.pod_status(p) == "ContainerCreating"
    p = pod("a")
    p.status.containerStatuses[0].state.waiting.reason = "CrashLoopBackOff"
    assert printers.pod_status(p) == "CrashLoopBackOff"
    for reason, code, want in (("Completed", 0, "Completed"), ("Error", 1, "Error"),
                               ("OOMKilled", 137, "OOMKilled"), ("", 3, "ExitCode:3")):
        p = pod("a", phase="Failed")
        t = p.status.containerStatuses[0].state.terminated
        t.reason, t.exitCode = reason, code
        assert printers.pod_status(p) == want
    p = pod("a")
    p.status.containerStatuses[0].state.terminated.signal = 9
    assert printers.pod_status(p) == "Signal:9"


def test_pod_status_completed_beside_running_is_running():
    p = pod("job", "server")
    p.status.containerStatuses[0].state.terminated.reason = "Completed"
    p.status.containerStatuses[1].state.running.startedAt = ago(seconds=5)
    p.status.containerStatuses[1].ready = True
    assert printers.pod_status(p) == "NotReady"  # no Ready condition yet
    p.status.conditions.add(type="Ready", status="False")
    assert printers.pod_status(p) == "Running"


def test_pod_status_init_containers():
    p = pod("app", phase="Pending", init=("init",))
    assert printers.pod_status(p) == "Init:0/1"
    p.status.initContainerStatuses[0].state.waiting.reason = "CrashLoopBackOff"
    assert printers.pod_status(p) == "Init:CrashLoopBackOff"
    p.status.initContainerStatuses[0].state.terminated.exitCode = 2
    assert printers.pod_status(p) == "Init:ExitCode:2"
    p.status.initContainerStatuses[0].state.terminated.exitCode = 0
    p.status.containerStatuses[0].state.waiting.reason = "PodInitializing"
    assert printers.pod_status(p) == "PodInitializing"


def test_sidecar_counts_in_ready_column():
    p = pod("app", init=("proxy",))
    p.spec.initContainers[0].restartPolicy = "Always"
    s = p.status.initContainerStatuses[0]
    s.started, s.ready = True, True
    s.state.running.startedAt = ago(seconds=5)
    c = p.status.containerStatuses[0]
    c.ready = True
    c.state.running.startedAt = ago(seconds=5)
    assert printers.pod_ready(p) == "2/2"
    assert printers.pod_status(p) == "Running"


def test_terminating_and_node_lost():
    p = pod("a")
    p.metadata.deletionTimestamp = ago(seconds=-30)
    assert printers.pod_status(p) == "Terminating"
    p.status.reason = "NodeLost"
    assert printers.pod_status(p) == "Unknown"
    done = pod("a", phase="Succeeded")
    done.status.containerStatuses[0].state.terminated.reason = "Completed"
    done.metadata.deletionTimestamp = ago(seconds=-30)
    assert printers.pod_status(done) == "Completed"  # a finished pod is not "terminating"


def test_ready_and_restarts():
    p = pod("a", "b")
    a, b = p.status.containerStatuses
    a.ready = True
    a.state.running.startedAt = ago(minutes=1)
    b.state.waiting.reason = "CrashLoopBackOff"
    b.restartCount = 4
    b.lastState.terminated.finishedAt = ago(minutes=5)
    assert printers.pod_ready(p) == "1/2"
    assert printers.pod_restarts(p, NOW) == "4 (5m ago)"
    assert printers.pod_restarts(pod("a"), NOW) == "0"


def node(ready: str | None, **labels) -> v1.Node:
    n = v1.Node()
    n.metadata.name = "n1"
    n.metadata.labels.update(labels)
    if ready is not None:
        n.status.conditions.add(type="MemoryPressure", status="False")
        n.status.conditions.add(type="Ready", status=ready)
    return n


def test_node_status_and_roles():
    assert printers.node_status(node("True")) == "Ready"
    assert printers.node_status(node("False")) == "NotReady"
    assert printers.node_status(node("Unknown")) == "NotReady"
    assert printers.node_status(node(None)) == "Unknown"
    n = node("True")
    n.spec.unschedulable = True
    assert printers.node_status(n) == "Ready,SchedulingDisabled"
    assert printers.node_roles(node("True")) == "<none>"
    roles = node("True", **{"node-role.kubernetes.io/control-plane": "", "node-role.kubernetes.io/etcd": ""})
    assert printers.node_roles(roles) == "control-plane,etcd"


def test_get_table_columns_and_widths():
    p = pod("a", phase="Pending")
    p.metadata.namespace = "dev"
    p.metadata.creationTimestamp = meta_now_minus(5)
    rows = printers.table_rows([p], with_namespace=True)
    assert rows[0] == ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert rows[1][:5] == ["dev", "p", "0/1", "Pending", "0"]
    wide = printers.table_rows([p], wide=True)[0]
    assert wide[-4:] == ["IP", "NODE", "NOMINATED NODE", "READINESS GATES"]
    assert printers.table_rows([node("True")])[0] == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    assert printers.table_rows([p], headers=False)[0][0] == "p"
    widths: list[int] = []
    text = printers.format_table([["NAME", "STATUS", "AGE"], ["nginx", "Running", "5s"]], widths)
    assert text == "NAME    STATUS    AGE\nnginx   Running   5s"
    # a later row (get -w) keeps the header's columns; a longer cell widens them for what follows
    assert printers.format_table([["a", "Pending", "1s"]], widths) == "a       Pending   1s"
    assert printers.format_table([["ab", "x", "1s"]], [], pad=3, minwidth=6) == "ab    x     1s"


def meta_now_minus(seconds: int) -> str:
    return (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_event_columns():
    e = v1.Event(type="Warning", reason="BackOff", message="Back-off restarting failed container\n", count=3)
    e.involvedObject.kind, e.involvedObject.name = "Pod", "web"
    e.firstTimestamp, e.lastTimestamp = ago(minutes=10), ago(minutes=2)
    assert printers.event_last_seen(e, NOW) == "2m (x3 over 10m)"
    assert printers.event_object(e) == "pod/web"
    rows = printers.table_rows([e])
    assert rows[0] == ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    assert rows[1][1:] == ["Warning", "BackOff", "pod/web", "Back-off restarting failed container"]


def test_tabwrite_aligns_blocks_like_describe():
    lines = ["Name:\tnginx", "Namespace:\tdev", "Labels:\ta=1", "\tb=2", "Containers:", "  c:",
             "    Image:\tnginx", "    Restart Count:\t0", "Events:", "  Type\tReason\tMessage",
             "  Normal\tScheduled\tok"]
    assert printers.tabwrite(lines).split("\n") == [
        "Name:       nginx", "Namespace:  dev", "Labels:     a=1", "            b=2", "Containers:", "  c:",
        "    Image:          nginx", "    Restart Count:  0", "Events:", "  Type    Reason     Message",
        "  Normal  Scheduled  ok"]


def test_dump_shapes():
    p = pod("c")
    p.metadata.namespace, p.metadata.resourceVersion = "dev", "22"
    p.spec.terminationGracePeriodSeconds = 30
    p.metadata.annotations["note"] = "line one\nline two\n"
    probe = p.spec.containers[0].livenessProbe.httpGet
    probe.port.number_value = 80
    one = yaml.safe_load(printers.dump([p], "yaml", single=True))
    assert list(one)[:2] == ["apiVersion", "kind"] and one["kind"] == "Pod"
    assert one["spec"]["terminationGracePeriodSeconds"] == 30  # int64 as a number, not "30"
    assert one["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"] == 80
    text = printers.dump([p], "yaml", single=True)
    assert 'resourceVersion: "22"' in text  # quoted as kubectl quotes it
    assert "note: |\n      line one\n      line two\n" in text
    many = json.loads(printers.dump([p, p], "json", single=False))
    assert many["kind"] == "List" and len(many["items"]) == 2
    assert printers.dump([p, p], "name", single=False) == "pod/p\npod/p"


def run_args(**kw):
    base = dict(name="web", image="nginx", port=None, env=[], labels="", restart="Always", image_pull_policy="",
                command=False, namespace=None)
    return argparse.Namespace(**{**base, **kw})


def test_run_builds_kubectl_run_pod():
    p = build_pod(run_args(port=80, env=["A=1", "B=x=y"]), ["sleep", "10"])
    c = p.spec.containers[0]
    assert dict(p.metadata.labels) == {"run": "web"} and c.name == "web" and c.image == "nginx"
    assert c.ports[0].containerPort == 80 and [(e.name, e.value) for e in c.env] == [("A", "1"), ("B", "x=y")]
    assert list(c.args) == ["sleep", "10"] and not c.command
    p = build_pod(run_args(command=True, labels="app=web,tier=fe", restart="Never"), ["sh", "-c", "true"])
    assert list(p.spec.containers[0].command) == ["sh", "-c", "true"]
    assert dict(p.metadata.labels) == {"app": "web", "tier": "fe"} and p.spec.restartPolicy == "Never"
    with pytest.raises(CLIError, match="invalid env"):
        build_pod(run_args(env=["NOVALUE"]), [])


def test_delete_grace_rules():
    args = lambda **kw: argparse.Namespace(**{**dict(now=False, grace_period=-1, force=False), **kw})  # noqa: E731
    assert delete.grace_of(args()) == (None, False)
    assert delete.grace_of(args(now=True)) == (1, False)
    assert delete.grace_of(args(grace_period=0)) == (1, False)  # 0 only with --force, as kubectl
    assert delete.grace_of(args(grace_period=0, force=True)) == (0, True)
    assert delete.parse_duration("1m30s") == 90 and delete.parse_duration("45") == 45
    with pytest.raises(CLIError, match="invalid duration"):
        delete.parse_duration("soon")


def svc(name="web", type_="", cluster_ip="10.96.0.20", ports=((80, 0, "TCP"),), selector=None) -> v1.Service:
    s = v1.Service()
    s.metadata.name = name
    s.metadata.creationTimestamp = "2026-01-10T00:00:00Z"
    s.spec.type = type_
    if cluster_ip:
        s.spec.clusterIP = cluster_ip
        s.spec.clusterIPs.append(cluster_ip)
    for port, node_port, proto in ports:
        s.spec.ports.add(port=port, nodePort=node_port, protocol=proto)
    s.spec.selector.update(selector or {})
    return s


def test_service_columns_like_kubectl():
    rows = printers.table_rows([svc(type_="ClusterIP", selector={"run": "web", "app": "a"}),
                                svc("np", "NodePort", "10.96.0.21", ((81, 30123, "TCP"), (53, 30053, "UDP"))),
                                svc("hl", "ClusterIP", "None", ()), svc("x", "", "", ())], wide=True)
    assert rows[0] == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE", "SELECTOR"]
    assert [r[:5] + r[6:] for r in rows[1:]] == [
        ["web", "ClusterIP", "10.96.0.20", "<none>", "80/TCP", "app=a,run=web"],
        ["np", "NodePort", "10.96.0.21", "<none>", "81:30123/TCP,53:30053/UDP", "<none>"],
        ["hl", "ClusterIP", "None", "<none>", "<none>", "<none>"],
        ["x", "ClusterIP", "<none>", "<none>", "<none>", "<none>"]]
    assert printers.table_rows([svc()])[0] == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]


def endpoints(*subsets) -> v1.Endpoints:
    ep = v1.Endpoints()
    ep.metadata.name = "web"
    for ips, not_ready, ports in subsets:
        ep.subsets.add(addresses=[v1.EndpointAddress(ip=i) for i in ips],
                       notReadyAddresses=[v1.EndpointAddress(ip=i) for i in not_ready],
                       ports=[v1.EndpointPort(name=n, port=p) for n, p in ports])
    return ep


def test_endpoints_column_like_kubectl():
    assert printers.endpoints_list(endpoints()) == "<none>"
    assert printers.endpoints_list(endpoints(([], ["10.244.1.3"], [("", 80)]))) == "<none>"  # only ready ones
    assert printers.endpoints_list(endpoints((["10.244.1.3", "10.244.2.3"], [], [("", 8080)]))) == \
        "10.244.1.3:8080,10.244.2.3:8080"
    assert printers.endpoints_list(endpoints((["10.244.1.3", "10.244.2.3"], [], [("a", 80), ("b", 81)]))) == \
        "10.244.1.3:80,10.244.2.3:80,10.244.1.3:81 + 1 more..."
    assert printers.endpoints_list(endpoints((["10.244.1.3"], [], []))) == "10.244.1.3"  # headless, no ports
    assert printers.table_rows([endpoints()])[0] == ["NAME", "ENDPOINTS", "AGE"]


def test_endpointslice_columns_like_kubectl():
    s = v1.EndpointSlice(addressType="IPv4")
    s.metadata.name = "web-abcde"
    assert printers.table_rows([s])[1][:4] == ["web-abcde", "IPv4", "<unset>", "<unset>"]
    s.ports.add(port=8080)
    s.ports.add(name="dns")
    for i in range(5):
        s.endpoints.add(addresses=[f"10.244.1.{i}"])
    rows = printers.table_rows([s])
    assert rows[0] == ["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"]
    assert rows[1][:4] == ["web-abcde", "IPv4", "8080,dns", "10.244.1.0,10.244.1.1,10.244.1.2 + 2 more..."]


def expose_args(**kw) -> argparse.Namespace:
    base = dict(port="", target_port="", protocol="", type="", name="", selector="", labels="", cluster_ip="",
                session_affinity="")
    return argparse.Namespace(**{**base, **kw})


def test_expose_builds_kubectl_expose_service():
    p = v1.Pod()
    p.metadata.name, p.metadata.namespace = "web", "dev"
    p.metadata.labels.update({"run": "web"})
    c = p.spec.containers.add(name="web", image="busybox")
    c.ports.add(containerPort=8080)
    c.ports.add(containerPort=53, protocol="UDP")
    s = build_service(p, expose_args(port="80", target_port="http", type="NodePort", name="front"))
    assert (s.metadata.name, s.metadata.namespace, dict(s.metadata.labels), dict(s.spec.selector), s.spec.type) == \
        ("front", "dev", {"run": "web"}, {"run": "web"}, "NodePort")
    assert [(x.name, x.port, x.protocol, x.targetPort.string_value) for x in s.spec.ports] == [("", 80, "TCP", "http")]
    s = build_service(p, expose_args(port="80"))
    assert s.metadata.name == "web" and s.spec.ports[0].targetPort.number_value == 80  # target defaults to port
    s = build_service(p, expose_args())  # no --port: the container ports, named as kubectl names them
    assert [(x.name, x.port, x.protocol, int(x.targetPort.number_value)) for x in s.spec.ports] == \
        [("port-1", 8080, "TCP", 8080), ("port-2", 53, "UDP", 53)]
    del c.ports[:]
    with pytest.raises(CLIError, match="couldn't find port via --port flag or introspection"):
        build_service(p, expose_args())
    with pytest.raises(CLIError, match='invalid argument "x" for "--port" flag'):
        build_service(p, expose_args(port="x"))
    p.metadata.labels.clear()
    with pytest.raises(CLIError, match="the pod has no labels and cannot be exposed"):
        build_service(p, expose_args(port="80"))
    assert dict(build_service(p, expose_args(port="80", selector="app=x")).spec.selector) == {"app": "x"}
