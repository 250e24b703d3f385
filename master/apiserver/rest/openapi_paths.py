"""The paths of the OpenAPI documents (master/apiserver/rest/openapi.py): for each kind the
operations the HTTP face serves (handlers.py: list, create, read, replace, patch, delete, the
status subresource; streams.py: pods/log), with Kubernetes' operation ids, actions, GVK
extensions and query parameters.

kubectl reads more than documentation here: `apply`/`create`/`replace` look for the
`fieldValidation` parameter on the kind's PATCH operation (the one carrying the kind's
x-kubernetes-group-version-kind) to decide that the server validates fields itself, and then
send fieldValidation=Strict instead of validating on the client.

Operations are described once (`operations`) and rendered for either document: v2 puts a
parameter's type beside it and a response's schema on the response, v3 puts them in `schema`
and `content`.
"""
from __future__ import annotations

from kubelab.api import kinds

from .openapi_descriptions import PARAMETERS as _PARAM_DOCS
from .openapi_names import META, gvk, kind_definition, list_name

JSON = "application/json"
WATCH = "application/json;stream=watch"
PATCH_TYPES = ("application/json-patch+json", "application/merge-patch+json",
               "application/strategic-merge-patch+json")

_LIST = (("labelSelector", "string"), ("fieldSelector", "string"), ("watch", "boolean"),
         ("allowWatchBookmarks", "boolean"), ("resourceVersion", "string"), ("resourceVersionMatch", "string"),
         ("sendInitialEvents", "boolean"), ("timeoutSeconds", "integer"), ("limit", "integer"),
         ("continue", "string"))
_WRITE = (("dryRun", "string"), ("fieldManager", "string"), ("fieldValidation", "string"))
_PATCH = _WRITE + (("force", "boolean"),)
_DELETE = (("gracePeriodSeconds", "integer"), ("propagationPolicy", "string"), ("dryRun", "string"))
_LOG = (("container", "string"), ("follow", "boolean"), ("limitBytes", "integer"), ("previous", "boolean"),
        ("sinceSeconds", "integer"), ("tailLines", "integer"), ("timestamps", "boolean"))


def group_prefix(kind: kinds.Kind) -> str:
    """The URL prefix of the kind's group-version: /api/v1 or /apis/<group>/<version>."""
    return "/api/v1" if "/" not in kind.api_version else "/apis/" + kind.api_version


def _camel(kind: kinds.Kind) -> str:
    group, _, version = kind.api_version.rpartition("/")
    return (group.split(".")[0].capitalize() or "Core") + version.capitalize()


def tag(kind: kinds.Kind) -> str:
    group, _, version = kind.api_version.rpartition("/")
    return (group.split(".")[0] or "core") + "_" + version


def _op(kind, method, action, op_id, description, params=(), *, body=None, body_types=(JSON,),
        response=None, codes=("200",), produces=(JSON,), gvk_kind=None) -> dict:
    return {"method": method, "action": action, "id": op_id, "description": description, "params": params,
            "body": body, "body_types": body_types, "response": response, "codes": codes, "produces": produces,
            "gvk": gvk(kind) if gvk_kind is None else gvk_kind, "tag": tag(kind)}


