"""Tables computed on the server, end to end: a `kubelab control-plane` answers `table` on gRPC
Get/List, meta.k8s.io/v1 Tables over HTTP (lists, one object, watch streams), and the real
kubectl and kubelab's own `get` print the same header and cells from them.

No kubelet: the pods are bound to a node name by their spec and given a status through the
status subresource, so every column (IP, NODE, READY 1/1, Running) has a value to compare.
"""
from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
import re
import ssl
import subprocess
from pathlib import Path

import aiohttp
import pytest
import yaml

from kubelab.api.v1 import api_pb2
from kubelab.api.v1 import objects_pb2 as v1
from kubelab.cli import get

from .conftest import KUBELAB, ROOT

KUBECTL = str(ROOT / ".venv" / "bin" / "kubectl")
NS = "tables"
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"
PODS = ("web-0", "web-1", "db-0")


def pod(name: str) -> v1.Pod:
    p = v1.Pod()
    p.metadata.name, p.metadata.namespace = name, NS
    p.metadata.labels["app"] = name.split("-")[0]
    p.spec.nodeName = "node-a" if name != "db-0" else "node-b"
    p.spec.containers.add(name="c", image="busybox")
    return p


@pytest.fixture(scope="module")
def cluster(control_plane):
    """The module's pods: two Running and Ready with an IP, one still Pending."""
    async def setup():
        async with control_plane.client() as c:
            ns = v1.Namespace()
            ns.metadata.name = NS
            await c.namespaces().create(ns)
            for i, name in enumerate(PODS):
                p = await c.pods(NS).create(pod(name))
                if name == "db-0":
                    continue
                p.status.phase = "Running"
                p.status.podIP = f"10.244.1.{i + 10}"
                p.status.podIPs.add(ip=p.status.podIP)
                p.status.conditions.add(type="Ready", status="True")
                cs = p.status.containerStatuses.add(name="c", ready=True, started=True, image="busybox")
                cs.state.running.startedAt = p.metadata.creationTimestamp
                await c.pods(NS).update_status(p)
            # an event seen long ago: its LAST SEEN and FIRST SEEN ("10d") hold while the test runs
            long_ago = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
            e = v1.Event(type="Warning", reason="BackOff", message="Back-off restarting failed container",
                         count=4, firstTimestamp=long_ago, lastTimestamp=long_ago)
            e.metadata.name, e.metadata.namespace = "db-0.1", NS
            e.involvedObject.kind, e.involvedObject.name, e.involvedObject.namespace = "Pod", "db-0", NS
            e.involvedObject.fieldPath = "spec.containers{c}"
            e.source.component, e.source.host = "kubelet", "node-b"
            await c.events(NS).create(e)
            # a node no pod is bound to (the node lifecycle controller may mark it NotReady
            # any time: its STATUS is left out of the comparison)
            n = v1.Node()
            n.metadata.name = "tables-node"
            n.metadata.labels["node-role.kubernetes.io/control-plane"] = ""
            n = await c.nodes().create(n)
            n.status.conditions.add(type="Ready", status="True", reason="KubeletReady")
            n.status.addresses.add(type="InternalIP", address="192.0.2.10")
            info = n.status.nodeInfo
            info.kubeletVersion, info.osImage, info.kernelVersion = "v1.37.0", "Debian GNU/Linux 12", "6.1.0-test"
            info.containerRuntimeVersion = "kubelab://0.1"
            await c.nodes().update_status(n)
    asyncio.run(setup())
    return control_plane


def kubeconfig_parts(cp, d: Path) -> tuple[str, ssl.SSLContext]:
    """The HTTP server kubectl uses (from the admin kubeconfig) and a TLS context with its
    client certificate (its files written to d)."""
    doc = yaml.safe_load(Path(cp.config).read_text())
    cluster, user = doc["clusters"][0]["cluster"], doc["users"][0]["user"]
    for name, key in (("ca", cluster["certificate-authority-data"]), ("crt", user["client-certificate-data"]),
                      ("key", user["client-key-data"])):
        (d / name).write_bytes(base64.b64decode(key))
    ctx = ssl.create_default_context(cafile=str(d / "ca"))
    ctx.load_cert_chain(str(d / "crt"), str(d / "key"))
    return cluster["server"], ctx


async def test_grpc_table_answers(cluster):
    async with cluster.client() as c:
        r = await c.call("List", api_pb2.ListRequest(resource="pods", namespace=NS, table=True))
        assert [col.name for col in r.table.columnDefinitions] == [
            "Name", "Ready", "Status", "Restarts", "Age", "IP", "Node", "Nominated Node", "Readiness Gates"]
        assert [col.priority for col in r.table.columnDefinitions] == [0] * 5 + [1] * 4
        assert not r.items  # the objects come once, in the rows
        got = {}
        for row in r.table.rows:
            cells = [v.string_value for v in row.cells.values]
            obj = v1.Pod.FromString(row.object.value)
            assert obj.metadata.name == cells[0]
            got[cells[0]] = cells[1:4] + cells[5:7]
        assert got == {"web-0": ["1/1", "Running", "0", "10.244.1.10", "node-a"],
                       "web-1": ["1/1", "Running", "0", "10.244.1.11", "node-a"],
                       "db-0": ["0/1", "Pending", "0", "<none>", "node-b"]}
        one = await c.call("Get", api_pb2.GetRequest(resource="pods", namespace=NS, name="web-0", table=True))
        assert v1.Pod.FromString(one.object.value).metadata.name == "web-0"
        assert [v.string_value for v in one.table.rows[0].cells.values][:3] == ["web-0", "1/1", "Running"]
        # kubelab get follows the continue tokens of table pages
        objs, table, rv = await get.list_table(c.pods(NS), "", "", page_size=1)
        assert sorted(o.metadata.name for o in objs) == sorted(PODS) and len(table.rows) == 3
        assert [v.string_value for v in table.rows[0].cells.values][0] == objs[0].metadata.name
        assert int(rv) >= max(int(o.metadata.resourceVersion) for o in objs)
        plain = await c.call("Get", api_pb2.GetRequest(resource="pods", namespace=NS, name="web-0"))
        assert not plain.HasField("table")  # only when asked
        ns = await c.call("List", api_pb2.ListRequest(resource="namespaces", table=True,
                                                      fieldSelector=f"metadata.name={NS}"))
        assert [v.string_value for v in ns.table.rows[0].cells.values][:2] == [NS, "Active"]


