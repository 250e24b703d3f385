"""Discovery and health over HTTP: /api, /api/v1, /apis, /apis/<group>[/<version>], /version,
/healthz, /livez, /readyz — what `kubectl api-resources` and every client's RESTMapper read.

Built from kubelab/api/kinds.py (one row per kind), plus the resources that are verbs rather
than stored kinds: pods' subresources (status, log, exec, attach, binding, eviction),
authorization.k8s.io's selfsubjectaccessreviews and pods/eviction (group policy, under
the core group's pods). Only the legacy (unaggregated) discovery format is answered, as application/json:
kubectl asks for apidiscovery.k8s.io/v2 first and falls back to it.
"""
from __future__ import annotations

import platform
import sys

from aiohttp import web

from kubelab.api import kinds

from .app import RestAPI, json_response

VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
SUBRESOURCE_VERBS = {"status": ["get", "patch", "update"], "log": ["get"], "exec": ["create", "get"],
                     "attach": ["create", "get"], "binding": ["create"], "eviction": ["create"]}
POD_SUBRESOURCES = ("binding", "eviction", "exec", "attach", "log", "status")
VERSION = {"major": "1", "minor": "37", "gitVersion": "v1.37.0-kubelab", "gitCommit": "kubelab",
           "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
           "goVersion": f"python{sys.version_info.major}.{sys.version_info.minor}",
           "compiler": "cpython", "platform": f"linux/{'amd64' if platform.machine() == 'x86_64' else platform.machine()}"}
# group/version -> extra resources that are not kinds of kinds.py
EXTRA = {
    "authorization.k8s.io/v1": [{"name": "selfsubjectaccessreviews", "singularName": "selfsubjectaccessreview",
                                 "namespaced": False, "kind": "SelfSubjectAccessReview", "verbs": ["create"]}],
}
HEALTH_CHECKS = ("ping", "log", "etcd", "informer-sync")


def group_versions() -> dict[str, list[str]]:
    """group -> its versions, in first-seen order ("" is the core group)."""
    out: dict[str, list[str]] = {}
    for k in kinds.KINDS:
        g, _, v = k.api_version.rpartition("/")
        out.setdefault(g, [])
        if v not in out[g]:
            out[g].append(v)
    for gv in EXTRA:
        g, _, v = gv.rpartition("/")
        out.setdefault(g, []).append(v)
    return out


def resources(group_version: str) -> list[dict]:
    out = []
    for k in kinds.KINDS:
        if k.api_version != group_version or not k.stored:
            continue
        r = {"name": k.resource, "singularName": k.singular, "namespaced": k.namespaced, "kind": k.kind,
             "verbs": VERBS}
        if k.short_names:
            r["shortNames"] = list(k.short_names)
        out.append(r)
        subs = POD_SUBRESOURCES if k.resource == "pods" else (("status",) if k.has_status else ())
        for s in subs:
            sub = {"name": f"{k.resource}/{s}", "singularName": "", "namespaced": k.namespaced,
                   "kind": k.kind, "verbs": SUBRESOURCE_VERBS[s]}
            if s == "binding":
                sub["kind"] = "Binding"
            elif s == "eviction":
                sub.update(kind="Eviction", group="policy", version="v1")
            elif s in ("log", "exec", "attach"):
                sub["kind"] = {"log": "Pod", "exec": "PodExecOptions", "attach": "PodAttachOptions"}[s]
            out.append(sub)
    out += EXTRA.get(group_version, [])
    return out


def resource_list(group_version: str) -> dict:
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
            "resources": resources(group_version)}


def api_group(name: str, versions: list[str]) -> dict:
    vs = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": vs, "preferredVersion": vs[0]}


def add_routes(app: web.Application, api: RestAPI) -> None:
    gv = group_versions()

    async def core_versions(request):
        addr = request.transport.get_extra_info("sockname") if request.transport else None
        host = f"{addr[0]}:{addr[1]}" if addr else ""
        return json_response({"kind": "APIVersions", "versions": gv[""],
                              "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}]})

    async def core_resources(request):
        return json_response(resource_list("v1"))

    async def groups(request):
        return json_response({"kind": "APIGroupList", "apiVersion": "v1",
                              "groups": [api_group(g, vs) for g, vs in gv.items() if g]})

    async def group(request):
        g = request.match_info["group"]
        if not g or g not in gv:
            raise web.HTTPNotFound()
        return json_response({"kind": "APIGroup", "apiVersion": "v1", **api_group(g, gv[g])})

    async def group_version(request):
        g, v = request.match_info["group"], request.match_info["version"]
        if v not in gv.get(g, []) or not g:
            raise web.HTTPNotFound()
        return json_response(resource_list(f"{g}/{v}"))

    async def version(request):
        return json_response(VERSION)

    def health(name):
        async def check(request):
            if "verbose" in request.query:
                lines = [f"[+]{c} ok" for c in HEALTH_CHECKS] + [f"{name} check passed"]
                return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")
            return web.Response(text="ok", content_type="text/plain")
        return check

    r = app.router
    for path, h in (("/api", core_versions), ("/api/", core_versions), ("/api/v1", core_resources),
                    ("/api/v1/", core_resources), ("/apis", groups), ("/apis/", groups),
                    ("/apis/{group}", group), ("/apis/{group}/", group),
                    ("/apis/{group}/{version}", group_version), ("/apis/{group}/{version}/", group_version),
                    ("/version", version), ("/version/", version)):
        r.add_get(path, h)
    for name in ("healthz", "livez", "readyz"):
        r.add_get(f"/{name}", health(name))
        r.add_get(f"/{name}/{{check}}", health(name))
