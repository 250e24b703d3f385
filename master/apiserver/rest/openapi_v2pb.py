"""The Swagger 2.0 document (/openapi/v2) in the protobuf encoding kubectl asks for:
`application/com.github.proto-openapi.spec.v2@v1.0+protobuf`, gnostic's openapi.v2.Document.

kubectl reads /openapi/v2 for client-side validation (which it falls back to for a kind whose
PATCH operation lists no fieldValidation: create-only kinds such as SelfSubjectAccessReview and
Binding) and for `kubectl explain --output=plaintext-openapiv2`, and only ever in this encoding.

A small writer of protobuf's wire format over the JSON document master/apiserver/rest/openapi.py
builds: only the messages and fields that document uses, by gnostic's field numbers (facts of
github.com/google/gnostic-models' openapiv2/OpenAPIv2.proto). Vendor extensions travel as
NamedAny {name, Any{yaml}}: JSON text is YAML, which is how kube-openapi reads them back.
"""
from __future__ import annotations

import json

from kubelab.meta import varint

CONTENT_TYPE = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"  # what kubectl asks for
# what the answer says it is: "@" is no token character, and Go's mime parser (client-go reads
# every Content-Type) refuses it; the dotted form is the one Kubernetes also accepts
RESPONSE_TYPE = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"


def _len(num: int, data: bytes) -> bytes:
    return varint(num << 3 | 2) + varint(len(data)) + data


def _str(num: int, s: str) -> bytes:
    return _len(num, s.encode()) if s else b""


def _bool(num: int, v: bool) -> bytes:
    return varint(num << 3) + b"\x01" if v else b""


def _strings(num: int, values) -> bytes:
    return b"".join(_len(num, v.encode()) for v in values)


def _extensions(num: int, node: dict) -> bytes:
    # NamedAny{1 name, 2 Any{2 yaml}}
    return b"".join(_len(num, _str(1, k) + _len(2, _str(2, json.dumps(v, separators=(",", ":")))))
                    for k, v in node.items() if k.startswith("x-"))


def schema(s: dict) -> bytes:
    """openapi.v2.Schema."""
    out = [_str(1, s.get("$ref", "")), _str(2, s.get("format", "")), _str(4, s.get("description", "")),
           _bool(16, s.get("uniqueItems", False)), _strings(19, s.get("required", ())),
           b"".join(_len(20, _str(2, json.dumps(v))) for v in s.get("enum", ()))]  # Any{yaml}
    if isinstance(s.get("additionalProperties"), dict):
        out.append(_len(21, _len(1, schema(s["additionalProperties"]))))  # AdditionalPropertiesItem.schema
    if "type" in s:
        out.append(_len(22, _strings(1, [s["type"]])))  # TypeItem
    if "items" in s:
        out.append(_len(23, _len(1, schema(s["items"]))))  # ItemsItem
    out += [_len(24, schema(x)) for x in s.get("allOf", ())]
    if s.get("properties"):
        # Properties{1 repeated NamedSchema{1 name, 2 value}}
        out.append(_len(25, b"".join(_len(1, _str(1, k) + _len(2, schema(v))) for k, v in s["properties"].items())))
    out.append(_extensions(31, s))
    return b"".join(out)


def _parameter(p: dict) -> bytes:
    """ParametersItem{1 Parameter{1 BodyParameter | 2 NonBodyParameter{3 query | 4 path}}}."""
    if p["in"] == "body":
        body = (_str(1, p.get("description", "")) + _str(2, p["name"]) + _str(3, "body") +
                _bool(4, p.get("required", False)) + _len(5, schema(p["schema"])))
        return _len(1, _len(1, body))
    common = _bool(1, p.get("required", False)) + _str(2, p["in"]) + _str(3, p.get("description", "")) + \
        _str(4, p["name"])
    if p["in"] == "path":  # PathParameterSubSchema: 5 type, 19 unique_items
        sub = _len(4, common + _str(5, p.get("type", "")) + _bool(19, p.get("uniqueItems", False)))
    else:  # QueryParameterSubSchema: 6 type, 20 unique_items
        sub = _len(3, common + _str(6, p.get("type", "")) + _bool(20, p.get("uniqueItems", False)))
    return _len(1, _len(2, sub))


def _operation(op: dict) -> bytes:
    responses = b"".join(
        # NamedResponseValue{1 code, 2 ResponseValue{1 Response{1 description, 2 SchemaItem{1 Schema}}}}
        _len(1, _str(1, code) + _len(2, _len(1, _str(1, r.get("description", "")) +
                                               (_len(2, _len(1, schema(r["schema"]))) if "schema" in r else b""))))
        for code, r in op.get("responses", {}).items())
    return b"".join([_strings(1, op.get("tags", ())), _str(3, op.get("description", "")),
                     _str(5, op.get("operationId", "")), _strings(6, op.get("produces", ())),
                     _strings(7, op.get("consumes", ())),
                     b"".join(_len(8, _parameter(p)) for p in op.get("parameters", ())),
                     _len(9, responses), _strings(10, op.get("schemes", ())), _extensions(13, op)])


_METHODS = {"get": 2, "put": 3, "post": 4, "delete": 5, "options": 6, "head": 7, "patch": 8}


def _path_item(item: dict) -> bytes:
    out = [_len(_METHODS[m], _operation(op)) for m, op in item.items() if m in _METHODS]
    out += [_len(9, _parameter(p)) for p in item.get("parameters", ())]
    return b"".join(out)


def document(doc: dict) -> bytes:
    """openapi.v2.Document of a Swagger 2.0 JSON document."""
    info = doc.get("info", {})
    paths = b"".join(_len(2, _str(1, p) + _len(2, _path_item(item))) for p, item in doc.get("paths", {}).items())
    defs = b"".join(_len(1, _str(1, n) + _len(2, schema(s))) for n, s in doc.get("definitions", {}).items())
    security = b"".join(
        # SecurityRequirement{1 NamedStringArray{1 name, 2 StringArray{1 value}}}
        _len(12, b"".join(_len(1, _str(1, k) + _len(2, _strings(1, v))) for k, v in req.items()))
        for req in doc.get("security", ()))
    sec_defs = b"".join(
        # NamedSecurityDefinitionsItem{1 name, 2 SecurityDefinitionsItem{2 ApiKeySecurity{1 type, 2 name, 3 in,
        # 4 description}}}
        _len(1, _str(1, k) + _len(2, _len(2, _str(1, v.get("type", "")) + _str(2, v.get("name", "")) +
                                            _str(3, v.get("in", "")) + _str(4, v.get("description", "")))))
        for k, v in doc.get("securityDefinitions", {}).items())
    return b"".join([_str(1, doc.get("swagger", "2.0")),
                     _len(2, _str(1, info.get("title", "")) + _str(2, info.get("version", ""))),
                     _len(8, paths), _len(9, defs), security, _len(13, sec_defs) if sec_defs else b""])
