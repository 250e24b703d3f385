"""pods/log, pods/exec and pods/attach (WebSocket), pods/binding, pods/eviction over HTTP.

Each is a translation onto the gRPC face's ApiService, so the admission (who may get
pods/log, create pods/exec) and the relay to the pod's kubelet (master/apiserver/proxy.py)
are the ones `kubelab logs` and `kubelab exec` use:
- log: PodLogs; the kubelet's first (empty) chunk says the container was found, so the 200
  goes out on it and everything before it (no such pod or container, not started yet) is
  a Status; then text/plain, chunked while following.
- exec: PodExec; the kubelet's first (empty) stdout message says the process started, so
  the WebSocket upgrade (remotecommand.py's protocol) happens on it and refusals before it
  are Statuses kubectl prints as `Error from server (...)`. SPDY is not served: kubectl falls
  back to it only when the upgrade fails, which then fails too.
- attach: PodAttach, the container's own stdio (conmon's attach socket on the node): its
  output from now on, and its stdin when the container was created with `stdin: true` (the
  v5 close of stdin closes it for a stdinOnce container; kubectl run -i --rm); asking for
  stdin of a container without it is refused (BadRequest) before the upgrade.
- binding: Create of a Binding (the scheduler's verb); eviction: the pod's Delete with the
  Eviction's deleteOptions (no PodDisruptionBudgets here, so an eviction is never refused
  for budget reasons). Both answer a Success Status with code 201, as Kubernetes does.

Interface (called by app.py): add_routes(app: aiohttp.web.Application, api) -> None.
"""
from __future__ import annotations

import asyncio
import json
import logging

from aiohttp import WSMsgType, web
from google.protobuf import any_pb2

from kubelab.api import kinds
from kubelab.api.v1 import api_pb2
from kubelab.errors import ApiError, BadRequest, Invalid

from . import remotecommand as rc
from .app import json_response
from .errors import http_code

log = logging.getLogger("apiserver.http.streams")
POD = "/api/v1/namespaces/{namespace}/pods/{name}"


def add_routes(app, api) -> None:
    """Register the pod subresources that are not plain CRUD."""
    app.router.add_get(POD + "/log", pod_log)
    for sub, handler in (("exec", pod_exec), ("attach", pod_attach)):
        app.router.add_get(POD + "/" + sub, handler)
        app.router.add_post(POD + "/" + sub, handler)
    app.router.add_post(POD + "/binding", pod_binding)
    app.router.add_post(POD + "/eviction", pod_eviction)


def _int(query, name: str, minimum: int, what: str, pod: str) -> int | None:
    if name not in query:
        return None
    try:
        v = int(query[name])
    except ValueError:
        raise BadRequest(f'{name}: invalid value "{query[name]}": strconv.ParseInt: parsing '
                         f'"{query[name]}": invalid syntax') from None
    if v < minimum:
        raise Invalid(f'PodLogOptions "{pod}" is invalid: {name}: Invalid value: {v}: {what}')
    return v


def logs_request(namespace: str, name: str, query) -> api_pb2.LogsRequest:
    """PodLogOptions from the query, validated as Kubernetes validates them."""
    req = api_pb2.LogsRequest(namespace=namespace, name=name, container=query.get("container", ""),
                              follow=rc.parse_bool(query, "follow"), previous=rc.parse_bool(query, "previous"),
                              timestamps=rc.parse_bool(query, "timestamps"), sinceTime=query.get("sinceTime", ""))
    tail = _int(query, "tailLines", 0, "must be greater than or equal to 0", name)
    if tail is not None:
        req.tailLines = tail
    limit = _int(query, "limitBytes", 1, "must be greater than 0", name)
    if limit is not None:
        req.limitBytes = limit
    since = _int(query, "sinceSeconds", 1, "must be greater than 0", name)
    if since is not None:
        req.sinceSeconds = since
    if since is not None and req.sinceTime:
        raise Invalid(f'PodLogOptions "{name}" is invalid: : Forbidden: at most one of `sinceTime` or '
                      '`sinceSeconds` may be specified')
    return req


