"""Kubernetes' protobuf request bodies (Content-Type: application/vnd.kubernetes.protobuf), read
into the JSON-shaped dict the HTTP face decodes like any JSON body (handlers.read_body).

kubectl's typed clients send this: `kubectl create namespace`, `create configmap`, `create
secret`, `create service`, `auth can-i` (a SelfSubjectAccessReview); not `run`, `create -f`,
`apply`, `patch`, `delete`: those are JSON.
The body is Kubernetes' envelope, the 4 bytes `k8s\\0` then a runtime.Unknown message
{typeMeta{apiVersion=1, kind=2}=1, raw=2, contentEncoding=3, contentType=4} whose raw is the
object in Go-protobuf encoding, with k8s.io/api's field numbers (core/v1 and apimachinery's
meta/v1 generated.proto). Those numbers differ from kubelab's own objects.proto, so the object
is read with the table below (a minimal wire reader, no generated code) and handed on as JSON,
where the shared codec's strict decoding names any field kubelab does not have.

Go's encoding writes every non-pointer field, zero or not (`healthCheckNodePort: 0`, an empty
creationTimestamp); zero values are dropped here except for the fields that are pointers in Go
(PRESENCE), where being set is the information. Non-empty fields this table does not know are
refused by number rather than silently lost.

Interface (for handlers.py): decode(body: bytes, kind) -> dict, raising BadRequest naming what
it could not read, UnsupportedMediaType for a kind whose protobuf form is not read here.
"""
from __future__ import annotations

import base64
import datetime as dt

from kubelab.api import kinds
from kubelab.errors import BadRequest, UnsupportedMediaType

MAGIC = b"k8s\x00"
MEDIA_TYPE = "application/vnd.kubernetes.protobuf"

