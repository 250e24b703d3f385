"""The OpenAPI documents (master/apiserver/rest/openapi*.py): Kubernetes' names, types and
extensions from the protobuf descriptors, what kubectl looks for in them (fieldValidation on
each kind's PATCH, GVKs, patch merge keys), and the HTTP answers' caching (hash, ETag, 304,
redirect, 406 for the protobuf v2 kubectl asks first) on a real aiohttp server on loopback."""
from __future__ import annotations

import gzip
import hashlib
import json

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from kubelab.api import kinds, patchmeta
from master.apiserver.rest import discovery, openapi, openapi_gen, openapi_schema
from master.apiserver.rest.openapi_descriptions import TYPES

V3 = "#/components/schemas/"


@pytest.fixture(scope="module")
def docs():
    d = openapi.Documents()
    return {"v2": json.loads(d.v2().body), **{gv: json.loads(doc.body) for gv, doc in d.v3().items()}}


def schemas(docs, gv="api/v1"):
    return docs[gv]["components"]["schemas"]


def refs(node, out=None):
    out = set() if out is None else out
    if isinstance(node, dict):
        if "$ref" in node:
            out.add(node["$ref"])
        for v in node.values():
            refs(v, out)
    elif isinstance(node, list):
        for v in node:
            refs(v, out)
    return out


def test_one_v3_document_per_group_version_with_each_kind_and_its_gvk(docs):
    for k in kinds.KINDS:
        gv = "api/v1" if "/" not in k.api_version else "apis/" + k.api_version
        s = schemas(docs, gv)[openapi_schema.definition_name(k.message.DESCRIPTOR)]
        group, _, version = k.api_version.rpartition("/")
        assert s["x-kubernetes-group-version-kind"] == [{"group": group, "kind": k.kind, "version": version}]
        assert {"apiVersion", "kind", "metadata"} <= set(s["properties"])
    assert set(docs) - {"v2"} == GROUP_VERSIONS
    assert "io.k8s.api.core.v1.Pod" not in schemas(docs, "apis/coordination.k8s.io/v1")


GROUP_VERSIONS = {"api/v1", "apis/coordination.k8s.io/v1", "apis/certificates.k8s.io/v1",
                  "apis/discovery.k8s.io/v1", "apis/authorization.k8s.io/v1"}


def test_every_kind_discovery_lists_has_a_schema_for_explain(docs):
    """kubectl explain works for whatever kubectl api-resources shows."""
    for group, versions in discovery.group_versions().items():
        for v in versions:
            gv = f"apis/{group}/{v}" if group else "api/v1"
            for r in discovery.resources(f"{group}/{v}" if group else v):
                if "/" in r["name"]:
                    continue  # subresources are explained through their kind
                assert gv in docs, f"no OpenAPI document for {gv} ({r['name']})"
                gvk = {"group": group, "kind": r["kind"], "version": v}
                found = [n for n, s in schemas(docs, gv).items() if gvk in s.get("x-kubernetes-group-version-kind", [])]
                assert found, f"no schema with {gvk} in {gv}"


def test_self_subject_access_review_served_as_json_only(docs):
    s = schemas(docs, "apis/authorization.k8s.io/v1")
    review = s["io.k8s.api.authorization.v1.SelfSubjectAccessReview"]
    assert review["required"] == ["spec"]
    assert review["properties"]["spec"]["allOf"] == [
        {"$ref": V3 + "io.k8s.api.authorization.v1.SelfSubjectAccessReviewSpec"}]
    attrs = s["io.k8s.api.authorization.v1.ResourceAttributes"]["properties"]
    assert {"namespace", "verb", "group", "resource", "subresource", "name"} <= set(attrs)
    assert s["io.k8s.api.authorization.v1.SubjectAccessReviewStatus"]["required"] == ["allowed"]
    post = docs["apis/authorization.k8s.io/v1"]["paths"]["/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"]
    assert set(post) == {"post", "parameters"}
    assert post["post"]["operationId"] == "createAuthorizationV1SelfSubjectAccessReview"
    assert "io.k8s.api.authorization.v1.SelfSubjectAccessReview" not in schemas(docs)


