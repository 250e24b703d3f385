"""Kubernetes' protobuf request bodies (master/apiserver/rest/protobuf.py), read from bytes the
real kubectl 1.37 sent (tests/unit/data/kubectl-protobuf/, captured from `kubectl create
namespace capns`, `create configmap cm1 --from-literal=a=b --from-file=f.txt --from-file=b.bin`,
`create secret generic s1 --from-literal=user=admin --from-literal=pass=s3cr3t`, `create
secret docker-registry reg --docker-server=r.io --docker-username=u --docker-password=p`,
`create service clusterip svc1 --tcp=80:8080 --tcp=443:8443`, `create service nodeport np1
--tcp=80:8080 --node-port=30080`, `create service clusterip hl --clusterip=None`, `create
service externalname ext --external-name=example.com` against a logging HTTP server), and from
bytes built here for what kubectl did not send (times, negative numbers, bad bodies)."""
from __future__ import annotations

import base64
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubelab.api import codec, kinds
from kubelab.errors import BadRequest, UnsupportedMediaType
from master.apiserver.rest import protobuf

DATA = Path(__file__).parent / "data" / "kubectl-protobuf"
K = {k.kind: k for k in kinds.KINDS}


def captured(name: str) -> bytes:
    return (DATA / f"{name}.bin").read_bytes()


# a tiny encoder for hand-made bodies (wire types 0 and 2 only)
def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(num: int, value) -> bytes:
    if isinstance(value, int):
        return varint(num << 3) + varint(value)
    data = value.encode() if isinstance(value, str) else value
    return varint(num << 3 | 2) + varint(len(data)) + data


def envelope(kind: str, raw: bytes, api_version: str = "v1", **extra) -> bytes:
    tm = field(1, api_version) + field(2, kind)
    body = field(1, tm) + field(2, raw)
    for num, v in extra.items():
        body += field({"contentEncoding": 3, "contentType": 4}[num], v)
    return protobuf.MAGIC + body


@pytest.mark.parametrize("name, kind, want", [
    ("namespace", "Namespace", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "capns"}}),
    ("configmap", "ConfigMap", {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm1"},
                                "data": {"a": "b", "f.txt": "hi\n"},
                                "binaryData": {"b.bin": base64.b64encode(b"\x00\xff\x01bin").decode()}}),
    ("secret-generic", "Secret", {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s1"},
                                  "data": {"pass": base64.b64encode(b"s3cr3t").decode(),
                                           "user": base64.b64encode(b"admin").decode()}}),
    ("service-clusterip", "Service", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc1", "labels": {"app": "svc1"}},
        "spec": {"ports": [{"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080},
                           {"name": "443-8443", "protocol": "TCP", "port": 443, "targetPort": 8443}],
                 "selector": {"app": "svc1"}, "type": "ClusterIP"}}),
    ("service-nodeport", "Service", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "np1", "labels": {"app": "np1"}},
        "spec": {"ports": [{"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080,
                            "nodePort": 30080}],
                 "selector": {"app": "np1"}, "type": "NodePort"}}),
    ("service-headless", "Service", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "hl", "labels": {"app": "hl"}},
        "spec": {"selector": {"app": "hl"}, "clusterIP": "None", "type": "ClusterIP"}}),
])
def test_kubectl_bodies_read_as_their_json_and_decode_as_our_messages(name, kind, want):
    got = protobuf.decode(captured(name), K[kind])
    assert got == want
    body = {k: v for k, v in got.items() if k not in ("apiVersion", "kind")}
    msg = codec.decode(body, K[kind])  # strict: every field read maps onto kubelab's message
    assert msg.metadata.name == want["metadata"]["name"]


@pytest.mark.parametrize("name, spec", [
    ("ssar-create-pods", {"resourceAttributes": {"namespace": "default", "verb": "create", "resource": "pods"}}),
    ("ssar-list-pods-log", {"resourceAttributes": {"namespace": "kube-system", "verb": "list", "resource": "pods",
                                                   "subresource": "log"}}),
    ("ssar-get-healthz", {"nonResourceAttributes": {"path": "/healthz", "verb": "get"}}),
])
def test_kubectl_auth_can_i_reviews(name, spec):
    # `kubectl auth can-i create pods -n default`, `... list pods --subresource=log -n kube-system`,
    # `... get /healthz`: not a stored kind, so no Kind is passed
    got = protobuf.decode(captured(name), None)
    assert got == {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "spec": spec}


def test_an_empty_review_spec_pointer_is_kept():
    spec = field(1, b"")  # resourceAttributes set, every field empty: a pointer in Go
    sel = field(8, field(1, "a=b") + field(2, field(1, "k") + field(2, "In") + field(3, "x") + field(3, "y")))
    got = protobuf.decode(envelope("SelfSubjectAccessReview", field(2, spec), "authorization.k8s.io/v1"), None)
    assert got["spec"] == {"resourceAttributes": {}}
    got = protobuf.decode(envelope("SelfSubjectAccessReview", field(2, field(1, field(2, "list") + sel)),
                                   "authorization.k8s.io/v1"), None)
    assert got["spec"]["resourceAttributes"] == {"verb": "list", "fieldSelector": {
        "rawSelector": "a=b", "requirements": [{"key": "k", "operator": "In", "values": ["x", "y"]}]}}


