"""Tables computed on the server (kubelab.api.printers) and their two encodings: the gRPC face's
api.proto Table (kubelab's own `get` renders it) and meta.k8s.io/v1 JSON of the HTTP face
(master/apiserver/rest/table.py, what kubectl prints). Kubernetes' column names, types and
priorities are from pkg/printers/internalversion/printers.go."""
from __future__ import annotations

import datetime as dt

import pytest
from aiohttp.test_utils import make_mocked_request

from kubelab.api import kinds, printers
from kubelab.api.v1 import api_pb2
from kubelab.api.v1 import objects_pb2 as v1
from kubelab.cli import get
from kubelab.cli import printers as cli
from kubelab.errors import BadRequest
from master.apiserver.rest import table
from master.apiserver.rest.app import RestAPI
from master.apiserver.rest.errors import HTTPError

NOW = dt.datetime(2026, 11, 24, 12, 0, 0, tzinfo=dt.timezone.utc)
TABLE_V1 = "application/json;as=Table;v=v1;g=meta.k8s.io"
KUBECTL_ACCEPT = f"{TABLE_V1},application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"


def ago(**kw) -> str:
    return (NOW - dt.timedelta(**kw)).strftime("%Y-%m-%dT%H:%M:%SZ")


def defs(kind: str) -> list[tuple[str, str, int]]:
    return [(c.name, c.type, c.priority) for c in printers.columns(kind)]


def test_column_definitions_are_kubernetes():
    assert defs("Pod") == [("Name", "string", 0), ("Ready", "string", 0), ("Status", "string", 0),
                           ("Restarts", "string", 0), ("Age", "string", 0), ("IP", "string", 1),
                           ("Node", "string", 1), ("Nominated Node", "string", 1), ("Readiness Gates", "string", 1)]
    assert defs("Node") == [("Name", "string", 0), ("Status", "string", 0), ("Roles", "string", 0),
                            ("Age", "string", 0), ("Version", "string", 0), ("Internal-IP", "string", 1),
                            ("External-IP", "string", 1), ("OS-Image", "string", 1), ("Kernel-Version", "string", 1),
                            ("Container-Runtime", "string", 1)]
    assert [(n, p) for n, _, p in defs("Event")] == [
        ("Last Seen", 0), ("Type", 0), ("Reason", 0), ("Object", 0), ("Subobject", 1), ("Source", 1),
        ("Message", 0), ("First Seen", 1), ("Count", 1), ("Name", 1)]
    assert [n for n, _, _ in defs("Service")] == ["Name", "Type", "Cluster-IP", "External-IP", "Port(s)", "Age",
                                                  "Selector"]
    assert defs("Service")[-1][2] == 1
    assert [n for n, _, _ in defs("Namespace")] == ["Name", "Status", "Age"]
    assert [n for n, _, _ in defs("Endpoints")] == ["Name", "Endpoints", "Age"]
    assert [n for n, _, _ in defs("EndpointSlice")] == ["Name", "AddressType", "Ports", "Endpoints", "Age"]
    assert [n for n, _, _ in defs("Lease")] == ["Name", "Holder", "Age"]
    assert [n for n, _, _ in defs("Secret")] == ["Name", "Type", "Data", "Age"]
    assert [n for n, _, _ in defs("ConfigMap")] == ["Name", "Data", "Age"]
    assert [n for n, _, _ in defs("CertificateSigningRequest")] == [
        "Name", "Age", "SignerName", "Requestor", "RequestedDuration", "Condition"]
    assert [n for n, _, _ in defs("Binding")] == ["Name", "Age"]  # no printer of its own
    for k in kinds.KINDS:
        cols = printers.columns(k.kind)
        # the NAME column is the one kubectl prefixes with the kind (pod/x): format "name"
        assert [c.name for c in cols if c.format == "name"] == ["Name"], k.kind
        assert all(c.description for c in cols), k.kind


