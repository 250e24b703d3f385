"""The types OpenAPI's operations name but no kind's message holds: lists (PodList, ...), the
meta.k8s.io types around the objects (ListMeta, Status, DeleteOptions, Patch, WatchEvent:
what master/apiserver/rest/errors.py writes and handlers.py reads), and the JSON-only kinds the
HTTP face serves without a message of objects.proto (authorization.k8s.io's
SelfSubjectAccessReview, handlers.py, for `kubectl auth can-i`). They are declared here by
their Kubernetes fields (facts of apimachinery's metav1 and k8s.io/api), only the fields
kubelab reads or writes, with Kubernetes' descriptions from openapi_descriptions.py.
"""
from __future__ import annotations

from kubelab.api import kinds

from .openapi_descriptions import TYPES as _DOCS
from .openapi_names import META, gvk, kind_definition, list_name

AUTHZ = "io.k8s.api.authorization.v1."
RAW = "io.k8s.apimachinery.pkg.runtime.RawExtension"
_S = {"type": "string"}
_B = {"type": "boolean"}
_I32 = {"type": "integer", "format": "int32"}
_I64 = {"type": "integer", "format": "int64"}
_STRINGS = {"type": "array", "items": {"type": "string"}}

# kinds served as JSON only (no message): the kinds.py row the paths are built from
REVIEW = kinds.Kind("SelfSubjectAccessReview", "selfsubjectaccessreviews", None, False,
                    api_version="authorization.k8s.io/v1", has_status=False, stored=False)
JSON_KINDS = (REVIEW,)

# definition -> {field: schema}; a string is a reference to another definition
META_TYPES: dict[str, dict] = {
    META + "ListMeta": {"continue": _S, "remainingItemCount": _I64, "resourceVersion": _S, "selfLink": _S},
    META + "Status": {"apiVersion": _S, "kind": _S, "metadata": META + "ListMeta", "status": _S, "message": _S,
                      "reason": _S, "details": META + "StatusDetails", "code": _I32},
    META + "StatusDetails": {"name": _S, "group": _S, "kind": _S, "uid": _S,
                             "causes": {"type": "array", "items": META + "StatusCause"}, "retryAfterSeconds": _I32},
    META + "StatusCause": {"reason": _S, "message": _S, "field": _S},
    META + "DeleteOptions": {"apiVersion": _S, "kind": _S, "gracePeriodSeconds": _I64, "propagationPolicy": _S,
                             "dryRun": _STRINGS, "preconditions": META + "Preconditions", "orphanDependents": _B},
    META + "Preconditions": {"uid": _S, "resourceVersion": _S},
    META + "WatchEvent": {"type": _S, "object": RAW},
    META + "Patch": {},
}
REVIEW_TYPES: dict[str, dict] = {
    AUTHZ + "SelfSubjectAccessReview": {"apiVersion": _S, "kind": _S, "metadata": META + "ObjectMeta",
                                        "spec": AUTHZ + "SelfSubjectAccessReviewSpec",
                                        "status": AUTHZ + "SubjectAccessReviewStatus"},
    AUTHZ + "SelfSubjectAccessReviewSpec": {"resourceAttributes": AUTHZ + "ResourceAttributes",
                                            "nonResourceAttributes": AUTHZ + "NonResourceAttributes"},
    AUTHZ + "ResourceAttributes": {"namespace": _S, "verb": _S, "group": _S, "version": _S, "resource": _S,
                                   "subresource": _S, "name": _S},
    AUTHZ + "NonResourceAttributes": {"path": _S, "verb": _S},
    AUTHZ + "SubjectAccessReviewStatus": {"allowed": _B, "denied": _B, "reason": _S, "evaluationError": _S},
}
_REQUIRED = {META + "WatchEvent": ["type", "object"]}
# definitions that carry a GVK (meta/v1's are accepted in every group's version too)
_GVK = {META + "Status": {"group": "", "kind": "Status", "version": "v1"},
        META + "DeleteOptions": {"group": "", "kind": "DeleteOptions", "version": "v1"},
        META + "WatchEvent": {"group": "", "kind": "WatchEvent", "version": "v1"},
        AUTHZ + "SelfSubjectAccessReview": gvk(REVIEW)}


def _schema(v, ref: str, *, v3: bool, wrap: bool = True) -> dict:
    if isinstance(v, str):
        r = {"$ref": ref + v}
        return {"allOf": [r]} if (v3 and wrap) else r
    if v.get("type") == "array" and isinstance(v.get("items"), str):
        return {"type": "array", "items": _schema(v["items"], ref, v3=v3, wrap=False)}
    return dict(v)


def _declared(types: dict[str, dict], ref: str, *, v3: bool) -> dict:
    out = {}
    for full, fields in types.items():
        doc = _DOCS.get(full, {})
        props = {}
        for f, v in fields.items():
            s = _schema(v, ref, v3=v3)
            d = doc.get("properties", {}).get(f) or _DOCS.get("kind", {}).get(f)
            if d:
                s["description"] = d
            props[f] = s
        s = {"type": "object", "properties": dict(sorted(props.items()))} if props else {"type": "object"}
        if doc.get("description"):
            s["description"] = doc["description"]
        required = _REQUIRED.get(full) or [f for f in doc.get("required", ()) if f in fields]
        if required:
            s["required"] = required
        if full in _GVK:
            s["x-kubernetes-group-version-kind"] = [_GVK[full]]
        out[full] = s
    return out


def meta_definitions(ref: str, *, v3: bool) -> dict:
    out = _declared(META_TYPES, ref, v3=v3)
    out[RAW] = {"type": "object", "description": _DOCS.get(RAW, {}).get(
        "description", "RawExtension is used to hold extensions in external versions.")}
    return out


def json_kind_definitions(ref: str, *, v3: bool) -> dict:
    """The definitions of the JSON-only kinds (JSON_KINDS) and their parts."""
    return _declared(REVIEW_TYPES, ref, v3=v3)


def list_definition(kind: kinds.Kind, ref: str) -> dict:
    """PodList and its siblings: apiVersion, items, kind, metadata (ListMeta)."""
    doc = _DOCS.get(list_name(kind), {})
    common = _DOCS.get("kind", {})
    props = {
        "apiVersion": {"type": "string", "description": common.get("apiVersion", "")},
        "items": {"type": "array", "items": {"$ref": ref + kind_definition(kind)}},
        "kind": {"type": "string", "description": common.get("kind", "")},
        "metadata": {"$ref": ref + META + "ListMeta"},
    }
    if ref.startswith("#/components/"):
        props["metadata"] = {"allOf": [props["metadata"]]}
    for f, d in doc.get("properties", {}).items():
        if f in props and d:
            props[f]["description"] = d
    s = {"type": "object", "properties": props, "required": ["items"],
         "x-kubernetes-group-version-kind": [gvk(kind, kind.kind + "List")]}
    if doc.get("description"):
        s["description"] = doc["description"]
    return s