async def test_http_tables_lists_objects_and_watch(cluster, tmp_path):
    server, ctx = kubeconfig_parts(cluster, tmp_path)
    url = f"{server}/api/v1/namespaces/{NS}/pods"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s:
        async with s.get(url, headers={"Accept": TABLE}, params={"labelSelector": "app=web"}) as r:
            assert r.status == 200, await r.text()
            body = await r.json()
        assert (body["kind"], body["apiVersion"]) == ("Table", "meta.k8s.io/v1")
        assert int(body["metadata"]["resourceVersion"]) > 0
        assert [c["name"] for c in body["columnDefinitions"]][-1] == "Readiness Gates"
        assert sorted(r["cells"][0] for r in body["rows"]) == ["web-0", "web-1"]
        assert {r["object"]["kind"] for r in body["rows"]} == {"PartialObjectMetadata"}
        async with s.get(f"{url}/db-0", headers={"Accept": TABLE}, params={"includeObject": "Object"}) as r:
            one = await r.json()
        assert one["rows"][0]["cells"][:3] == ["db-0", "0/1", "Pending"]
        assert one["rows"][0]["object"]["spec"]["nodeName"] == "node-b"
        assert one["metadata"]["resourceVersion"] == one["rows"][0]["object"]["metadata"]["resourceVersion"]
        async with s.get(url, headers={"Accept": "application/json;as=Table;v=v9;g=meta.k8s.io"}) as r:
            assert r.status == 406
            assert (await r.json())["reason"] == "NotAcceptable"
        async with s.get(url, headers={"Accept": TABLE}, params={"includeObject": "Everything"}) as r:
            assert r.status == 400
            assert "includeObject" in (await r.json())["message"]

        # a watch: the current pods as ADDED, then a change; the columns come with the first only
        params = {"watch": "1", "fieldSelector": "metadata.name=db-0", "timeoutSeconds": "30"}
        async with s.get(url, headers={"Accept": TABLE}, params=params) as w:
            assert w.status == 200
            first = json.loads(await asyncio.wait_for(w.content.readline(), 30))
            assert first["type"] == "ADDED"
            assert first["object"]["kind"] == "Table"
            assert len(first["object"]["columnDefinitions"]) == 9
            assert first["object"]["rows"][0]["cells"][:3] == ["db-0", "0/1", "Pending"]
            async with cluster.client() as c:
                p = await c.pods(NS).get("db-0")
                p.metadata.labels["touched"] = "yes"
                await c.pods(NS).update(p)
            second = json.loads(await asyncio.wait_for(w.content.readline(), 30))
            assert second["type"] == "MODIFIED"
            assert second["object"]["columnDefinitions"] is None
            assert second["object"]["rows"][0]["object"]["metadata"]["labels"]["touched"] == "yes"


def cells(text: str, drop: tuple[str, ...] = ("AGE",)) -> list[list[list[str]]]:
    """A printed output's tables (one per type, blank lines between) as cells, without the
    `drop` columns (AGE: the two commands run a moment apart). Columns are 3+ spaces apart and
    a cell holds at most one space."""
    out = []
    for section in text.strip().split("\n\n"):
        rows = [re.split(r"\s{2,}", line.strip()) for line in section.strip().splitlines()]
        keep = [i for i, h in enumerate(rows[0]) if h not in drop]
        out.append([[r[i] for i in keep if i < len(r)] for r in rows])
    return out


@pytest.mark.parametrize("args", [("get", "pods", "-n", NS, "-o", "wide"),
                                  ("get", "pods", "-A", "--show-labels", "-l", "app"),
                                  ("get", "pod", "web-1", "db-0", "-n", NS),
                                  ("get", "ns", NS, "default"),
                                  ("get", "svc,ep,endpointslices", "-n", "default", "-o", "wide"),
                                  ("get", "endpointslices,leases", "-A", "-o", "name"),
                                  ("get", "events", "-n", NS, "-o", "wide"),
                                  ("get", "nodes", "tables-node", "-o", "wide")])
def test_kubectl_and_kubelab_print_the_same_table(cluster, args, tmp_path):
    env = dict(os.environ, KUBECONFIG=str(cluster.config), HOME=str(tmp_path))
    env.pop("KUBELAB_CONFIG", None)
    theirs = subprocess.run([KUBECTL, *args], env=env, capture_output=True, text=True, timeout=60)
    assert theirs.returncode == 0, theirs.stderr
    ours = subprocess.run(KUBELAB + list(args), env=cluster.env, capture_output=True, text=True, timeout=60)
    assert ours.returncode == 0, ours.stderr
    drop = ("AGE", "STATUS") if args[1] == "nodes" else ("AGE",)
    assert cells(ours.stdout, drop) == cells(theirs.stdout, drop)
    assert len(cells(theirs.stdout)[0]) > 1  # rows, not only a header