async def _first(gen):
    """The stream's first item (None when it ends at once); its errors raise here."""
    return await anext(gen, None)


async def pod_log(request: web.Request) -> web.StreamResponse:
    api = request.app["api"]
    req = logs_request(request.match_info["namespace"], request.match_info["name"], request.query)
    chunks = api.svc.PodLogs(req, api.context(request))
    try:
        first = await _first(chunks)  # an ApiError here leaves as a Status (app.py's middleware)
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        if req.follow:
            resp.enable_chunked_encoding()
        await resp.prepare(request)
        if first:
            await resp.write(api_pb2.LogChunk.FromString(first).data)
        try:
            async for raw in chunks:
                data = api_pb2.LogChunk.FromString(raw).data
                if data:
                    await resp.write(data)
        except ApiError as e:  # after the 200 only the body is left to say it
            log.info("pods/log %s/%s ended: %s", req.namespace, req.name, e.message)
        except ConnectionResetError:
            return resp
        await resp.write_eof()
        return resp
    finally:
        await chunks.aclose()


async def _upgrade(request: web.Request, protocol: str) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(protocols=(protocol,), autoping=True)  # answers kubectl's 5 s pings
    await ws.prepare(request)
    return ws


def _protocol(request: web.Request) -> str:
    if request.headers.get("Upgrade", "").lower() != "websocket":
        raise BadRequest("Upgrade request required: pods/exec and pods/attach are served over WebSocket "
                         f"({', '.join(rc.PROTOCOLS)}), not SPDY")
    p = rc.select_protocol(request.headers.get("Sec-WebSocket-Protocol", ""))
    if p is None:
        raise BadRequest("unable to upgrade: none of the offered subprotocols "
                         f"({request.headers.get('Sec-WebSocket-Protocol', '')!r}) is served; "
                         f"supported: {', '.join(rc.PROTOCOLS)}")
    return p


async def pod_exec(request: web.Request) -> web.StreamResponse:
    api = request.app["api"]
    opts = rc.parse_options(request.query)
    protocol = _protocol(request)
    start = api_pb2.ExecStart(namespace=request.match_info["namespace"], name=request.match_info["name"],
                              container=opts.container, command=list(opts.command), stdin=opts.stdin, tty=opts.tty)
    stdin: asyncio.Queue = asyncio.Queue()

    async def requests():
        yield api_pb2.ExecRequest(start=start)
        while (r := await stdin.get()) is not None:
            yield r
    out = api.svc.PodExec(requests(), api.context(request))
    try:
        first = await _first(out)  # refused (no pod, bad container, stopped): a Status, no upgrade
        ws = await _upgrade(request, protocol)
        await ws.send_bytes(rc.frame(rc.STDOUT if opts.stdout else rc.STDERR if opts.stderr else rc.ERROR, b""))
        await _session(ws, _relay(ws, out, first, opts), _read_client(ws, protocol, stdin, opts))
        return ws
    finally:
        await stdin.put(None)
        await out.aclose()


async def _session(ws: web.WebSocketResponse, pump, reader) -> None:
    """Run the output pump (it returns the error channel's Status) beside the client reader;
    the Status and a normal close end it, or the client leaving first (the pump is cancelled,
    which cancels the kubelet's call, which ends the process)."""
    pump_task = asyncio.create_task(pump)
    tasks = (pump_task, asyncio.create_task(reader))
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if pump_task.done() and not ws.closed:
            status = pump_task.result()
            if status:
                await ws.send_bytes(rc.frame(rc.ERROR, status))
            await ws.close()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _read_client(ws: web.WebSocketResponse, protocol: str, stdin: asyncio.Queue, opts) -> None:
    """Client frames -> stdin (and its close); resize is accepted and ignored (no terminal
    resizing through the kubelet here). Ends when the client closes the socket."""
    async for msg in ws:
        if msg.type not in (WSMsgType.BINARY, WSMsgType.TEXT):
            continue
        try:
            m = rc.decode(msg.data, protocol)
        except BadRequest as e:
            log.info("exec: %s", e.message)
            continue
        if m is None or m.channel != rc.STDIN or not opts.stdin:
            continue
        await stdin.put(api_pb2.ExecRequest(stdinClose=True) if m.closed else api_pb2.ExecRequest(stdin=m.data))