def test_kubernetes_names_for_messages_of_every_group():
    name = {d.name: openapi_schema.definition_name(d) for d in openapi_schema.all_messages()}
    assert name["Pod"] == "io.k8s.api.core.v1.Pod"
    assert name["ObjectMeta"] == "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    assert name["Condition"] == "io.k8s.apimachinery.pkg.apis.meta.v1.Condition"
    assert name["LeaseSpec"] == "io.k8s.api.coordination.v1.LeaseSpec"
    assert name["CertificateSigningRequestSpec"] == "io.k8s.api.certificates.v1.CertificateSigningRequestSpec"
    assert name["EndpointSlicePort"] == "io.k8s.api.discovery.v1.EndpointPort"
    assert name["EndpointPort"] == "io.k8s.api.core.v1.EndpointPort"


@pytest.mark.parametrize("doc", ["v2", "api/v1", "apis/coordination.k8s.io/v1", "apis/certificates.k8s.io/v1",
                                 "apis/discovery.k8s.io/v1", "apis/authorization.k8s.io/v1"])
def test_every_reference_resolves_inside_its_document(docs, doc):
    prefix = "#/definitions/" if doc == "v2" else V3
    defs = docs[doc]["definitions"] if doc == "v2" else schemas(docs, doc)
    for r in refs(docs[doc]):
        assert r.startswith(prefix), r
        assert r[len(prefix):] in defs, f"{doc}: dangling {r}"


def test_every_proto_field_is_a_property(docs):
    all_schemas = {n: s for gv, d in docs.items() if gv != "v2" for n, s in d["components"]["schemas"].items()}
    for desc in openapi_schema.all_messages():
        s = all_schemas[openapi_schema.definition_name(desc)]
        assert {f.name for f in desc.fields} <= set(s["properties"]), desc.name
        extra = set(s["properties"]) - {f.name for f in desc.fields}
        assert extra <= {"apiVersion", "kind"}, (desc.name, extra)


def test_types_follow_kubernetes_json(docs):
    s = schemas(docs)
    meta = s["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"]["properties"]
    assert meta["generation"]["type"] == "integer" and meta["generation"]["format"] == "int64"
    assert meta["labels"] == {**meta["labels"], "type": "object", "additionalProperties": {"type": "string"}}
    assert meta["creationTimestamp"]["allOf"] == [{"$ref": V3 + "io.k8s.apimachinery.pkg.apis.meta.v1.Time"}]
    assert s["io.k8s.apimachinery.pkg.apis.meta.v1.Time"]["format"] == "date-time"
    port = s["io.k8s.api.core.v1.ContainerPort"]["properties"]["containerPort"]
    assert (port["type"], port["format"]) == ("integer", "int32")
    assert s["io.k8s.api.core.v1.HTTPGetAction"]["properties"]["port"]["allOf"] == [
        {"$ref": V3 + "io.k8s.apimachinery.pkg.util.intstr.IntOrString"}]
    intstr = s["io.k8s.apimachinery.pkg.util.intstr.IntOrString"]
    assert (intstr["format"], intstr["oneOf"]) == ("int-or-string", [{"type": "integer"}, {"type": "string"}])
    assert docs["v2"]["definitions"]["io.k8s.apimachinery.pkg.util.intstr.IntOrString"]["type"] == "string"
    limits = s["io.k8s.api.core.v1.ResourceRequirements"]["properties"]["limits"]
    assert limits["additionalProperties"] == {"$ref": V3 + "io.k8s.apimachinery.pkg.api.resource.Quantity"}
    assert s["io.k8s.apimachinery.pkg.api.resource.Quantity"]["oneOf"] == [{"type": "string"}, {"type": "number"}]
    assert s["io.k8s.api.core.v1.Secret"]["properties"]["data"]["additionalProperties"] == {
        "type": "string", "format": "byte"}
    assert s["io.k8s.api.core.v1.PodSpec"]["properties"]["hostNetwork"]["type"] == "boolean"
    containers = s["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"]
    assert containers["type"] == "array" and containers["items"] == {"$ref": V3 + "io.k8s.api.core.v1.Container"}
    renew = schemas(docs, "apis/coordination.k8s.io/v1")["io.k8s.api.coordination.v1.LeaseSpec"]["properties"]
    assert renew["renewTime"]["allOf"] == [{"$ref": V3 + "io.k8s.apimachinery.pkg.apis.meta.v1.MicroTime"}]
    # v2 keeps a bare $ref beside the description (swagger 2.0 has no allOf wrapping there)
    v2 = docs["v2"]["definitions"]["io.k8s.api.core.v1.Pod"]["properties"]["spec"]
    assert v2["$ref"] == "#/definitions/io.k8s.api.core.v1.PodSpec"