def running_pod() -> v1.Pod:
    p = v1.Pod()
    p.metadata.name, p.metadata.namespace = "web", "dev"
    p.metadata.creationTimestamp = ago(minutes=3, seconds=20)
    p.metadata.labels["app"] = "web"
    p.spec.nodeName = "n1"
    p.spec.containers.add(name="a")
    p.spec.containers.add(name="b")
    p.status.phase = "Running"
    p.status.podIP = "10.244.1.5"
    p.status.podIPs.add(ip="10.244.1.5")
    p.status.conditions.add(type="Ready", status="False")
    a = p.status.containerStatuses.add(name="a", ready=True, restartCount=2)
    a.state.running.startedAt = ago(minutes=1)
    a.lastState.terminated.finishedAt = ago(minutes=1, seconds=5)
    b = p.status.containerStatuses.add(name="b")
    b.state.waiting.reason = "CrashLoopBackOff"
    return p


def test_pod_cells():
    assert printers.cells("Pod", running_pod(), NOW) == [
        "web", "1/2", "CrashLoopBackOff", "2 (65s ago)", "3m20s", "10.244.1.5", "n1", "<none>", "<none>"]
    p = v1.Pod()
    p.metadata.name = "pending"
    p.spec.containers.add(name="c")
    assert printers.cells("Pod", p, NOW) == ["pending", "0/1", "Pending", "0", "<unknown>", "<none>", "<none>",
                                             "<none>", "<none>"]
    p.status.podIPs.add(ip="fd00::5")  # the first of podIPs, as kubectl shows it
    assert printers.cells("Pod", p, NOW)[5] == "fd00::5"
    # times a client wrote without a zone (or not as times at all) never fail the table
    p.metadata.creationTimestamp = "2026-11-24T11:59:00"
    cs = p.status.containerStatuses.add(name="c", restartCount=1)
    cs.lastState.terminated.finishedAt = "2026-11-24T11:58:00"
    assert printers.cells("Pod", p, NOW)[3:5] == ["1 (2m ago)", "60s"]
    cs.lastState.terminated.finishedAt = "yesterday"
    assert printers.cells("Pod", p, NOW)[3] == "1"


def test_node_cells():
    n = v1.Node()
    n.metadata.name, n.metadata.creationTimestamp = "n1", ago(days=3, hours=2)
    n.metadata.labels["node-role.kubernetes.io/control-plane"] = ""
    n.status.conditions.add(type="Ready", status="True")
    n.spec.unschedulable = True
    n.status.nodeInfo.kubeletVersion = "v1.37.0-kubelab"
    n.status.addresses.add(type="InternalIP", address="192.168.56.10")
    n.status.nodeInfo.kernelVersion = "6.1.0"
    assert printers.cells("Node", n, NOW) == [
        "n1", "Ready,SchedulingDisabled", "control-plane", "3d2h", "v1.37.0-kubelab", "192.168.56.10", "<none>",
        "<unknown>", "6.1.0", "<unknown>"]


def test_event_cells():
    e = v1.Event(type="Warning", reason="BackOff", message="Back-off restarting\n", count=3)
    e.metadata.name = "web.1"
    e.involvedObject.kind, e.involvedObject.name = "Pod", "web"
    e.involvedObject.fieldPath = "spec.containers{a}"
    e.source.component, e.source.host = "kubelet", "n1"
    e.firstTimestamp, e.lastTimestamp = ago(minutes=10), ago(minutes=2)
    # LAST SEEN of `get` is the last time only; `describe` says "2m (x3 over 10m)"
    assert printers.cells("Event", e, NOW) == [
        "2m", "Warning", "BackOff", "pod/web", "spec.containers{a}", "kubelet, n1", "Back-off restarting", "10m",
        3, "web.1"]
    single = v1.Event(reportingComponent="scheduler", eventTime="2026-11-24T11:59:00.000000Z")
    single.involvedObject.kind = "Node"
    c = printers.cells("Event", single, NOW)
    assert (c[0], c[3], c[5], c[7], c[8]) == ("60s", "node", "scheduler", "60s", 1)