async def _relay(ws: web.WebSocketResponse, out, first: bytes | None, opts) -> bytes:
    """The kubelet's messages onto the socket; returns the error channel's Status."""
    pending = [first] if first is not None else []

    async def messages():
        for m in pending:
            yield m
        async for m in out:
            yield m
    try:
        async for raw in messages():
            resp = api_pb2.ExecResponse.FromString(raw)
            kind = resp.WhichOneof("msg")
            if kind == "stdout" and resp.stdout and opts.stdout:
                await ws.send_bytes(rc.frame(rc.STDOUT, resp.stdout))
            elif kind == "stderr" and resp.stderr and opts.stderr:
                await ws.send_bytes(rc.frame(rc.STDERR, resp.stderr))
            elif kind == "exitCode":
                return rc.exit_status(resp.exitCode, opts.command)
    except ApiError as e:
        return rc.error_status(e.reason, e.message, http_code(e))
    except ConnectionResetError:
        return b""
    return rc.error_status("InternalError", "error executing command in container: the stream ended "
                           "without an exit code", 500)


async def pod_attach(request: web.Request) -> web.StreamResponse:
    api = request.app["api"]
    opts = rc.parse_options(request.query, attach=True)
    start = api_pb2.ExecStart(namespace=request.match_info["namespace"], name=request.match_info["name"],
                              container=opts.container, stdin=opts.stdin, tty=opts.tty)
    stdin: asyncio.Queue = asyncio.Queue()

    async def requests():
        yield api_pb2.ExecRequest(start=start)
        while (r := await stdin.get()) is not None:
            yield r
    out = api.svc.PodAttach(requests(), api.context(request))
    try:
        # attached (or refused: no pod, stdin the container was not created with) before the
        # protocol is checked: kubectl retries a refused WebSocket upgrade over SPDY and prints
        # that second answer, so both must say why
        first = await _first(out)
        protocol = _protocol(request)
        ws = await _upgrade(request, protocol)
        await ws.send_bytes(rc.frame(rc.STDOUT if opts.stdout else rc.STDERR if opts.stderr else rc.ERROR, b""))
        await _session(ws, _attached(_relay(ws, out, first, opts)), _read_client(ws, protocol, stdin, opts))
        return ws
    finally:
        await stdin.put(None)
        await out.aclose()


async def _attached(pump) -> bytes:
    """attach's outcome: Success when the container ends, whatever its exit code (that is the
    pod's status to tell, as kubectl run -i reads it), or why the stream broke."""
    status = await pump
    if status and json.loads(status).get("reason") == "NonZeroExitCode":
        return rc.exit_status(0, ())
    return status


def _created() -> web.Response:
    return json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                          "code": 201}, status=201)


async def _body(request: web.Request) -> dict:
    try:
        body = await request.json()
    except ValueError as e:
        raise BadRequest(f"the request body is not JSON: {e}") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def _check_target(body_name: str, body_ns: str, name: str, namespace: str, what: str) -> None:
    if body_name and body_name != name:
        raise BadRequest(f"name in URL does not match name in {what} object")
    if body_ns and body_ns != namespace:
        raise BadRequest("the namespace of the provided object does not match the namespace sent on the request")