def test_patch_extensions_are_patchmeta_s(docs):
    s = schemas(docs)
    containers = s["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"]
    assert containers["x-kubernetes-patch-merge-key"] == "name"
    assert containers["x-kubernetes-patch-strategy"] == "merge"
    assert s["io.k8s.api.core.v1.Container"]["properties"]["ports"]["x-kubernetes-patch-merge-key"] == "containerPort"
    assert s["io.k8s.api.core.v1.ServiceSpec"]["properties"]["ports"]["x-kubernetes-patch-merge-key"] == "port"
    volumes = s["io.k8s.api.core.v1.PodSpec"]["properties"]["volumes"]
    assert volumes["x-kubernetes-patch-strategy"] == "merge,retainKeys"
    assert "x-kubernetes-patch-strategy" not in s["io.k8s.api.core.v1.PodSpec"]["properties"]["tolerations"]
    all_schemas = {n: x for gv, d in docs.items() if gv != "v2" for n, x in d["components"]["schemas"].items()}
    for desc in openapi_schema.all_messages():
        for f in patchmeta.list_fields(desc):
            strategy, key = patchmeta.tags(desc, f.name)
            prop = all_schemas[openapi_schema.definition_name(desc)]["properties"][f.name]
            assert prop.get("x-kubernetes-patch-strategy") == strategy, (desc.name, f.name)
            assert prop.get("x-kubernetes-patch-merge-key") == key, (desc.name, f.name)


def test_kubernetes_descriptions_and_required_fields(docs):
    s = schemas(docs)
    assert s["io.k8s.api.core.v1.Pod"]["description"].startswith("Pod is a collection of containers")
    assert s["io.k8s.api.core.v1.Pod"]["properties"]["spec"]["description"].startswith(
        "Specification of the desired behavior of the pod.")
    assert s["io.k8s.api.core.v1.Container"]["properties"]["image"]["description"].startswith("Container image name.")
    assert s["io.k8s.api.core.v1.PodSpec"]["required"] == ["containers"]
    assert s["io.k8s.api.core.v1.Container"]["required"] == ["name"]
    assert "required" not in s["io.k8s.api.core.v1.Toleration"]
    assert s["io.k8s.api.core.v1.PodList"]["required"] == ["items"]
    # Kubernetes' enums: the values, and the description's list as openapi-gen writes it
    policy = s["io.k8s.api.core.v1.PodSpec"]["properties"]["restartPolicy"]
    assert policy["enum"] == ["Always", "Never", "OnFailure"]
    assert policy["description"].endswith('Possible enum values:\n - `"Always"`\n - `"Never"`\n - `"OnFailure"`')
    assert docs["v2"]["definitions"]["io.k8s.api.core.v1.PodSpec"]["properties"]["restartPolicy"]["enum"] == [
        "Always", "Never", "OnFailure"]
    pull = s["io.k8s.api.core.v1.Container"]["properties"]["imagePullPolicy"]["description"]
    assert ' - `"Never"` means that kubelet never pulls an image' in pull