def test_other_kinds_cells():
    s = v1.Secret(type="Opaque")
    s.metadata.name, s.metadata.creationTimestamp = "s", ago(hours=5)
    s.data["a"], s.data["b"] = b"1", b"2"
    assert printers.cells("Secret", s, NOW) == ["s", "Opaque", 2, "5h"]
    cm = v1.ConfigMap()
    cm.metadata.name = "cm"
    cm.data["a"] = "1"
    cm.binaryData["b"] = b"2"
    assert printers.cells("ConfigMap", cm, NOW)[:2] == ["cm", 2]
    ns = v1.Namespace()
    ns.metadata.name = "dev"
    assert printers.cells("Namespace", ns, NOW)[:2] == ["dev", "Active"]
    ns.status.phase = "Terminating"
    assert printers.cells("Namespace", ns, NOW)[1] == "Terminating"
    lease = v1.Lease()
    lease.metadata.name = "n1"
    lease.spec.holderIdentity = "n1"
    assert printers.cells("Lease", lease, NOW)[:2] == ["n1", "n1"]
    csr = v1.CertificateSigningRequest()
    csr.metadata.name, csr.metadata.creationTimestamp = "csr-1", ago(seconds=30)
    csr.spec.signerName, csr.spec.username = "kubernetes.io/kube-apiserver-client-kubelet", "system:bootstrap:abc"
    csr.spec.expirationSeconds = 86400
    csr.status.conditions.add(type="Approved", status="True")
    csr.status.certificate = b"PEM"
    assert printers.cells("CertificateSigningRequest", csr, NOW) == [
        "csr-1", "30s", "kubernetes.io/kube-apiserver-client-kubelet", "system:bootstrap:abc", "24h",
        "Approved,Issued"]
    svc = v1.Service()
    svc.metadata.name = "web"
    svc.spec.type, svc.spec.clusterIP = "NodePort", "10.96.0.20"
    svc.spec.ports.add(port=80, nodePort=30080, protocol="TCP")
    svc.spec.selector["app"] = "web"
    assert printers.cells("Service", svc, NOW) == ["web", "NodePort", "10.96.0.20", "<none>", "80:30080/TCP",
                                                   "<unknown>", "app=web"]
    ep = v1.Endpoints()
    ep.metadata.name = "web"
    ep.subsets.add(addresses=[v1.EndpointAddress(ip="10.244.1.5")], ports=[v1.EndpointPort(port=80)])
    assert printers.cells("Endpoints", ep, NOW)[:2] == ["web", "10.244.1.5:80"]
    sl = v1.EndpointSlice(addressType="IPv4")
    sl.metadata.name = "web-x"
    sl.ports.add(port=80)
    sl.endpoints.add(addresses=["10.244.1.5"])
    assert printers.cells("EndpointSlice", sl, NOW)[:4] == ["web-x", "IPv4", "80", "10.244.1.5"]
    b = v1.Binding()
    b.metadata.name = "x"
    assert printers.cells("Binding", b, NOW) == ["x", "<unknown>"]


def test_proto_table_carries_every_column_integers_and_the_stored_bytes():
    s = v1.Secret(type="Opaque")
    s.metadata.name = "s"
    s.data["a"] = b"1"
    raw = s.SerializeToString() + b"\x00"  # the store's bytes: sent as they are, never encoded again
    t = printers.table(kinds.BY_RESOURCE["secrets"], [s], [raw], now=NOW)
    assert [c.name for c in t.columnDefinitions] == ["Name", "Type", "Data", "Age"]
    assert t.columnDefinitions[0].format == "name"
    assert t.rows[0].cells.values[2].WhichOneof("kind") == "number_value"
    assert printers.cell_values(t.rows[0]) == ["s", "Opaque", 1, "<unknown>"]
    assert type(printers.cell_values(t.rows[0])[2]) is int  # a ListValue number is a double
    assert t.rows[0].object.type_url == kinds.BY_RESOURCE["secrets"].type_url
    assert t.rows[0].object.value == raw
    empty = printers.table(kinds.BY_RESOURCE["pods"], [])
    assert len(empty.columnDefinitions) == 9 and not empty.rows


