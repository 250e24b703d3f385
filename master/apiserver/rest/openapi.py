"""/openapi/v2 and /openapi/v3: the kinds' schemas and operations, as kubectl reads them for
`explain`, for `apply`'s strategic merge patches (the patch-merge-key extensions) and to
decide that the server validates fields itself (the fieldValidation parameter).

The documents are built from the protobuf descriptors (openapi_schema.py, openapi_meta.py)
and kinds.py's table (openapi_paths.py) once per process, on first request, and kept as
JSON bytes (and gzip) with their hash. /openapi/v3 is the index of one document per
group-version, each at `/openapi/v3/<api/v1|apis/G/V>?hash=<SHA-512>`: a request naming the
current hash may be cached for good (as Kubernetes answers it), an old hash is redirected to
the current one, and every answer has an ETag for If-None-Match.

/openapi/v2 is answered in JSON, or in gnostic's protobuf (openapi_v2pb.py) for kubectl, which
asks for nothing else: it validates a create-only kind (no PATCH listing fieldValidation) on the
client against it, and `kubectl explain --output=plaintext-openapiv2` reads it. Before that
client-side validation kubectl asks whether the kind is a CRD: kubelab serves none, and answers
apiextensions' CRD list here, empty.

Like discovery (discovery.py), the documents are public: they describe types, not objects.

Interface (called by app.py): add_routes(app: aiohttp.web.Application, api) -> None.
"""
from __future__ import annotations

import asyncio
import gzip
import hashlib
import json

from aiohttp import web

from kubelab.api import kinds

from . import errors, openapi_v2pb
from .app import RestAPI
from .openapi_meta import JSON_KINDS
from .openapi_paths import group_prefix, render_paths
from .openapi_schema import definitions

V2_REF = "#/definitions/"
V3_REF = "#/components/schemas/"
# how a client authenticates (both documents name it the same way)
_SECURITY = {"BearerToken": {"description": "Bearer Token authentication", "in": "header",
                             "name": "authorization", "type": "apiKey"}}


def _info() -> dict:
    from .discovery import VERSION
    return {"title": "Kubernetes", "version": VERSION["gitVersion"]}


ALL_KINDS = kinds.KINDS + JSON_KINDS


def v2_document(kind_list=ALL_KINDS) -> dict:
    return {"swagger": "2.0", "info": _info(), "paths": render_paths(kind_list, V2_REF, v3=False),
            "definitions": definitions(kind_list, V2_REF, v3=False), "securityDefinitions": _SECURITY,
            "security": [{"BearerToken": []}]}


def group_versions(kind_list=ALL_KINDS) -> dict[str, list[kinds.Kind]]:
    """'api/v1' / 'apis/<group>/<version>' -> the kinds served there, in kinds.py's order."""
    out: dict[str, list[kinds.Kind]] = {}
    for k in kind_list:
        out.setdefault(group_prefix(k).lstrip("/"), []).append(k)
    return out


def v3_document(kind_list) -> dict:
    return {"openapi": "3.0.0", "info": _info(), "paths": render_paths(kind_list, V3_REF, v3=True),
            "components": {"schemas": definitions(kind_list, V3_REF, v3=True), "securitySchemes": _SECURITY},
            "security": [{"BearerToken": []}]}


class Document:
    """One served document: its bytes (JSON, or another encoding), their gzip, and the hash that
    names the version."""

    def __init__(self, doc: dict | None = None, *, body: bytes | None = None,
                 content_type: str = "application/json"):
        self.body = body if body is not None else json.dumps(doc, separators=(",", ":")).encode()
        self.content_type = content_type
        self.gzipped = gzip.compress(self.body, compresslevel=6, mtime=0)
        self.hash = hashlib.sha512(self.body).hexdigest().upper()
        self.etag = f'"{self.hash}"'


