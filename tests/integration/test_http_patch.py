"""PATCH, dry run, DeleteOptions and protobuf bodies through the HTTP face, against a real etcd
and an in-process API server with real TLS (one of each for the module): the three patch types
as kubectl sends them (label's merge patch, apply's three-way strategic patch, JSON patch)
stored through the same Update, dryRun=All on create/patch/delete storing nothing, a
propagationPolicy in the DeleteOptions body, and the bytes the real kubectl sends for `kubectl
create namespace/configmap/service` (tests/unit/data/kubectl-protobuf) creating the objects."""
from __future__ import annotations

import json
import ssl
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from kubelab import pki
from kubelab.etcd.client import EtcdClient
from kubelab.etcd.server import EtcdServer
from kubelab.etcd.txn import prefix_end
from master.apiserver.allocator import IP_PREFIX

from .conftest import start_apiserver

pytestmark = pytest.mark.asyncio(loop_scope="module")
DATA = Path(__file__).resolve().parents[1] / "unit" / "data" / "kubectl-protobuf"
PROTOBUF = "application/vnd.kubernetes.protobuf"


class Http:
    def __init__(self, base: str, ctx: ssl.SSLContext, session: aiohttp.ClientSession, etcd: EtcdClient):
        self.base, self.ctx, self.session, self.etcd = base, ctx, session, etcd

    async def req(self, method: str, path: str, body=None, *, ctype: str = "application/json"):
        data = body if isinstance(body, bytes) else (json.dumps(body) if body is not None else None)
        async with self.session.request(method, self.base + path, data=data, ssl=self.ctx,
                                        headers={"Content-Type": ctype, "Accept": "application/json"}) as r:
            text = await r.text()
            return r.status, (json.loads(text) if r.content_type == "application/json" else text)

    async def keys(self, prefix: bytes) -> list[bytes]:
        r = await self.etcd.range(prefix, range_end=prefix_end(prefix), keys_only=True)
        return [kv.key for kv in r.kvs]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def http(tmp_path_factory):
    d = tmp_path_factory.mktemp("httppatch")
    etcd = EtcdServer(d / "etcd", unsafe_no_fsync=True, log_path=d / "etcd.log")
    await etcd.start()
    h = ec = None
    try:
        h = await start_apiserver(etcd, d, http_listen="127.0.0.1:0")
        ca = (d / "pki" / "ca.crt").read_bytes()
        cert, key = pki.issue_cert(ca, (d / "pki" / "ca.key").read_bytes(), "kubernetes-admin",
                                   organizations=["system:masters"])
        (d / "admin.crt").write_bytes(cert)
        (d / "admin.key").write_bytes(key)
        ctx = ssl.create_default_context(cadata=ca.decode())
        ctx.load_cert_chain(d / "admin.crt", d / "admin.key")
        ec = EtcdClient(etcd.endpoint)
        async with aiohttp.ClientSession() as s:
            yield Http(f"https://127.0.0.1:{h.server.http_port}", ctx, s, ec)
    finally:
        if ec is not None:
            await ec.close()
        if h is not None:
            await h.client.close()
            await h.server.stop(0)
        await etcd.stop()


def service(name: str, labels: dict, ports: list[dict]) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": labels},
            "spec": {"selector": {"app": name}, "ports": ports}}