def test_cli_renders_the_server_table_like_kubectl():
    p = running_pod()
    t = printers.table(kinds.BY_RESOURCE["pods"], [p], now=NOW)
    assert cli.render(t, [p]) == [["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
                                  ["web", "1/2", "CrashLoopBackOff", "2 (65s ago)", "3m20s"]]
    wide = cli.render(t, [p], wide=True, with_namespace=True, show_labels=True)
    assert wide[0] == ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "NOMINATED NODE",
                       "READINESS GATES", "LABELS"]
    assert wide[1][0] == "dev" and wide[1][-1] == "app=web" and wide[1][6:8] == ["10.244.1.5", "n1"]
    assert cli.render(t, [p], headers=False) == [["web", "1/2", "CrashLoopBackOff", "2 (65s ago)", "3m20s"]]
    # kubectl cuts a string cell at its first line break; a null cell is empty; numbers as such
    assert [cli.cell_text(v) for v in ("a\nb", "a\rb", None, 3, "x")] == ["a...", "a...", "", "3", "x"]


def test_get_sorts_events_with_their_rows():
    def ev(name, last):
        e = v1.Event(lastTimestamp=last)
        e.metadata.name = name
        return e
    objs = [ev("late", ago(minutes=1)), ev("early", ago(minutes=9))]
    t = printers.table(kinds.BY_RESOURCE["events"], objs, now=NOW)
    objs, t = get.sort_events(objs, t)
    assert [o.metadata.name for o in objs] == ["early", "late"]
    assert [printers.cell_values(r)[-1] for r in t.rows] == ["early", "late"]
    assert len(t.columnDefinitions) == 10


# -- the HTTP face's encoding ------------------------------------------------------------------

API = RestAPI(None)


def req(accept: str = KUBECTL_ACCEPT, query: str = ""):
    return make_mocked_request("GET", "/api/v1/pods" + (f"?{query}" if query else ""), headers={"Accept": accept})


def test_accept_negotiation():
    assert table.wants_table(req()) == table.TableRequest("v1", "Metadata")
    beta = table.wants_table(req("application/json;as=Table;v=v1beta1;g=meta.k8s.io"))
    assert beta.api_version == "meta.k8s.io/v1beta1"
    assert table.wants_table(req("application/json")) is None
    assert table.wants_table(req("application/json;as=Table;v=v2;g=meta.k8s.io, application/json")) is None
    assert table.wants_table(req(query="includeObject=Object")).include == "Object"
    with pytest.raises(HTTPError) as e:
        table.wants_table(req("application/json;as=Table;v=v2;g=meta.k8s.io"))
    assert e.value.reason == "NotAcceptable"
    with pytest.raises(BadRequest, match='unrecognized includeObject value: "All"'):
        table.wants_table(req(query="includeObject=All"))


def list_response(objs, kind="pods") -> api_pb2.ListResponse:
    return api_pb2.ListResponse(resourceVersion="42", continue_token="tok",
                                table=printers.table(kinds.BY_RESOURCE[kind], objs, now=NOW))