# field number -> (JSON name, type); a type is a scalar ("string", "int", "bool", "bytes"),
# "time" (metav1.Time), "intstr" (IntOrString), "map:string" / "map:bytes", a message name
# here, or "[]" + one of those for a repeated field.
S = "string"
MESSAGES: dict[str, dict[int, tuple[str, str]]] = {
    "Unknown": {1: ("typeMeta", "TypeMeta"), 2: ("raw", "bytes"), 3: ("contentEncoding", S),
                4: ("contentType", S)},
    "TypeMeta": {1: ("apiVersion", S), 2: ("kind", S)},
    "Time": {1: ("seconds", "int"), 2: ("nanos", "int")},
    "IntOrString": {1: ("type", "int"), 2: ("intVal", "int"), 3: ("strVal", S)},
    "ObjectMeta": {1: ("name", S), 2: ("generateName", S), 3: ("namespace", S), 4: ("selfLink", S),
                   5: ("uid", S), 6: ("resourceVersion", S), 7: ("generation", "int"),
                   8: ("creationTimestamp", "time"), 9: ("deletionTimestamp", "time"),
                   10: ("deletionGracePeriodSeconds", "int"), 11: ("labels", "map:string"),
                   12: ("annotations", "map:string"), 13: ("ownerReferences", "[]OwnerReference"),
                   14: ("finalizers", "[]string")},
    "OwnerReference": {5: ("apiVersion", S), 1: ("kind", S), 3: ("name", S), 4: ("uid", S),
                       6: ("controller", "bool"), 7: ("blockOwnerDeletion", "bool")},
    "Condition": {1: ("type", S), 2: ("status", S), 3: ("observedGeneration", "int"),
                  4: ("lastTransitionTime", "time"), 5: ("reason", S), 6: ("message", S)},
    # core/v1
    "Namespace": {1: ("metadata", "ObjectMeta"), 2: ("spec", "NamespaceSpec"), 3: ("status", "NamespaceStatus")},
    "NamespaceSpec": {1: ("finalizers", "[]string")},
    "NamespaceStatus": {1: ("phase", S), 2: ("conditions", "[]NamespaceCondition")},
    "NamespaceCondition": {1: ("type", S), 2: ("status", S), 4: ("lastTransitionTime", "time"),
                           5: ("reason", S), 6: ("message", S)},
    "ConfigMap": {1: ("metadata", "ObjectMeta"), 2: ("data", "map:string"), 3: ("binaryData", "map:bytes"),
                  4: ("immutable", "bool")},
    "Secret": {1: ("metadata", "ObjectMeta"), 2: ("data", "map:bytes"), 3: ("type", S),
               4: ("stringData", "map:string"), 5: ("immutable", "bool")},
    "Service": {1: ("metadata", "ObjectMeta"), 2: ("spec", "ServiceSpec"), 3: ("status", "ServiceStatus")},
    "ServiceSpec": {1: ("ports", "[]ServicePort"), 2: ("selector", "map:string"), 3: ("clusterIP", S),
                    18: ("clusterIPs", "[]string"), 4: ("type", S), 5: ("externalIPs", "[]string"),
                    7: ("sessionAffinity", S), 8: ("loadBalancerIP", S),
                    9: ("loadBalancerSourceRanges", "[]string"), 10: ("externalName", S),
                    11: ("externalTrafficPolicy", S), 12: ("healthCheckNodePort", "int"),
                    13: ("publishNotReadyAddresses", "bool"),
                    14: ("sessionAffinityConfig", "SessionAffinityConfig"), 19: ("ipFamilies", "[]string"),
                    17: ("ipFamilyPolicy", S), 20: ("allocateLoadBalancerNodePorts", "bool"),
                    21: ("loadBalancerClass", S), 22: ("internalTrafficPolicy", S),
                    23: ("trafficDistribution", S)},
    "ServicePort": {1: ("name", S), 2: ("protocol", S), 6: ("appProtocol", S), 3: ("port", "int"),
                    4: ("targetPort", "intstr"), 5: ("nodePort", "int")},
    "SessionAffinityConfig": {1: ("clientIP", "ClientIPConfig")},
    "ClientIPConfig": {1: ("timeoutSeconds", "int")},
    "ServiceStatus": {1: ("loadBalancer", "LoadBalancerStatus"), 2: ("conditions", "[]Condition")},
    "LoadBalancerStatus": {1: ("ingress", "[]LoadBalancerIngress")},
    "LoadBalancerIngress": {1: ("ip", S), 2: ("hostname", S), 3: ("ipMode", S), 4: ("ports", "[]PortStatus")},
    "PortStatus": {1: ("port", "int"), 2: ("protocol", S), 3: ("error", S)},
    # authorization/v1: what `kubectl auth can-i` sends (handlers.self_subject_access_review)
    "SelfSubjectAccessReview": {1: ("metadata", "ObjectMeta"), 2: ("spec", "SelfSubjectAccessReviewSpec"),
                                3: ("status", "SubjectAccessReviewStatus")},
    "SelfSubjectAccessReviewSpec": {1: ("resourceAttributes", "ResourceAttributes"),
                                    2: ("nonResourceAttributes", "NonResourceAttributes")},
    "ResourceAttributes": {1: ("namespace", S), 2: ("verb", S), 3: ("group", S), 4: ("version", S),
                           5: ("resource", S), 6: ("subresource", S), 7: ("name", S),
                           8: ("fieldSelector", "SelectorAttributes"), 9: ("labelSelector", "SelectorAttributes")},
    # FieldSelectorAttributes and LabelSelectorAttributes have the same fields
    "SelectorAttributes": {1: ("rawSelector", S), 2: ("requirements", "[]SelectorRequirement")},
    "SelectorRequirement": {1: ("key", S), 2: ("operator", S), 3: ("values", "[]string")},
    "NonResourceAttributes": {1: ("path", S), 2: ("verb", S)},
    "SubjectAccessReviewStatus": {1: ("allowed", "bool"), 2: ("reason", S), 3: ("evaluationError", S),
                                  4: ("denied", "bool")},
}
# pointers in Go: encoded only when set, so a zero value is kept
PRESENCE = {("ObjectMeta", "deletionGracePeriodSeconds"), ("ConfigMap", "immutable"), ("Secret", "immutable"),
            ("OwnerReference", "controller"), ("OwnerReference", "blockOwnerDeletion"),
            ("ClientIPConfig", "timeoutSeconds"), ("ServiceSpec", "ipFamilyPolicy"),
            ("ServiceSpec", "allocateLoadBalancerNodePorts"), ("ServiceSpec", "loadBalancerClass"),
            ("ServiceSpec", "internalTrafficPolicy"), ("ServiceSpec", "trafficDistribution"),
            ("ServicePort", "appProtocol"), ("SelfSubjectAccessReviewSpec", "resourceAttributes"),
            ("SelfSubjectAccessReviewSpec", "nonResourceAttributes")}
KINDS = ("Namespace", "ConfigMap", "Secret", "Service",  # the kinds kubectl sends as protobuf
         "SelfSubjectAccessReview")


class _Wire(Exception):
    """Malformed wire bytes; the caller adds where."""


def _varint(b: bytes, i: int) -> tuple[int, int]:
    r = shift = 0
    while True:
        if i >= len(b):
            raise _Wire("truncated varint")
        c = b[i]
        i += 1
        r |= (c & 0x7F) << shift
        if c < 0x80:
            return r, i
        shift += 7
        if shift > 63:
            raise _Wire("varint longer than 10 bytes")


def _fields(b: bytes):
    """(field number, wire type, value) of each field: an int for varints and fixed widths,
    the bytes of a length-delimited field."""
    i = 0
    while i < len(b):
        key, i = _varint(b, i)
        num, wire = key >> 3, key & 7
        if num == 0:
            raise _Wire("field number 0")
        if wire == 0:
            v, i = _varint(b, i)
        elif wire == 2:
            n, i = _varint(b, i)
            if i + n > len(b):
                raise _Wire(f"field {num}: length {n} past the end of the message")
            v, i = b[i:i + n], i + n
        elif wire in (1, 5):
            w = 8 if wire == 1 else 4
            if i + w > len(b):
                raise _Wire(f"field {num}: truncated fixed{w * 8}")
            v, i = int.from_bytes(b[i:i + w], "little"), i + w
        else:
            raise _Wire(f"field {num}: wire type {wire} is not supported")
        yield num, wire, v


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _scalar(typ: str, wire: int, v, path: str):
    want = 2 if typ in ("string", "bytes") else 0
    if wire != want:
        raise _Wire(f"{path}: wire type {wire} where {typ} was expected")
    if typ == "string":
        try:
            return v.decode("utf-8")
        except UnicodeDecodeError:
            raise _Wire(f"{path}: string is not UTF-8") from None
    if typ == "bytes":
        return base64.b64encode(v).decode()
    if typ == "bool":
        return v != 0
    return _signed(v)


