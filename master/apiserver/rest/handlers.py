"""CRUD over HTTP: Kubernetes' resource URLs onto ApiService's Get/List/Create/Update/
UpdateStatus/Delete, and PATCH as read, patch (master/apiserver/patch.py), update.

URLs: /api/v1/... for the core group, /apis/<group>/<version>/... for the others;
`[namespaces/<ns>/]<resource>[/<name>[/<subresource>]]`. A namespaced resource without a
namespace lists across all of them (`kubectl get pods -A` is GET /api/v1/pods). GET with
?watch=1 (or a /watch/ path, see watch.py) is a watch.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from aiohttp import web
from google.protobuf import any_pb2

from kubelab.api import kinds
from kubelab.api.v1 import api_pb2
from kubelab.errors import (
    ApiError,
    BadRequest,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    Unauthorized,
)

from . import errors
from .app import JSON, RestAPI, json_response, peer_certificate
from .errors import HTTPError

PATCH_TYPES = ("application/merge-patch+json", "application/json-patch+json",
               "application/strategic-merge-patch+json")
APPLY_PATCH = "application/apply-patch+yaml"
PROTOBUF = "application/vnd.kubernetes.protobuf"
PATCH_RETRIES = 5
VALIDATIONS = ("Strict", "Warn", "Ignore")
_NAMED_FORBIDDEN = re.compile(r'^(\S+) "[^"]*" is forbidden:')


@dataclass
class Target:
    """What a URL names."""
    kind: kinds.Kind
    namespace: str = ""
    name: str = ""
    subresource: str = ""
    watch: bool = False

    @property
    def group(self) -> str:
        return self.kind.api_version.rpartition("/")[0]


def group_kinds(group: str, version: str) -> dict[str, kinds.Kind]:
    api_version = f"{group}/{version}" if group else version
    return {k.resource: k for k in kinds.KINDS if k.api_version == api_version}


def parse(group: str, version: str, tail: str) -> Target:
    """The target of `tail` (the path after /api/v1/ or /apis/<g>/<v>/), or NotFound."""
    parts = [p for p in tail.split("/") if p]
    served = group_kinds(group, version)
    watch = bool(parts) and parts[0] == "watch"
    if watch:
        parts = parts[1:]
    ns = ""
    if len(parts) >= 3 and parts[0] == "namespaces" and parts[2] in served and served[parts[2]].namespaced:
        ns, parts = parts[1], parts[2:]
    if not parts or parts[0] not in served or len(parts) > 3:
        raise HTTPError("NotFound", "the server could not find the requested resource")
    kind = served[parts[0]]
    name = parts[1] if len(parts) > 1 else ""
    sub = parts[2] if len(parts) > 2 else ""
    return Target(kind, ns, name, sub, watch)


def _bool(q, key: str) -> bool:
    return q.get(key, "").lower() in ("1", "true")


def _dry_run(q) -> bool:
    vals = q.getall("dryRun", [])
    for v in vals:
        if v != "All":
            raise BadRequest(f'dryRun: Unsupported value: "{v}": supported values: "All"')
    return bool(vals)


def _validation(q) -> str:
    v = q.get("fieldValidation", "Warn") or "Warn"
    if v not in VALIDATIONS:
        raise BadRequest(f'fieldValidation: Unsupported value: "{v}": supported values: "Ignore", "Strict", "Warn"')
    return v


def _int(q, key: str) -> int | None:
    v = q.get(key)
    if v in (None, ""):
        return None
    try:
        return int(v)
    except ValueError:
        raise BadRequest(f'{key}: Invalid value: "{v}": must be an integer') from None


def wants_table(request: web.Request) -> bool:
    """Whether the Accept header's negotiation (table.py's) picks a Table."""
    t = table_module()
    return t is not None and t.wants_table(request) is not None


def table_module():
    """table.py (the Table answers), or None while it is not there: plain objects then."""
    try:
        from . import table
    except ImportError:
        return None
    return table


async def read_body(request: web.Request, kind: kinds.Kind | None = None):
    """The request body as JSON (or, for Kubernetes' protobuf envelope, the kind's message)."""
    data = await request.read()
    ctype = request.content_type
    if ctype == PROTOBUF:
        try:
            from . import protobuf
        except ImportError:
            raise HTTPError("UnsupportedMediaType", f'the body of the request was in an unknown format "{ctype}" '
                            "- accepted media types include: application/json") from None
        return protobuf.decode(data, kind)
    if not data:
        return None
    try:
        return json.loads(data)
    except ValueError as e:
        if ctype in ("application/yaml", "application/apply-patch+yaml"):
            import yaml
            try:
                return yaml.safe_load(data)
            except yaml.YAMLError:
                pass
        raise BadRequest(f"the request body is not valid JSON: {e}") from None


def add_routes(app: web.Application, api: RestAPI) -> None:
    async def core(request):
        return await handle(api, request, "", "v1", request.match_info["tail"])

    async def grouped(request):
        m = request.match_info
        return await handle(api, request, m["group"], m["version"], m["tail"])
    async def review(request):
        return await self_subject_access_review(api, request)
    app.router.add_post("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", review)
    app.router.add_route("*", "/api/v1/{tail:.+}", core)
    app.router.add_route("*", "/apis/{group}/{version}/{tail:.+}", grouped)


async def handle(api: RestAPI, request: web.Request, group: str, version: str, tail: str) -> web.Response:
    t = parse(group, version, tail)
    try:
        return await dispatch(api, request, t)
    except ApiError as e:
        e = anonymous_forbidden(e, request, t)
        if isinstance(e, Forbidden) and request.method == "POST" and not t.name:
            # a create names its object in the body, so Kubernetes' refusal names none
            e = Forbidden(_NAMED_FORBIDDEN.sub(r"\1 is forbidden:", e.message, count=1))
        return api.error(e, name=t.name, resource=t.kind.resource, group=t.group)


def verb(request: web.Request, t: Target) -> str:
    if request.method == "GET":
        return "watch" if t.watch or (not t.name and _bool(request.query, "watch")) else ("get" if t.name else "list")
    return {"POST": "create", "PUT": "update", "PATCH": "update", "DELETE": "delete"}.get(request.method, "")


def anonymous_forbidden(e: ApiError, request: web.Request, t: Target) -> ApiError:
    """The authorizer refuses a caller with no credentials as Unauthorized (the gRPC face's
    answer); over HTTP Kubernetes answers 403 naming system:anonymous, which is what kubectl
    shows. A credential that was presented and refused stays 401."""
    if not isinstance(e, Unauthorized) or e.message != "Unauthorized":
        return e
    if request.headers.get("Authorization") or peer_certificate(request):
        return e
    from master.apiserver.auth import ANONYMOUS
    from master.apiserver.authz import Attributes
    return Forbidden(Attributes(ANONYMOUS, verb(request, t), t.kind.resource, t.namespace, t.name,
                                t.subresource).describe())


async def self_subject_access_review(api: RestAPI, request: web.Request) -> web.Response:
    """authorization.k8s.io/v1 SelfSubjectAccessReview (`kubectl auth can-i`): may the caller do
    this? Answered by the same admission every request goes through; nothing is stored."""
    body = await read_body(request)
    spec = body.get("spec") if isinstance(body, dict) else None
    if not isinstance(spec, dict):
        raise BadRequest("SelfSubjectAccessReview: spec: Required value")
    ra, nra = spec.get("resourceAttributes"), spec.get("nonResourceAttributes")
    if not isinstance(ra, dict) and not isinstance(nra, dict):
        raise Invalid('SelfSubjectAccessReview.authorization.k8s.io "" is invalid: spec.resourceAttributes: '
                      "Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes "
                      "must be specified")
    ctx = api.context(request)
    user = await api.svc.authn.authenticate(ctx)  # a refused credential is a 401, not a "no"
    status: dict = {"allowed": False}
    if isinstance(ra, dict):
        v, res = str(ra.get("verb") or ""), str(ra.get("resource") or "")
        v = {"patch": "update", "deletecollection": "delete"}.get(v, v)
        try:
            await api.svc.admit(ctx, v, res, str(ra.get("namespace") or ""), str(ra.get("name") or ""),
                                str(ra.get("subresource") or ""))
            status = {"allowed": True, "reason": "allowed by kubelab's authorizer (master/apiserver/authz.py)"}
        except (Forbidden, Unauthorized) as e:
            status = {"allowed": False, "reason": errors.status(e)["message"]}
    elif "system:masters" in user.groups:
        status = {"allowed": True, "reason": "system:masters may do anything"}
    else:
        # non-resource URLs: discovery, /version and health are for every authenticated caller
        path = str(nra.get("path") or "")
        ok = not user.anonymous and str(nra.get("verb") or "") == "get" and path.startswith(
            ("/api", "/apis", "/version", "/healthz", "/livez", "/readyz", "/openapi"))
        status = {"allowed": ok}
    out = {"kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
           "metadata": {"creationTimestamp": None}, "spec": spec, "status": status}
    return json_response(out, 201)


async def dispatch(api: RestAPI, request: web.Request, t: Target) -> web.StreamResponse:
    m, q, k = request.method, request.query, t.kind
    if t.subresource and not (t.subresource == "status" and k.has_status):
        raise HTTPError("NotFound", "the server could not find the requested resource")
    if m == "GET" and (t.watch or (not t.name and _bool(q, "watch"))):
        from .watch import serve_watch
        return await serve_watch(api, request, t)
    if t.watch:
        raise HTTPError("MethodNotAllowed", "the server does not allow this method on the requested resource")
    if m == "GET" and t.name:
        resp = await api.call("Get", api_pb2.GetRequest(resource=k.resource, namespace=t.namespace, name=t.name,
                                                        table=wants_table(request)), request)
        if resp.HasField("table") and wants_table(request):
            return json_response(table_module().object_table(api, resp, request))
        return json_response(api.encode(_unpack(k, resp.object)))
    if m == "GET":
        return await list_(api, request, t)
    if m == "POST" and not t.name:
        return await create(api, request, t)
    if m == "PUT" and t.name:
        return await update(api, request, t)
    if m == "PATCH" and t.name:
        return await patch(api, request, t)
    if m == "DELETE" and t.name and not t.subresource:
        return await delete(api, request, t)
    if m == "DELETE" and not t.name:
        return await delete_collection(api, request, t)
    raise HTTPError("MethodNotAllowed", "the server does not allow this method on the requested resource")


def _unpack(kind: kinds.Kind, a: any_pb2.Any):
    return kind.message.FromString(a.value)


def _pack(kind: kinds.Kind, msg) -> any_pb2.Any:
    return any_pb2.Any(type_url=kind.type_url, value=msg.SerializeToString())


def list_kind(kind: kinds.Kind) -> str:
    return kind.kind + "List"


async def list_(api: RestAPI, request: web.Request, t: Target) -> web.Response:
    q, k = request.query, t.kind
    req = api_pb2.ListRequest(resource=k.resource, namespace=t.namespace, labelSelector=q.get("labelSelector", ""),
                              fieldSelector=q.get("fieldSelector", ""), limit=_int(q, "limit") or 0,
                              continue_token=q.get("continue", ""), resourceVersion=q.get("resourceVersion", ""),
                              table=wants_table(request))
    resp = await api.call("List", req, request)
    if resp.HasField("table") and wants_table(request):
        return json_response(table_module().list_table(api, resp, request))
    md = {"resourceVersion": resp.resourceVersion}
    if resp.continue_token:
        md["continue"] = resp.continue_token
    if resp.HasField("remainingItemCount"):
        md["remainingItemCount"] = resp.remainingItemCount
    return json_response({"kind": list_kind(k), "apiVersion": k.api_version, "metadata": md,
                          "items": [api.encode(_unpack(k, a)) for a in resp.items]})


async def _object(api: RestAPI, request: web.Request, t: Target):
    body = await read_body(request, t.kind)
    if body is None:
        raise BadRequest("the request body is empty: an object was expected")
    if not isinstance(body, dict) and hasattr(body, "DESCRIPTOR"):
        return body, []  # protobuf: already the kind's message
    return api.decode(body, t.kind, validation=_validation(request.query))


async def create(api: RestAPI, request: web.Request, t: Target) -> web.Response:
    k = t.kind
    obj, warnings = await _object(api, request, t)
    if k.namespaced and t.namespace and obj.metadata.namespace and obj.metadata.namespace != t.namespace:
        raise BadRequest("the namespace of the provided object does not match the namespace sent on the request")
    if k.namespaced and t.namespace:
        obj.metadata.namespace = t.namespace
    resp = await api.call("Create", api_pb2.CreateRequest(resource=k.resource, namespace=t.namespace,
                                                          object=_pack(k, obj), dryRun=_dry_run(request.query)),
                          request)
    return json_response(api.encode(_unpack(k, resp.object)), 201, warnings)


def _check_identity(t: Target, obj) -> None:
    if obj.metadata.name and obj.metadata.name != t.name:
        raise BadRequest(f"the name of the object ({obj.metadata.name}) does not match the name on the URL ({t.name})")
    obj.metadata.name = t.name
    if t.kind.namespaced and t.namespace:
        if obj.metadata.namespace and obj.metadata.namespace != t.namespace:
            raise BadRequest("the namespace of the provided object does not match the namespace sent on the request")
        obj.metadata.namespace = t.namespace


async def _put(api: RestAPI, request: web.Request, t: Target, obj, warnings=()) -> web.Response:
    _check_identity(t, obj)
    k = t.kind
    req = api_pb2.UpdateRequest(resource=k.resource, namespace=t.namespace, object=_pack(k, obj),
                                dryRun=_dry_run(request.query))
    resp = await api.call("UpdateStatus" if t.subresource == "status" else "Update", req, request)
    return json_response(api.encode(_unpack(k, resp.object)), 200, warnings)


async def update(api: RestAPI, request: web.Request, t: Target) -> web.Response:
    obj, warnings = await _object(api, request, t)
    return await _put(api, request, t, obj, warnings)


async def patch(api: RestAPI, request: web.Request, t: Target) -> web.Response:
    """Read, patch, update with the read resourceVersion; on Conflict read again (as
    Kubernetes' server retries a patch that did not name a resourceVersion itself)."""
    ctype = request.content_type
    if ctype == APPLY_PATCH:
        raise HTTPError("UnsupportedMediaType", "the body of the request was in an unknown format - accepted "
                        "media types include: " + ", ".join(PATCH_TYPES) + " (server-side apply is not served)")
    if ctype not in PATCH_TYPES:
        raise HTTPError("UnsupportedMediaType", f'the body of the request was in an unknown format "{ctype}" - '
                        "accepted media types include: " + ", ".join(PATCH_TYPES))
    data = await request.read()
    try:
        body = json.loads(data or b"null")
    except ValueError as e:
        raise BadRequest(f"the patch is not valid JSON: {e}") from None
    from master.apiserver import patch as patching
    k = t.kind
    validation = _validation(request.query)
    for attempt in range(PATCH_RETRIES):
        cur = await api.call("Get", api_pb2.GetRequest(resource=k.resource, namespace=t.namespace, name=t.name),
                             request)
        current = api.encode(_unpack(k, cur.object))
        rv = current.get("metadata", {}).get("resourceVersion", "")
        try:
            patched = patching.apply_patch(ctype, current, body, k)
        except ValueError as e:
            raise BadRequest(str(e)) from None
        obj, warnings = api.decode(patched, k, validation=validation)
        asked_rv = obj.metadata.resourceVersion and obj.metadata.resourceVersion != rv
        if not obj.metadata.resourceVersion:
            obj.metadata.resourceVersion = rv
        try:
            return await _put(api, request, t, obj, warnings)
        except Conflict:
            if asked_rv or attempt == PATCH_RETRIES - 1:
                raise
    raise AssertionError("unreachable")


async def _delete_options(request: web.Request) -> dict:
    q = request.query
    opts: dict = {}
    if request.can_read_body:
        body = await read_body(request)
        if body is not None and not isinstance(body, dict):
            raise BadRequest("DeleteOptions: a JSON object was expected")
        opts.update(body or {})
    for key in ("gracePeriodSeconds", "propagationPolicy"):
        if key in q:
            opts[key] = _int(q, key) if key == "gracePeriodSeconds" else q[key]
    if "dryRun" in q:
        opts["dryRun"] = q.getall("dryRun")
    if "orphanDependents" in opts and "propagationPolicy" not in opts:
        opts["propagationPolicy"] = "Orphan" if opts["orphanDependents"] else "Background"
    return opts


def _delete_request(t: Target, name: str, opts: dict) -> api_pb2.DeleteRequest:
    req = api_pb2.DeleteRequest(resource=t.kind.resource, namespace=t.namespace, name=name)
    grace = opts.get("gracePeriodSeconds")
    if grace is not None:
        if not isinstance(grace, int) or isinstance(grace, bool):
            raise BadRequest(f"gracePeriodSeconds: Invalid value: {grace!r}: must be an integer")
        req.gracePeriodSeconds = grace
    pre = opts.get("preconditions") or {}
    if not isinstance(pre, dict):
        raise BadRequest("preconditions: a JSON object was expected")
    req.preconditionUid = str(pre.get("uid") or "")
    req.preconditionResourceVersion = str(pre.get("resourceVersion") or "")
    pp = opts.get("propagationPolicy") or ""
    if not isinstance(pp, str):
        raise BadRequest(f"propagationPolicy: Invalid value: {pp!r}: must be a string")
    req.propagationPolicy = pp
    dry = opts.get("dryRun") or []
    if dry not in ([], ["All"]):
        raise BadRequest(f'dryRun: Unsupported value: {dry!r}: supported values: "All"')
    req.dryRun = bool(dry)
    return req


async def delete(api: RestAPI, request: web.Request, t: Target) -> web.Response:
    opts = await _delete_options(request)
    resp = await api.call("Delete", _delete_request(t, t.name, opts), request)
    obj = _unpack(t.kind, resp.object)
    # Kubernetes answers 202 while a graceful deletion is under way, 200 once it is gone
    code = 202 if obj.metadata.deletionTimestamp and not opts.get("dryRun") else 200
    return json_response(api.encode(obj), code)


async def delete_collection(api: RestAPI, request: web.Request, t: Target) -> web.Response:
    """DELETE on a collection: every object the selectors match, one Delete each (each admitted)."""
    opts = await _delete_options(request)
    q, k = request.query, t.kind
    req = api_pb2.ListRequest(resource=k.resource, namespace=t.namespace, labelSelector=q.get("labelSelector", ""),
                              fieldSelector=q.get("fieldSelector", ""))
    items, rv = [], ""
    while True:
        resp = await api.call("List", req, request)
        rv = rv or resp.resourceVersion
        for a in resp.items:
            o = _unpack(k, a)
            sub = Target(k, o.metadata.namespace if k.namespaced else "", o.metadata.name)
            try:
                d = await api.call("Delete", _delete_request(sub, o.metadata.name, opts), request)
                items.append(api.encode(_unpack(k, d.object)))
            except NotFound:
                continue
        if not resp.continue_token:
            break
        req.continue_token = resp.continue_token
    return json_response({"kind": list_kind(k), "apiVersion": k.api_version,
                          "metadata": {"resourceVersion": rv}, "items": items})


__all__ = ["JSON", "Target", "add_routes", "parse"]