def test_list_table_json_and_include_object():
    p = running_pod()
    body = table.list_table(API, list_response([p]), req())
    assert (body["kind"], body["apiVersion"]) == ("Table", "meta.k8s.io/v1")
    assert body["metadata"] == {"resourceVersion": "42", "continue": "tok"}
    assert body["columnDefinitions"][7] == {
        "name": "Nominated Node", "type": "string", "format": "", "priority": 1,
        "description": printers.columns("Pod")[7].description}
    row = body["rows"][0]
    assert row["cells"] == ["web", "1/2", "CrashLoopBackOff", "2 (65s ago)", "3m20s", "10.244.1.5", "n1", "<none>",
                            "<none>"]
    assert row["object"]["kind"] == "PartialObjectMetadata"
    assert row["object"]["apiVersion"] == "meta.k8s.io/v1"
    assert row["object"]["metadata"]["namespace"] == "dev" and "spec" not in row["object"]
    whole = table.list_table(API, list_response([p]), req(query="includeObject=Object"))["rows"][0]["object"]
    assert (whole["kind"], whole["apiVersion"], whole["spec"]["nodeName"]) == ("Pod", "v1", "n1")
    assert "object" not in table.list_table(API, list_response([p]), req(query="includeObject=None"))["rows"][0]
    empty = table.list_table(API, list_response([]), req())
    assert empty["rows"] == [] and len(empty["columnDefinitions"]) == 9
    s = v1.Secret(type="Opaque")
    s.metadata.name = "s"
    s.data["k"] = b"v"
    assert table.list_table(API, list_response([s], "secrets"), req())["rows"][0]["cells"][2] == 1  # a JSON number


def test_object_table_has_the_object_resource_version():
    p = running_pod()
    p.metadata.resourceVersion = "7"
    resp = api_pb2.ObjectResponse(object=printers.table(kinds.BY_RESOURCE["pods"], [p]).rows[0].object,
                                  table=printers.table(kinds.BY_RESOURCE["pods"], [p], now=NOW))
    body = table.object_table(API, resp, req("application/json;as=Table;v=v1beta1;g=meta.k8s.io"))
    assert body["metadata"] == {"resourceVersion": "7"}
    assert body["apiVersion"] == "meta.k8s.io/v1beta1"
    assert body["rows"][0]["object"]["apiVersion"] == "meta.k8s.io/v1beta1"
    assert len(body["rows"]) == 1


def test_watch_tables_send_columns_on_the_first_event_only():
    r = req()
    p = running_pod()
    bookmark = v1.Pod()
    bookmark.metadata.resourceVersion = "50"
    mark = table.event_table(API, bookmark, r)  # a bookmark before any object: no row
    assert mark["rows"] == [] and mark["metadata"] == {"resourceVersion": "50"}
    first = table.event_table(API, p, r)
    assert len(first["columnDefinitions"]) == 9 and len(first["rows"]) == 1
    assert first["rows"][0]["cells"][0] == "web"
    later = table.event_table(API, p, r)
    assert later["columnDefinitions"] is None and later["rows"][0]["cells"][0] == "web"
    assert table.event_table(API, p, req())["columnDefinitions"] is not None  # another stream starts over


class _OldServer:
    """A ResourceClient's view of an API server that ignores `table` (answers items only)."""

    def __init__(self, objs):
        self.objs, self.kind, self.namespace, self.client = objs, kinds.BY_RESOURCE["pods"], "old", self

    async def call(self, name, req, retries=0):
        a = [printers.table(self.kind, [o]).rows[0].object for o in self.objs]
        if name == "List":
            return api_pb2.ListResponse(items=a, resourceVersion="9")
        return api_pb2.ObjectResponse(object=a[0])

    def _ns(self):
        return self.namespace

    def _decode(self, a):
        return v1.Pod.FromString(a.value)


async def test_get_falls_back_to_its_own_rows_without_server_tables():
    rc = _OldServer([running_pod()])
    objs, t, rv = await get.list_table(rc, "", "")
    assert ([o.metadata.name for o in objs], t, rv) == (["web"], None, "9")
    objs, t, failed = await get.get_named(rc, ["web"], table=True)
    assert ([o.metadata.name for o in objs], t, failed) == (["web"], None, 0)