def _time(b: bytes, path: str) -> str | None:
    t = _message(b, "Time", path)
    secs, nanos = t.get("seconds", 0), t.get("nanos", 0)
    if not secs and not nanos:
        return None  # Go's zero time: unset
    try:
        stamp = dt.datetime.fromtimestamp(secs, dt.UTC)
    except (OverflowError, OSError, ValueError):
        raise _Wire(f"{path}: {secs} seconds is not a time") from None
    return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")


def _intstr(b: bytes, path: str):
    v = _message(b, "IntOrString", path)
    return v.get("strVal", "") if v.get("type", 0) == 1 else v.get("intVal", 0)


def _empty(v) -> bool:
    return v is None or v == "" or v == 0 or v is False or v == {} or v == []


def _message(b: bytes, name: str, path: str) -> dict:
    schema = MESSAGES[name]
    out: dict = {}
    for num, wire, v in _fields(b):
        spec = schema.get(num)
        if spec is None:
            if wire == 2 and len(v) == 0 or wire != 2 and v == 0:
                continue  # a zero-valued field of a newer version: nothing lost
            raise _Wire(f"{path or name}: field number {num} of {name} is not read by this server")
        key, typ = spec
        where = f"{path}.{key}" if path else key
        repeated = typ.startswith("[]")
        typ = typ[2:] if repeated else typ
        if typ.startswith("map:"):
            if wire != 2:
                raise _Wire(f"{where}: wire type {wire} where a map entry was expected")
            k, val = "", ""
            for enum, ewire, ev in _fields(v):
                if enum == 1:
                    k = _scalar("string", ewire, ev, where)
                elif enum == 2:
                    val = _scalar(typ[4:], ewire, ev, f"{where}[{k}]")
            out.setdefault(key, {})[k] = val
            continue
        if typ in MESSAGES or typ in ("time", "intstr"):
            if wire != 2:
                raise _Wire(f"{where}: wire type {wire} where a message was expected")
            idx = f"{where}[{len(out.get(key, []))}]" if repeated else where
            value = (_time(v, idx) if typ == "time" else _intstr(v, idx) if typ == "intstr"
                     else _message(v, typ, idx))
        else:
            value = _scalar(typ, wire, v, where)
        if repeated:
            out.setdefault(key, []).append(value)
        elif not _empty(value) or (name, key) in PRESENCE and value is not None:
            out[key] = value
    return out


def envelope(body: bytes) -> dict:
    """The runtime.Unknown of a protobuf body: {typeMeta, raw, contentEncoding, contentType}."""
    if not body.startswith(MAGIC):
        raise BadRequest(f"the {MEDIA_TYPE} body does not start with Kubernetes' envelope prefix "
                         '"k8s\\x00"')
    try:
        return _message(body[len(MAGIC):], "Unknown", "")
    except _Wire as e:
        raise BadRequest(f"the {MEDIA_TYPE} envelope cannot be read: {e}") from None


def decode(body: bytes, kind: kinds.Kind | None) -> dict:
    """The object of a protobuf request body, as the JSON dict the HTTP face decodes."""
    env = envelope(body)
    tm = env.get("typeMeta", {})
    api_version, sent_kind = tm.get("apiVersion", ""), tm.get("kind", "")
    if env.get("contentEncoding"):
        raise UnsupportedMediaType(f'the protobuf body is encoded "{env["contentEncoding"]}": only '
                                   "unencoded bodies are read")
    if env.get("contentType", "") not in ("", MEDIA_TYPE):
        raise UnsupportedMediaType(f'the protobuf envelope holds "{env["contentType"]}", not {MEDIA_TYPE}')
    expected = kind.kind if kind is not None else sent_kind
    if sent_kind != expected:
        raise BadRequest(f"the protobuf body holds {sent_kind or 'an object without a kind'} where "
                         f"{expected} was expected")
    if expected not in KINDS:
        raise UnsupportedMediaType(f"{expected} is not read as {MEDIA_TYPE} by this server (only "
                                   f"{', '.join(KINDS)}): send it as application/json")
    try:
        obj = _message(base64.b64decode(env.get("raw", "")), expected, "")
    except _Wire as e:
        raise BadRequest(f"the {expected} in the protobuf body cannot be read: {e}") from None
    return {"apiVersion": api_version or (kind.api_version if kind else "v1"), "kind": expected, **obj}