def test_required_fields_for_the_json_encoder():
    from kubelab.api.v1 import objects_pb2 as v1
    assert openapi_schema.required_fields(v1.ContainerStatus.DESCRIPTOR) == (
        "image", "imageID", "name", "ready", "restartCount")
    assert "bootID" in openapi_schema.required_fields(v1.NodeSystemInfo.DESCRIPTOR)
    assert openapi_schema.required_fields(v1.Toleration.DESCRIPTOR) == ()


def test_the_encoders_always_written_fields_are_kubernetes_required_ones():
    """codec.GO_ALWAYS (the zero values the HTTP face writes, as Go's non-omitempty fields) never
    names a field Kubernetes' OpenAPI leaves optional, and the official client reads the result."""
    from kubelab.api import codec, kinds
    from kubelab.api.v1 import objects_pb2 as v1
    seen = {}

    def walk(d):
        if d.name not in seen:
            seen[d.name] = d
            for f in d.fields:
                if f.message_type is not None:
                    walk(f.message_type)
    for k in kinds.KINDS:
        walk(k.message.DESCRIPTOR)
    for name, fields in codec.GO_ALWAYS.items():
        assert set(fields) <= set(openapi_schema.required_fields(seen[name])), name
    pod = v1.Pod(metadata=v1.ObjectMeta(name="p"), spec=v1.PodSpec(containers=[v1.Container(name="c", image="i")]),
                 status=v1.PodStatus(containerStatuses=[v1.ContainerStatus(name="c", image="i")]))
    from kubernetes.client import models  # the official client's models insist on them
    assert models.V1Pod.from_dict(codec.to_dict(pod, go_defaults=True)).status.container_statuses[0].restart_count == 0



def supports_field_validation(doc: dict, gvk: dict) -> bool:
    """kubectl's test (cli-runtime's query param verifier): the PATCH operation carrying the
    kind's GVK lists a fieldValidation parameter."""
    for item in doc["paths"].values():
        op = item.get("patch")
        if op is None or op.get("x-kubernetes-group-version-kind") != gvk:
            continue
        return any(p["name"] == "fieldValidation" for p in op["parameters"])
    return False


def test_kubectl_sees_server_side_field_validation_for_every_writable_kind(docs):
    for k in kinds.KINDS:
        gv = "api/v1" if "/" not in k.api_version else "apis/" + k.api_version
        group, _, version = k.api_version.rpartition("/")
        gvk = {"group": group, "kind": k.kind, "version": version}
        assert supports_field_validation(docs[gv], gvk) == k.stored, k.kind
        assert supports_field_validation(docs["v2"], gvk) == k.stored, k.kind


def test_operations_and_their_parameters(docs):
    paths = docs["api/v1"]["paths"]
    item = paths["/api/v1/namespaces/{namespace}/pods"]
    assert item["get"]["operationId"] == "listCoreV1NamespacedPod"
    assert item["get"]["x-kubernetes-action"] == "list"
    names = {p["name"] for p in item["get"]["parameters"]}
    assert {"labelSelector", "fieldSelector", "watch", "limit", "continue", "resourceVersion"} <= names
    assert {p["name"] for p in item["post"]["parameters"]} == {"dryRun", "fieldManager", "fieldValidation"}
    assert item["post"]["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": V3 + "io.k8s.api.core.v1.Pod"}
    assert [p["name"] for p in item["parameters"]] == ["namespace", "pretty"]
    one = paths["/api/v1/namespaces/{namespace}/pods/{name}"]
    assert set(one) == {"get", "put", "patch", "delete", "parameters"}
    assert "application/strategic-merge-patch+json" in one["patch"]["requestBody"]["content"]
    assert {"gracePeriodSeconds", "propagationPolicy", "dryRun"} <= {p["name"] for p in one["delete"]["parameters"]}
    assert "/api/v1/pods" in paths and "/api/v1/nodes/{name}/status" in paths
    assert "/api/v1/namespaces/{namespace}/configmaps/{name}/status" not in paths
    assert paths["/api/v1/namespaces/{namespace}/bindings"].keys() == {"post", "parameters"}
    log = paths["/api/v1/namespaces/{namespace}/pods/{name}/log"]["get"]
    assert {"container", "follow", "previous", "tailLines"} <= {p["name"] for p in log["parameters"]}
    v2 = docs["v2"]["paths"]["/api/v1/namespaces/{namespace}/pods"]["post"]
    assert v2["parameters"][0] == {"name": "body", "in": "body", "required": True,
                                   "schema": {"$ref": "#/definitions/io.k8s.api.core.v1.Pod"}}
    assert {"name": "fieldValidation", "type": "string"}.items() <= v2["parameters"][-1].items()