async def pod_binding(request: web.Request) -> web.Response:
    api = request.app["api"]
    ns, name = request.match_info["namespace"], request.match_info["name"]
    kind = kinds.BY_RESOURCE["bindings"]
    binding, warnings = api.decode(await _body(request), kind)
    _check_target(binding.metadata.name, binding.metadata.namespace, name, ns, "Binding")
    binding.metadata.name, binding.metadata.namespace = name, ns
    await api.call("Create", api_pb2.CreateRequest(
        resource="bindings", namespace=ns, object=any_pb2.Any(type_url=kind.type_url,
                                                              value=binding.SerializeToString())), request)
    resp = _created()
    for w in warnings:
        resp.headers.add("Warning", f'299 - "{w}"')
    return resp


EVICTION_FIELDS = {"apiVersion", "kind", "metadata", "deleteOptions"}
DELETE_OPTION_FIELDS = {"apiVersion", "kind", "gracePeriodSeconds", "preconditions", "propagationPolicy",
                        "orphanDependents", "dryRun"}


def eviction_delete(body: dict, namespace: str, name: str) -> api_pb2.DeleteRequest:
    """policy/v1 Eviction -> the pod's DeleteRequest (its deleteOptions), strictly decoded."""
    what = 'Eviction in version "v1" cannot be handled as a Eviction: strict decoding error: '
    unknown = [f for f in body if f not in EVICTION_FIELDS]
    if body.get("kind") not in (None, "", "Eviction"):
        raise BadRequest(f"the kind in the data ({body['kind']}) does not match the expected kind (Eviction)")
    if body.get("apiVersion") not in (None, "", "policy/v1", "policy/v1beta1"):
        raise BadRequest(f"the API version in the data ({body['apiVersion']}) does not match the expected "
                         "API version (policy/v1)")
    meta = body.get("metadata") or {}
    opts = body.get("deleteOptions") or {}
    if not isinstance(meta, dict) or not isinstance(opts, dict):
        raise BadRequest(what + "metadata and deleteOptions must be objects")
    unknown += [f"deleteOptions.{f}" for f in opts if f not in DELETE_OPTION_FIELDS]
    if unknown:
        raise BadRequest(what + ", ".join(f'unknown field "{f}"' for f in unknown))
    _check_target(meta.get("name", ""), meta.get("namespace", ""), name, namespace, "Eviction")
    req = api_pb2.DeleteRequest(resource="pods", namespace=namespace, name=name)
    grace = opts.get("gracePeriodSeconds")
    if grace is not None:
        if not isinstance(grace, int) or isinstance(grace, bool):
            raise BadRequest(what + "deleteOptions.gracePeriodSeconds: an integer was expected")
        req.gracePeriodSeconds = grace
    pre = opts.get("preconditions") or {}
    if not isinstance(pre, dict) or set(pre) - {"uid", "resourceVersion"}:
        raise BadRequest(what + "deleteOptions.preconditions: only uid and resourceVersion are known")
    req.preconditionUid = pre.get("uid") or ""
    req.preconditionResourceVersion = pre.get("resourceVersion") or ""
    policy = opts.get("propagationPolicy")
    if policy:
        if policy not in ("Orphan", "Background", "Foreground"):
            raise Invalid(f'deleteoptions "" is invalid: propagationPolicy: Unsupported value: "{policy}": '
                          'supported values: "Foreground", "Background", "Orphan"')
        req.propagationPolicy = policy
    dry = opts.get("dryRun") or []
    if dry:
        if dry != ["All"]:
            raise Invalid(f'deleteoptions "" is invalid: dryRun: Unsupported value: {json.dumps(dry)}: '
                          'supported values: "All"')
        req.dryRun = True
    return req


async def pod_eviction(request: web.Request) -> web.Response:
    api = request.app["api"]
    ns, name = request.match_info["namespace"], request.match_info["name"]
    req = eviction_delete(await _body(request), ns, name)
    ctx = api.context(request)
    # Kubernetes authorizes `create pods/eviction`; the delete that follows is admitted as
    # ApiService.Delete admits it, so the caller needs both here
    await api.svc.admit(ctx, "create", "pods", ns, name, "eviction")
    await api.call("Delete", req, request)
    return _created()