def test_the_docker_registry_secret_keeps_its_type_and_config():
    got = protobuf.decode(captured("secret-docker-registry"), K["Secret"])
    assert got["type"] == "kubernetes.io/dockerconfigjson"
    config = base64.b64decode(got["data"][".dockerconfigjson"])
    assert b'"r.io"' in config and b'"username":"u"' in config


def test_a_field_kubelab_lacks_is_passed_on_for_the_decoder_to_name():
    got = protobuf.decode(captured("service-externalname"), K["Service"])
    assert got["spec"]["externalName"] == "example.com"
    with pytest.raises(ValueError, match='unknown field "spec.externalName"'):
        codec.decode({"metadata": got["metadata"], "spec": got["spec"]}, K["Service"])


def test_times_negative_numbers_and_go_pointer_fields():
    time = field(1, 1767225600) + field(2, 0)  # 2026-01-01T00:00:00Z
    meta = (field(1, "x") + field(7, 0) + field(8, time) + field(9, b"") + field(10, 0)
            + field(11, field(1, "k") + field(2, "v")) + field(14, "f.example/a") + field(14, "f.example/b")
            + field(13, field(1, "Pod") + field(3, "p") + field(4, "u1") + field(5, "v1") + field(6, 0)))
    port = field(3, 53) + field(4, field(1, 1) + field(3, "dns")) + field(5, 0)
    spec = field(1, port) + field(12, 0) + field(22, "Local") + field(14, field(1, field(1, 0)))
    got = protobuf.decode(envelope("Service", field(1, meta) + field(2, spec)), K["Service"])
    assert got["metadata"] == {
        "name": "x", "creationTimestamp": "2026-01-01T00:00:00Z", "deletionGracePeriodSeconds": 0,
        "labels": {"k": "v"}, "finalizers": ["f.example/a", "f.example/b"],
        "ownerReferences": [{"kind": "Pod", "name": "p", "uid": "u1", "apiVersion": "v1", "controller": False}]}
    # healthCheckNodePort 0 is Go's non-pointer zero: dropped; a pointer's zero is kept
    assert got["spec"] == {"ports": [{"port": 53, "targetPort": "dns"}], "internalTrafficPolicy": "Local",
                           "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}}
    neg = protobuf.decode(envelope("Namespace", field(1, field(1, "n") + field(10, -1))), K["Namespace"])
    assert neg["metadata"]["deletionGracePeriodSeconds"] == -1


@pytest.mark.parametrize("body, kind, error, message", [
    (b'{"kind":"Namespace"}', "Namespace", BadRequest, "does not start with Kubernetes' envelope prefix"),
    (protobuf.MAGIC + b"\x0a\x05ab", "Namespace", BadRequest, "envelope cannot be read: .*past the end"),
    (protobuf.MAGIC + b"\x0a", "Namespace", BadRequest, "envelope cannot be read: truncated varint"),
    (envelope("Namespace", b"\x0a\x03\x0a\x01"), "Namespace", BadRequest,
     "the Namespace in the protobuf body cannot be read: .*past the end"),
    (envelope("Namespace", field(1, field(1, 7))), "Namespace", BadRequest,
     "metadata.name: wire type 0 where string was expected"),
    (envelope("Namespace", field(1, field(1, b"\xff"))), "Namespace", BadRequest, "metadata.name: string is not UTF-8"),
    (envelope("Namespace", field(1, field(99, "x"))), "Namespace", BadRequest,
     "metadata: field number 99 of ObjectMeta is not read by this server"),
    (envelope("Namespace", field(1, field(8, field(1, 2**62)))), "Namespace", BadRequest,
     "metadata.creationTimestamp: 4611686018427387904 seconds is not a time"),
    (envelope("Secret", b""), "Namespace", BadRequest, "holds Secret where Namespace was expected"),
    (envelope("Pod", b""), "Pod", UnsupportedMediaType, "Pod is not read as application/vnd.kubernetes.protobuf"),
    (envelope("Namespace", b"", contentEncoding="gzip"), "Namespace", UnsupportedMediaType, 'encoded "gzip"'),
    (envelope("Namespace", b"", contentType="application/json"), "Namespace", UnsupportedMediaType,
     'holds "application/json"'),
])
def test_bad_bodies_are_refused_naming_what_could_not_be_read(body, kind, error, message):
    with pytest.raises(error, match=message):
        protobuf.decode(body, K[kind])


def test_a_zero_field_of_a_newer_version_is_ignored_and_the_kind_may_come_from_the_body():
    got = protobuf.decode(envelope("Namespace", field(1, field(1, "n") + field(99, 0) + field(98, b""))), None)
    assert got == {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n"}}


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=64), st.sampled_from(["Namespace", "ConfigMap", "Secret", "Service"]))
def test_any_bytes_are_read_or_refused_never_crash(raw, kind):
    for body in (protobuf.MAGIC + raw, envelope(kind, raw)):
        try:
            protobuf.decode(body, K[kind])
        except (BadRequest, UnsupportedMediaType):
            pass