def test_descriptions_file_is_what_the_generator_writes_for_the_current_protos():
    """A new proto field needs its description: regenerate openapi_descriptions.py. The
    checkouts' descriptions are only kept when the client's agree on which fields exist."""
    current = {n: t for n, t in TYPES.items()}
    ns: dict = {}
    exec(openapi_gen.generate(), ns)  # without checkouts: the client's view of the same fields
    for name, t in ns["TYPES"].items():
        assert name in current, f"{name} missing: run python -m master.apiserver.rest.openapi_gen"
        if name != "kind":
            assert set(t["properties"]) == set(current[name]["properties"]), name
            assert t["required"] == current[name]["required"], name


# -- HTTP ----------------------------------------------------------------------------------


@pytest.fixture
async def client():
    app = web.Application()
    openapi.add_routes(app, None)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        yield c


async def test_v3_index_points_at_each_document_by_its_hash(client):
    r = await client.get("/openapi/v3", headers={"Accept": "application/json"})
    assert r.status == 200
    index = await r.json()
    assert set(index["paths"]) == GROUP_VERSIONS
    url = index["paths"]["api/v1"]["serverRelativeURL"]
    r = await client.get(url, headers={"Accept": "application/json"})
    assert r.status == 200
    body = await r.read()
    assert url.endswith("?hash=" + hashlib.sha512(body).hexdigest().upper())
    assert "immutable" in r.headers["Cache-Control"]
    assert json.loads(body)["openapi"] == "3.0.0"


async def test_etag_304_and_a_stale_hash_redirected(client):
    r = await client.get("/openapi/v3/api/v1")
    etag = r.headers["ETag"]
    assert r.headers["Cache-Control"] == "no-cache, private"
    r = await client.get("/openapi/v3/api/v1", headers={"If-None-Match": etag})
    assert r.status == 304
    r = await client.get("/openapi/v3/api/v1?hash=0BAD", allow_redirects=False)
    assert r.status == 301
    assert r.headers["Location"] == "/openapi/v3/api/v1?hash=" + etag.strip('"')
    r = await client.get("/openapi/v3/apis/nosuch.k8s.io/v1")
    assert r.status == 404
    assert (await r.json())["reason"] == "NotFound"


async def test_v2_in_json_gzipped_protobuf_for_kubectl_and_406_otherwise(client):
    r = await client.get("/openapi/v2", headers={"Accept": "application/json", "Accept-Encoding": "gzip"},
                         auto_decompress=False)
    assert r.status == 200 and r.headers["Content-Encoding"] == "gzip"
    assert json.loads(gzip.decompress(await r.read()))["swagger"] == "2.0"
    r = await client.get("/openapi/v2",
                         headers={"Accept": "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"})
    assert r.status == 200
    # a Content-Type Go's mime parser reads ("@" is not a token character)
    assert r.headers["Content-Type"] == "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"
    doc = wire(await r.read())
    assert doc[1] == [b"2.0"]  # Document.swagger
    definitions = wire(doc[9][0])[1]  # Definitions.additional_properties: NamedSchema
    names = {wire(d)[1][0].decode() for d in definitions}
    assert {"io.k8s.api.core.v1.Pod", "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"} <= names
    r = await client.get("/openapi/v2", headers={"Accept": "application/xml"})
    assert r.status == 406
    status = await r.json()
    assert (status["kind"], status["reason"], status["code"]) == ("Status", "NotAcceptable", 406)
    r = await client.get("/openapi/v3", headers={"Accept": "application/xml"})
    assert r.status == 406


