"""The meta.k8s.io types OpenAPI's operations name but no kind's message holds: lists
(PodList, ...), ListMeta, Status, DeleteOptions, Patch, WatchEvent. They are what the HTTP face
answers and accepts around the objects (master/apiserver/rest/errors.py writes Status,
handlers.py reads DeleteOptions), declared here by their Kubernetes fields (facts of
apimachinery's metav1) with Kubernetes' descriptions from openapi_descriptions.py.
"""
from __future__ import annotations

from kubelab.api import kinds

from .openapi_descriptions import TYPES as _DOCS

META = "io.k8s.apimachinery.pkg.apis.meta.v1."
_S = {"type": "string"}
_I32 = {"type": "integer", "format": "int32"}
_I64 = {"type": "integer", "format": "int64"}
_STRINGS = {"type": "array", "items": {"type": "string"}}

# name -> {field: schema (a string naming another meta type is a reference)}
_FIELDS: dict[str, dict] = {
    "ListMeta": {"continue": _S, "remainingItemCount": _I64, "resourceVersion": _S, "selfLink": _S},
    "Status": {"apiVersion": _S, "kind": _S, "metadata": "ListMeta", "status": _S, "message": _S,
               "reason": _S, "details": "StatusDetails", "code": _I32},
    "StatusDetails": {"name": _S, "group": _S, "kind": _S, "uid": _S,
                      "causes": {"type": "array", "items": "StatusCause"}, "retryAfterSeconds": _I32},
    "StatusCause": {"reason": _S, "message": _S, "field": _S},
    "DeleteOptions": {"apiVersion": _S, "kind": _S, "gracePeriodSeconds": _I64, "propagationPolicy": _S,
                      "dryRun": _STRINGS, "preconditions": "Preconditions", "orphanDependents": {"type": "boolean"}},
    "Preconditions": {"uid": _S, "resourceVersion": _S},
    "WatchEvent": {"type": _S, "object": "RawExtension"},
    "Patch": {},
}
_REQUIRED = {"WatchEvent": ["type", "object"]}
# kinds whose definitions carry a GVK (meta/v1 is the version every group also accepts them in)
_GVK = {"Status", "DeleteOptions", "WatchEvent"}


def _schema(v, ref: str, *, v3: bool, wrap: bool = True) -> dict:
    if isinstance(v, str):
        target = "io.k8s.apimachinery.pkg.runtime.RawExtension" if v == "RawExtension" else META + v
        r = {"$ref": ref + target}
        return {"allOf": [r]} if (v3 and wrap) else r
    if v.get("type") == "array" and isinstance(v.get("items"), str):
        return {"type": "array", "items": _schema(v["items"], ref, v3=v3, wrap=False)}
    return dict(v)


def meta_definitions(ref: str, *, v3: bool) -> dict:
    out = {}
    for name, fields in _FIELDS.items():
        full = META + name
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
        if name in _REQUIRED:
            s["required"] = _REQUIRED[name]
        if name in _GVK:
            s["x-kubernetes-group-version-kind"] = [{"group": "", "kind": name, "version": "v1"}]
        out[full] = s
    out["io.k8s.apimachinery.pkg.runtime.RawExtension"] = {
        "type": "object", "description": _DOCS.get("io.k8s.apimachinery.pkg.runtime.RawExtension", {}).get(
            "description", "RawExtension is used to hold extensions in external versions.")}
    return out


def list_definition(kind: kinds.Kind, ref: str) -> dict:
    """PodList and its siblings: apiVersion, items, kind, metadata (ListMeta)."""
    from .openapi_names import definition_name, gvk, list_name
    doc = _DOCS.get(list_name(kind), {})
    common = _DOCS.get("kind", {})
    props = {
        "apiVersion": {"type": "string", "description": common.get("apiVersion", "")},
        "items": {"type": "array", "items": {"$ref": ref + definition_name(kind.message.DESCRIPTOR)}},
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