def operations(kind: kinds.Kind) -> dict[str, dict]:
    """path -> {"params": path-level parameters, "ops": [operation]} for one kind."""
    g, k, obj = _camel(kind), kind.kind, kind_definition(kind)
    ns = "Namespaced" if kind.namespaced else ""
    base = group_prefix(kind) + ("/namespaces/{namespace}/" if kind.namespaced else "/") + kind.resource
    scope = [("namespace", "object name and auth scope, such as for teams and projects")] if kind.namespaced else []
    one = scope + [("name", f"name of the {k}")]
    paths: dict[str, dict] = {}
    if not kind.stored:  # Binding, SelfSubjectAccessReview: a create answered, never read back
        paths[base] = {"params": scope, "ops": [
            _op(kind, "post", "post", f"create{g}{ns}{k}", f"create a {k}", _WRITE, body=obj, response=obj,
                codes=("200", "201", "202"))]}
        return paths
    lst = list_name(kind)
    paths[base] = {"params": scope, "ops": [
        _op(kind, "get", "list", f"list{g}{ns}{k}", f"list or watch objects of kind {k}", _LIST, response=lst,
            produces=(JSON, WATCH)),
        _op(kind, "post", "post", f"create{g}{ns}{k}", f"create a {k}", _WRITE, body=obj, response=obj,
            codes=("200", "201", "202")),
        _op(kind, "delete", "deletecollection", f"deletecollection{g}{ns}{k}", f"delete collection of {k}",
            _DELETE + _LIST, body=META + "DeleteOptions", response=META + "Status"),
    ]}
    paths[base + "/{name}"] = {"params": one, "ops": [
        _op(kind, "get", "get", f"read{g}{ns}{k}", f"read the specified {k}", response=obj),
        _op(kind, "put", "put", f"replace{g}{ns}{k}", f"replace the specified {k}", _WRITE, body=obj,
            response=obj, codes=("200", "201")),
        _op(kind, "patch", "patch", f"patch{g}{ns}{k}", f"partially update the specified {k}", _PATCH,
            body=META + "Patch", body_types=PATCH_TYPES, response=obj, codes=("200", "201")),
        _op(kind, "delete", "delete", f"delete{g}{ns}{k}", f"delete a {k}", _DELETE, body=META + "DeleteOptions",
            response=obj, codes=("200", "202")),
    ]}
    if kind.has_status:
        paths[base + "/{name}/status"] = {"params": one, "ops": [
            _op(kind, "get", "get", f"read{g}{ns}{k}Status", f"read status of the specified {k}", response=obj),
            _op(kind, "put", "put", f"replace{g}{ns}{k}Status", f"replace status of the specified {k}", _WRITE,
                body=obj, response=obj, codes=("200", "201")),
            _op(kind, "patch", "patch", f"patch{g}{ns}{k}Status", f"partially update status of the specified {k}",
                _PATCH, body=META + "Patch", body_types=PATCH_TYPES, response=obj, codes=("200", "201")),
        ]}
    if kind.namespaced:
        paths[group_prefix(kind) + "/" + kind.resource] = {"params": [], "ops": [
            _op(kind, "get", "list", f"list{g}{k}ForAllNamespaces", f"list or watch objects of kind {k}", _LIST,
                response=lst, produces=(JSON, WATCH))]}
    if kind.kind == "Pod":
        paths[base + "/{name}/log"] = {"params": one, "ops": [
            _op(kind, "get", "get", f"read{g}{ns}PodLog", "read log of the specified Pod", _LOG, response=None,
                produces=("text/plain",), gvk_kind={"group": "", "kind": "Pod", "version": "v1"})]}
    return paths


def _param(name: str, where: str, typ: str, description: str | None, *, v3: bool, required: bool = False):
    p = {"name": name, "in": where}
    if description:
        p["description"] = description
    if required:
        p["required"] = True
    if v3:
        p["schema"] = {"type": typ, "uniqueItems": True}
    else:
        p.update({"type": typ, "uniqueItems": True})
    return p


def _render(op: dict, ref: str, *, v3: bool) -> dict:
    out = {"description": op["description"], "operationId": op["id"], "tags": [op["tag"]],
           "parameters": [_param(n, "query", t, _PARAM_DOCS.get(n), v3=v3) for n, t in op["params"]],
           "x-kubernetes-action": op["action"], "x-kubernetes-group-version-kind": op["gvk"]}
    names = {"200": "OK", "201": "Created", "202": "Accepted"}
    schema = {"$ref": ref + op["response"]} if op["response"] else {"type": "string"}
    if v3:
        if op["body"]:
            out["requestBody"] = {"content": {t: {"schema": {"$ref": ref + op["body"]}} for t in op["body_types"]},
                                  **({"required": True} if op["method"] in ("post", "put", "patch") else {})}
        out["responses"] = {c: {"description": names[c], "content": {t: {"schema": schema} for t in op["produces"]}}
                            for c in op["codes"]}
    else:
        if op["body"]:
            out["parameters"].insert(0, {"name": "body", "in": "body", "schema": {"$ref": ref + op["body"]},
                                         **({"required": True} if op["method"] in ("post", "put", "patch")
                                            else {})})
        out["consumes"] = list(op["body_types"]) if op["body"] else ["*/*"]
        out["produces"] = list(op["produces"])
        out["schemes"] = ["https"]
        out["responses"] = {c: {"description": names[c], "schema": schema} for c in op["codes"]}
        out["responses"]["401"] = {"description": "Unauthorized"}
    return out


def render_paths(kind_list, ref: str, *, v3: bool) -> dict:
    paths = {}
    for kind in kind_list:
        for path, item in operations(kind).items():
            rendered = {op["method"]: _render(op, ref, v3=v3) for op in item["ops"]}
            params = [_param(n, "path", "string", d, v3=v3, required=True) for n, d in item["params"]]
            params.append(_param("pretty", "query", "string", _PARAM_DOCS.get("pretty"), v3=v3))
            rendered["parameters"] = params
            paths[path] = rendered
    return dict(sorted(paths.items()))