async def test_no_custom_resource_definitions(client):
    r = await client.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions")
    assert r.status == 200
    body = await r.json()
    assert (body["kind"], body["items"]) == ("CustomResourceDefinitionList", [])


def wire(data: bytes) -> dict[int, list]:
    """Protobuf's wire format read back: field number -> values (bytes for length-delimited)."""
    out: dict[int, list] = {}
    i = 0

    def varint():
        nonlocal i
        n = shift = 0
        while True:
            b = data[i]
            i += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return n
    while i < len(data):
        key = varint()
        num, typ = key >> 3, key & 7
        if typ == 0:
            out.setdefault(num, []).append(varint())
        elif typ == 2:
            n = varint()
            out.setdefault(num, []).append(data[i:i + n])
            i += n
        else:
            raise AssertionError(f"unexpected wire type {typ}")
    return out


def test_v2_protobuf_carries_schemas_operations_and_extensions():
    from master.apiserver.rest import openapi_v2pb
    doc = {"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1"},
           "paths": {"/api/v1/pods": {"patch": {"operationId": "patchX", "parameters": [
               {"name": "fieldValidation", "in": "query", "type": "string", "uniqueItems": True}],
               "responses": {"200": {"description": "OK", "schema": {"$ref": "#/definitions/P"}}},
               "x-kubernetes-group-version-kind": {"group": "", "kind": "Pod", "version": "v1"}}}},
           "definitions": {"P": {"type": "object", "required": ["spec"], "properties": {
               "spec": {"$ref": "#/definitions/S", "description": "the spec"},
               "labels": {"type": "object", "additionalProperties": {"type": "string"}},
               "ports": {"type": "array", "items": {"type": "integer", "format": "int32"},
                         "x-kubernetes-patch-merge-key": "containerPort"}}}}}
    top = wire(openapi_v2pb.document(doc))
    path = wire(wire(top[8][0])[2][0])  # Paths.path: NamedPathItem
    assert path[1] == [b"/api/v1/pods"]
    op = wire(wire(path[2][0])[8][0])  # PathItem.patch
    assert op[5] == [b"patchX"]
    ext = wire(op[13][0])  # NamedAny
    assert ext[1] == [b"x-kubernetes-group-version-kind"]
    assert json.loads(wire(ext[2][0])[2][0]) == {"group": "", "kind": "Pod", "version": "v1"}  # Any.yaml
    query = wire(wire(wire(wire(op[8][0])[1][0])[2][0])[3][0])  # ParametersItem.parameter.non_body.query
    assert (query[4], query[2], query[6], query[20]) == ([b"fieldValidation"], [b"query"], [b"string"], [1])
    schema = wire(wire(wire(top[9][0])[1][0])[2][0])
    assert wire(schema[22][0])[1] == [b"object"] and schema[19] == [b"spec"]
    props = {wire(p)[1][0].decode(): wire(wire(p)[2][0]) for p in wire(schema[25][0])[1]}
    assert props["spec"][1] == [b"#/definitions/S"] and props["spec"][4] == [b"the spec"]
    assert wire(wire(wire(props["labels"][21][0])[1][0])[22][0])[1] == [b"string"]
    item = wire(wire(props["ports"][23][0])[1][0])
    assert (wire(item[22][0])[1], item[2]) == ([b"integer"], [b"int32"])
    assert wire(props["ports"][31][0])[1] == [b"x-kubernetes-patch-merge-key"]
