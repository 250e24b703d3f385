"""WATCH over HTTP: ApiService.Watch's events as a chunked stream of JSON lines,
`{"type": "ADDED", "object": {...}}`, the way Kubernetes streams them.

?watch=1 on a collection or the legacy /watch/ paths. resourceVersion as on gRPC ("" or "0":
the current objects as ADDED first, then changes; N: the changes after N). allowWatchBookmarks
passes through. sendInitialEvents=true (with resourceVersionMatch=NotOlderThan, as Kubernetes
requires) sends the current objects and then a BOOKMARK annotated k8s.io/initial-events-end,
the end of the watch cache's snapshot. A resourceVersion older than the cache holds is not an
HTTP error but an ERROR event with a 410 Expired Status, as Kubernetes' watch cache answers;
errors known before the stream starts (authorization, selectors) are plain HTTP Status answers.
timeoutSeconds ends the stream cleanly (default 30 minutes, Kubernetes' minRequestTimeout).
"""
from __future__ import annotations

import asyncio
import json

from aiohttp import web

from kubelab.api.v1 import api_pb2
from kubelab.errors import ApiError, BadRequest, Invalid, ServiceUnavailable
from kubelab.etcd.client import EtcdError
from kubelab.selectors import FieldSelector, LabelSelector

from . import errors

DEFAULT_TIMEOUT = 1800
INITIAL_EVENTS_END = "k8s.io/initial-events-end"


def add_routes(app: web.Application, api) -> None:
    """The /watch/ paths are parsed by handlers.py's catch-all (Target.watch)."""


def _line(event_type: str, obj: dict) -> bytes:
    return json.dumps({"type": event_type, "object": obj}, separators=(",", ":")).encode() + b"\n"


def _options(q, t) -> tuple[api_pb2.WatchRequest, bool, float]:
    rv = q.get("resourceVersion", "")
    initial = q.get("sendInitialEvents", "").lower() in ("1", "true")
    bookmarks = q.get("allowWatchBookmarks", "").lower() in ("1", "true")
    if "sendInitialEvents" in q and q.get("resourceVersionMatch") != "NotOlderThan":
        raise Invalid(f'{t.kind.kind} "" is invalid: resourceVersionMatch: Forbidden: sendInitialEvents requires '
                      "setting resourceVersionMatch to NotOlderThan")
    if initial:
        if not bookmarks:
            raise Invalid(f'{t.kind.kind} "" is invalid: allowWatchBookmarks: Forbidden: sendInitialEvents '
                          "requires allowWatchBookmarks")
        rv = ""  # the snapshot now is not older than any resourceVersion the client saw
    try:
        timeout = float(q.get("timeoutSeconds") or DEFAULT_TIMEOUT)
    except ValueError:
        raise BadRequest(f'timeoutSeconds: Invalid value: "{q.get("timeoutSeconds")}": must be an integer') from None
    labels, fields = q.get("labelSelector", ""), q.get("fieldSelector", "")
    if t.name:  # a watch of one object: GET .../watch/<resource>/<name>
        fields = ",".join(s for s in (fields, f"metadata.name={t.name}") if s)
    req = api_pb2.WatchRequest(resource=t.kind.resource, namespace=t.namespace, labelSelector=labels,
                               fieldSelector=fields, resourceVersion=rv, allowWatchBookmarks=bookmarks)
    return req, initial, timeout


async def serve_watch(api, request: web.Request, t) -> web.StreamResponse:
    req, initial, timeout = _options(request.query, t)
    ctx = api.context(request)
    # what can fail before the stream starts is answered as HTTP: the same admission and the
    # same selector parsers ApiService.Watch runs again right after
    try:
        await api.svc.admit(ctx, "watch", t.kind.resource, t.namespace)
    except EtcdError as e:
        raise ServiceUnavailable(f"etcd: {e}") from None
    LabelSelector.parse(req.labelSelector)
    FieldSelector.parse(req.fieldSelector, t.kind.field_selectors, t.kind.kind)
    from .handlers import table_module, wants_table
    table = table_module() if wants_table(request) else None
    resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json",
                                                   "Transfer-Encoding": "chunked"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    gen = api.svc.Watch(req, ctx)
    loop = asyncio.get_running_loop()
    end = loop.time() + max(timeout, 0)
    marked = not initial
    try:
        while True:
            left = end - loop.time()
            if left <= 0:
                break
            try:
                data = await asyncio.wait_for(anext(gen), left)
            except (TimeoutError, StopAsyncIteration):
                break
            ev = api_pb2.WatchEvent.FromString(data)
            obj = t.kind.message.FromString(ev.object.value)
            if ev.type == "BOOKMARK" and not marked:
                obj.metadata.annotations[INITIAL_EVENTS_END] = "true"
                marked = True
            body = table.event_table(api, obj, request) if table is not None else api.encode(obj)
            await resp.write(_line(ev.type, body))
    except ApiError as e:
        await resp.write(_line("ERROR", errors.status(e)))
    except EtcdError as e:
        await resp.write(_line("ERROR", errors.status(ServiceUnavailable(f"etcd: {e}"))))
    except (ConnectionResetError, asyncio.CancelledError):
        raise
    finally:
        await gen.aclose()
    await resp.write_eof()
    return resp