class Documents:
    """The process's documents, built on first use (their sources never change at run time)."""

    def __init__(self, kind_list=ALL_KINDS):
        self._kinds = tuple(kind_list)
        self._v2: Document | None = None
        self._v2pb: Document | None = None
        self._v3: dict[str, Document] | None = None
        self._lock = asyncio.Lock()

    async def ready(self) -> "Documents":
        """Build both documents once, off the event loop (a few hundred ms of CPU that would
        otherwise stall every other request, watches and heartbeats included)."""
        if self._v2pb is None or self._v3 is None:
            async with self._lock:
                if self._v2pb is None or self._v3 is None:
                    await asyncio.to_thread(lambda: (self.v2_protobuf(), self.v3()))
        return self

    def v2(self) -> Document:
        if self._v2 is None:
            self._v2 = Document(v2_document(self._kinds))
        return self._v2

    def v2_protobuf(self) -> Document:
        if self._v2pb is None:
            body = openapi_v2pb.document(json.loads(self.v2().body))
            self._v2pb = Document(body=body, content_type=openapi_v2pb.RESPONSE_TYPE)
        return self._v2pb

    def v3(self) -> dict[str, Document]:
        if self._v3 is None:
            self._v3 = {gv: Document(v3_document(ks)) for gv, ks in group_versions(self._kinds).items()}
        return self._v3

    def v3_index(self) -> dict:
        return {"paths": {gv: {"serverRelativeURL": f"/openapi/v3/{gv}?hash={d.hash}"}
                          for gv, d in self.v3().items()}}


def _accepts(request: web.Request, *types: str) -> bool:
    accept = request.headers.get("Accept", "")
    if not accept.strip():
        return True
    for part in accept.split(","):
        media = part.split(";")[0].strip().lower()
        if media in ("*/*", "application/*") or media in types:
            return True
    return False


def _serve(request: web.Request, doc: Document, *, immutable: bool) -> web.StreamResponse:
    headers = {"ETag": doc.etag, "Vary": "Accept, Accept-Encoding",
               "Cache-Control": "public, immutable, max-age=31536000" if immutable else "no-cache, private"}
    if doc.etag in [t.strip() for t in request.headers.get("If-None-Match", "").split(",")]:
        return web.Response(status=304, headers=headers)
    if "gzip" in request.headers.get("Accept-Encoding", "").lower():
        headers["Content-Encoding"] = "gzip"
        return web.Response(body=doc.gzipped, headers={**headers, "Content-Type": doc.content_type})
    return web.Response(body=doc.body, headers={**headers, "Content-Type": doc.content_type})


def _not_acceptable(request: web.Request, *types: str) -> web.Response:
    return RestAPI.error(errors.HTTPError(
        "NotAcceptable", f"only the following media types are accepted: {', '.join(types or ('application/json',))} "
                         f"(asked for {request.headers.get('Accept', '')})"))


def add_routes(app: web.Application, api) -> None:
    """Register /openapi/v2 and /openapi/v3[/...]."""
    docs = Documents()

    async def v2(request: web.Request) -> web.StreamResponse:
        await docs.ready()
        if _accepts(request, "application/json"):
            return _serve(request, docs.v2(), immutable=False)
        if _accepts(request, openapi_v2pb.CONTENT_TYPE, openapi_v2pb.RESPONSE_TYPE):
            return _serve(request, docs.v2_protobuf(), immutable=False)
        return _not_acceptable(request, "application/json", openapi_v2pb.CONTENT_TYPE)

    async def v3_index(request: web.Request) -> web.StreamResponse:
        if not _accepts(request, "application/json"):
            return _not_acceptable(request)
        return web.json_response((await docs.ready()).v3_index(), headers={"Cache-Control": "no-cache, private"})

    async def v3_group(request: web.Request) -> web.StreamResponse:
        gv = request.match_info["gv"]
        doc = (await docs.ready()).v3().get(gv)
        if doc is None:
            return RestAPI.error(errors.HTTPError("NotFound", "the server could not find the requested resource"))
        if not _accepts(request, "application/json"):
            return _not_acceptable(request)
        asked = request.query.get("hash")
        if asked is not None and asked != doc.hash:
            # a client holding an old index: send it to the current version of the document
            raise web.HTTPMovedPermanently(f"/openapi/v3/{gv}?hash={doc.hash}")
        return _serve(request, doc, immutable=asked is not None)

    async def no_crds(request: web.Request) -> web.StreamResponse:
        # kubectl's field-validation check, for a kind whose PATCH does not list fieldValidation
        # (create-only kinds), asks whether the kind is a CRD before validating on the client
        # against /openapi/v2; kubelab serves no custom resources, so the answer is an empty list
        return web.json_response({"kind": "CustomResourceDefinitionList", "apiVersion": "apiextensions.k8s.io/v1",
                                  "metadata": {"resourceVersion": "0"}, "items": []})

    app.router.add_get("/openapi/v2", v2)
    app.router.add_get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", no_crds)
    app.router.add_get("/openapi/v3", v3_index)
    app.router.add_get("/openapi/v3/{gv:.+}", v3_group)