async def test_kubectl_label_merge_patch_and_apply_strategic_patch(http):
    base = "/api/v1/namespaces/default/services"
    code, _ = await http.req("POST", base, service("web", {"a": "1", "b": "2"}, [
        {"name": "http", "port": 80, "targetPort": 8080}, {"name": "https", "port": 443, "targetPort": 8443}]))
    assert code == 201
    try:
        code, got = await http.req("PATCH", base + "/web", {"metadata": {"labels": {"manual": "yes"}}},
                                   ctype="application/merge-patch+json")
        assert code == 200 and got["metadata"]["labels"] == {"a": "1", "b": "2", "manual": "yes"}
        # what `kubectl apply` sends after the manifest dropped label b and port https, added dns
        three_way = {"metadata": {"labels": {"b": None}},
                     "spec": {"$setElementOrder/ports": [{"port": 80}, {"port": 53}],
                              "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                                        {"$patch": "delete", "port": 443}]}}
        code, got = await http.req("PATCH", base + "/web", three_way,
                                   ctype="application/strategic-merge-patch+json")
        assert code == 200, got
        assert got["metadata"]["labels"] == {"a": "1", "manual": "yes"}
        assert [(p["name"], p["port"]) for p in got["spec"]["ports"]] == [("http", 80), ("dns", 53)]
        code, now = await http.req("GET", base + "/web")
        assert now["spec"]["ports"] == got["spec"]["ports"]
        assert now["metadata"]["resourceVersion"] == got["metadata"]["resourceVersion"]
    finally:
        await http.req("DELETE", base + "/web")


async def test_json_patch_and_its_errors(http):
    base = "/api/v1/namespaces/default/configmaps"
    code, _ = await http.req("POST", base, {"metadata": {"name": "jp"}, "data": {"a": "1"}})
    assert code == 201
    try:
        code, got = await http.req("PATCH", base + "/jp", [
            {"op": "test", "path": "/data/a", "value": "1"}, {"op": "add", "path": "/data/b", "value": "2"},
            {"op": "add", "path": "/metadata/labels", "value": {}},
            {"op": "add", "path": "/metadata/labels/app.kubernetes.io~1name", "value": "x"}],
            ctype="application/json-patch+json")
        assert code == 200, got
        assert got["data"] == {"a": "1", "b": "2"} and got["metadata"]["labels"] == {"app.kubernetes.io/name": "x"}
        code, err = await http.req("PATCH", base + "/jp", [{"op": "test", "path": "/data/a", "value": "9"}],
                                   ctype="application/json-patch+json")
        assert code == 422 and err["reason"] == "Invalid"
        assert err["message"] == 'json patch operation 0 (test "/data/a") does not apply: the value is "1", not "9"'
        assert "details" not in err  # kubectl then prints "The request is invalid: <message>"
        code, err = await http.req("PATCH", base + "/jp", {"data": {"x": "y"}}, ctype="application/yaml-patch")
        assert code == 415 and err["reason"] == "UnsupportedMediaType"
        # a patch that makes the object invalid is refused by the Update's own decoding
        code, err = await http.req("PATCH", base + "/jp", {"data": {"a": {"nested": 1}}},
                                   ctype="application/merge-patch+json")
        assert code == 400 and "ConfigMap.data" in err["message"]
    finally:
        await http.req("DELETE", base + "/jp")


async def test_dry_run_over_http_stores_nothing(http):
    base = "/api/v1/namespaces/default/services"
    ips = await http.keys(IP_PREFIX)
    code, got = await http.req("POST", base + "?dryRun=All", service("dry", {}, [{"port": 80}]))
    assert code == 201 and got["spec"]["clusterIP"] and not got["metadata"].get("resourceVersion")
    assert await http.keys(b"/registry/services/default/dry") == [] and await http.keys(IP_PREFIX) == ips
    code, _ = await http.req("POST", base, service("real", {}, [{"port": 80}]))
    assert code == 201
    try:
        code, got = await http.req("PATCH", base + "/real?dryRun=All", {"metadata": {"labels": {"x": "y"}}},
                                   ctype="application/merge-patch+json")
        assert code == 200 and got["metadata"]["labels"] == {"x": "y"}
        code, now = await http.req("GET", base + "/real")
        assert not now["metadata"].get("labels")
        code, got = await http.req("DELETE", base + "/real", {"dryRun": ["All"], "propagationPolicy": "Orphan"})
        assert code == 200
        code, _ = await http.req("GET", base + "/real")
        assert code == 200
        code, err = await http.req("DELETE", base + "/real", {"propagationPolicy": "Sideways"})
        assert code == 422 and 'propagationPolicy: Unsupported value: "Sideways"' in err["message"]
        code, _ = await http.req("DELETE", base + "/real", {"propagationPolicy": "Background"})
        assert code == 200
        assert await http.keys(b"/registry/services/default/real") == []
    finally:
        await http.req("DELETE", base + "/real")
    assert await http.keys(IP_PREFIX) == ips


@pytest.mark.parametrize("capture, path, name", [
    ("namespace", "/api/v1/namespaces", "capns"),
    ("configmap", "/api/v1/namespaces/default/configmaps", "cm1"),
    ("secret-generic", "/api/v1/namespaces/default/secrets", "s1"),
    ("service-nodeport", "/api/v1/namespaces/default/services", "np1"),
])
async def test_the_protobuf_bodies_kubectl_sends_create_objects(http, capture, path, name):
    code, got = await http.req("POST", path + "?fieldManager=kubectl-create&fieldValidation=Strict",
                               (DATA / f"{capture}.bin").read_bytes(), ctype=PROTOBUF)
    assert code == 201, got
    try:
        assert got["metadata"]["name"] == name
        code, now = await http.req("GET", f"{path}/{name}")
        assert code == 200
        if capture == "configmap":
            assert now["data"] == {"a": "b", "f.txt": "hi\n"} and "b.bin" in now["binaryData"]
        if capture == "service-nodeport":
            assert now["spec"]["ports"][0]["nodePort"] == 30080
    finally:
        await http.req("DELETE", f"{path}/{name}")


async def test_a_bad_protobuf_body_is_refused_naming_what(http):
    code, err = await http.req("POST", "/api/v1/namespaces", b"k8s\x00\x0a\x05ab", ctype=PROTOBUF)
    assert code == 400 and "envelope cannot be read" in err["message"]
    code, err = await http.req("POST", "/api/v1/namespaces/default/pods",
                               (DATA / "namespace.bin").read_bytes(), ctype=PROTOBUF)
    assert code == 400 and "holds Namespace where Pod was expected" in err["message"]


async def test_kubectl_auth_can_i_review_in_protobuf(http):
    code, got = await http.req("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                               (DATA / "ssar-create-pods.bin").read_bytes(), ctype=PROTOBUF)
    assert code == 201, got
    assert got["spec"]["resourceAttributes"]["resource"] == "pods" and got["status"]["allowed"] is True
