"""Table answers of the HTTP face: `Accept: application/json;as=Table;v=v1;g=meta.k8s.io`
(or v1beta1), what `kubectl get` asks for and prints as it is.

The columns are not computed here: handlers.py sets `table` on the Get/List request and the
gRPC face's ApiService answers the Table of kubelab.api.printers (the same one kubelab's own
`get` prints); this module only re-encodes it as meta.k8s.io JSON, with each row's object as
`includeObject` asks (None; Metadata, the default: a PartialObjectMetadata; Object: the whole
object). A watch event's object becomes a Table of one row, its columnDefinitions on the
first event of the stream only, as Kubernetes' watch encoder sends them.
"""
from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from google.protobuf.message import Message

from kubelab.api import kinds, printers
from kubelab.api.v1 import api_pb2
from kubelab.errors import BadRequest

from .errors import HTTPError

GROUP = "meta.k8s.io"
VERSIONS = ("v1", "v1beta1")
INCLUDE = ("None", "Metadata", "Object")
_HEADERS_SENT = web.RequestKey("kubelab.table.headers_sent", bool)  # per watch: columnDefinitions went out


@dataclass(frozen=True)
class TableRequest:
    version: str  # meta.k8s.io/<version> of the Table (and of PartialObjectMetadata)
    include: str  # includeObject: None, Metadata or Object

    @property
    def api_version(self) -> str:
        return f"{GROUP}/{self.version}"


def _media_types(accept: str):
    """(type, {param: value}) of each media range of an Accept header, in the client's order."""
    for part in accept.split(","):
        fields = [f.strip() for f in part.split(";")]
        params = {}
        for f in fields[1:]:
            k, _, v = f.partition("=")
            params[k.strip().lower()] = v.strip().strip('"')
        if fields[0]:
            yield fields[0].lower(), params


def wants_table(request) -> TableRequest | None:
    """The Table this request asks for, or None for the plain object/list. The first media
    range the server can answer wins, as in Kubernetes' negotiation; a Table of an unknown
    group/version with nothing else acceptable is 406 NotAcceptable, a bad includeObject 400."""
    asked_table = False
    for mtype, params in _media_types(request.headers.get("Accept", "")):
        if params.get("as") == "Table":
            asked_table = True
            if mtype in ("application/json", "application/*", "*/*") and params.get("g") == GROUP \
                    and params.get("v") in VERSIONS:
                return TableRequest(params["v"], _include(request))
            continue
        if params.get("as"):
            continue  # another conversion (PartialObjectMetadata, ...) is not served
        if mtype in ("application/json", "application/*", "*/*", "application/yaml"):
            return None
    if asked_table:
        raise HTTPError("NotAcceptable", "only the following media types are accepted: application/json, "
                        "application/json;as=Table;v=v1;g=meta.k8s.io, "
                        "application/json;as=Table;v=v1beta1;g=meta.k8s.io")
    return None


def _include(request) -> str:
    v = request.query.get("includeObject", "") or "Metadata"
    if v not in INCLUDE:
        raise BadRequest(f'unrecognized includeObject value: "{v}"')
    return v


def column_definitions(table: api_pb2.Table) -> list[dict]:
    return [{"name": c.name, "type": c.type, "format": c.format, "description": c.description,
             "priority": c.priority} for c in table.columnDefinitions]


def _row_object(api, obj: Message, tr: TableRequest):
    if tr.include == "None":
        return None
    if tr.include == "Object":
        return api.encode(obj)
    # only the metadata goes through the JSON codec: a list of thousands of pods is cheap again
    bare = type(obj)()
    bare.metadata.CopyFrom(obj.metadata)
    return {"kind": "PartialObjectMetadata", "apiVersion": tr.api_version,
            "metadata": api.encode(bare).get("metadata", {})}


def render(api, table: api_pb2.Table, tr: TableRequest, metadata: dict, *, headers: bool = True) -> dict:
    """A meta.k8s.io Table (JSON) of the gRPC face's Table; headers=False: columnDefinitions
    null, as on a watch's later events."""
    rows = []
    for row in table.rows:
        r: dict = {"cells": printers.cell_values(row)}
        kind = kinds.BY_TYPE_URL[row.object.type_url]
        o = _row_object(api, kind.message.FromString(row.object.value), tr)
        if o is not None:
            r["object"] = o
        rows.append(r)
    return {"kind": "Table", "apiVersion": tr.api_version, "metadata": metadata,
            "columnDefinitions": column_definitions(table) if headers else None, "rows": rows}


def _requested(request) -> TableRequest:
    tr = wants_table(request)
    if tr is None:  # handlers only call here for an `as=Table` Accept that fell back to plain JSON
        raise HTTPError("NotAcceptable", "the Table requested cannot be served in this media type")
    return tr


def object_table(api, resp: api_pb2.ObjectResponse, request) -> dict:
    """GET of one object: a Table of one row; metadata.resourceVersion is the object's."""
    tr = _requested(request)
    kind = kinds.BY_TYPE_URL[resp.object.type_url]
    obj = kind.message.FromString(resp.object.value)
    return render(api, resp.table, tr, {"resourceVersion": obj.metadata.resourceVersion})


def list_table(api, resp: api_pb2.ListResponse, request) -> dict:
    """LIST: a Table with the list's resourceVersion and continue token."""
    tr = _requested(request)
    md: dict = {"resourceVersion": resp.resourceVersion}
    if resp.continue_token:
        md["continue"] = resp.continue_token
    if resp.HasField("remainingItemCount"):
        md["remainingItemCount"] = resp.remainingItemCount
    return render(api, resp.table, tr, md)


def event_table(api, obj: Message, request) -> dict:
    """A watch event's object as a Table of one row, computed by the same printers; the
    columnDefinitions only on the stream's first event. A BOOKMARK (an object with no name,
    only its resourceVersion) is a Table without rows."""
    tr = _requested(request)
    kind = kinds.kind_of(obj)
    md = {"resourceVersion": obj.metadata.resourceVersion}
    first = not request.get(_HEADERS_SENT, False)
    if not obj.metadata.name:
        t = printers.table(kind, [])
        return {"kind": "Table", "apiVersion": tr.api_version, "metadata": md,
                "columnDefinitions": column_definitions(t) if first else None, "rows": []}
    request[_HEADERS_SENT] = True
    return render(api, printers.table(kind, [obj]), tr, md, headers=first)
