"""The HTTP face's aiohttp application: TLS with the cluster PKI, routing, and the helpers every
handler module shares (`RestAPI`).

Each HTTP request becomes one call on the gRPC face's ApiService (master/apiserver/service.py)
with an api_pb2 request and a `Context` that looks like a grpc.aio servicer context to it: the
peer's client certificate (verified against the cluster CA by the TLS handshake, optional) and
the Authorization header are what auth.py reads, and `abort` raises the ApiError the service
meant. So authentication, authorization, validation, stores and the watch cache are the gRPC
face's own; this package only translates JSON and URLs.

Route order matters (aiohttp tries resources in registration order): openapi.py and streams.py
register their fixed paths first, then discovery.py, then the generic CRUD/watch catch-alls of
handlers.py.

Tables (owner: table.py): when the Accept header asks for `as=Table`, handlers set `table` on
the Get/List request and call `table.object_table(api, resp, request)` /
`table.list_table(api, resp, request)` (each -> dict, a meta.k8s.io/v1 Table), and watch.py
calls `table.event_table(api, obj_msg, request)` for each watch event's object.
"""
from __future__ import annotations

import json
import logging
import ssl
import warnings
from pathlib import Path

from aiohttp import web
from google.protobuf.message import Message

from kubelab.api import codec, kinds
from kubelab.errors import _BY_REASON, ApiError, BadRequest, ServiceUnavailable
from kubelab.etcd.client import EtcdError

from . import errors

log = logging.getLogger("apiserver.http")

JSON = "application/json"
MAX_BODY = 3 << 20  # the gRPC face refuses objects over 1.5 MiB; a patch may carry a bit more


class Context:
    """What ApiService reads from a grpc.aio context, taken from an HTTP request."""

    def __init__(self, request: web.Request):
        self._request = request
        self._pem = peer_certificate(request)

    def auth_context(self) -> dict:
        return {"x509_pem_cert": [self._pem]} if self._pem else {}

    def invocation_metadata(self):
        headers = self._request.headers
        h = headers.get("Authorization")
        md = [("authorization", h)] if h is not None else []
        md += [("impersonate-user", v) for v in headers.getall("Impersonate-User", ())]
        md += [("impersonate-group", v) for v in headers.getall("Impersonate-Group", ())]
        return md

    def peer(self) -> str:
        return f"ipv4:{self._request.remote}"

    async def abort(self, code, message: str, trailing_metadata=()):
        reason = dict(trailing_metadata or ()).get("reason", "")
        cls = _BY_REASON.get(reason, ApiError)
        raise cls(message)


def peer_certificate(request: web.Request) -> bytes:
    """The client certificate the TLS handshake verified (PEM), or b"" (none, or plaintext)."""
    if request.transport is None:
        return b""
    obj = request.transport.get_extra_info("ssl_object")
    der = obj.getpeercert(binary_form=True) if obj is not None else None
    return ssl.DER_cert_to_PEM_cert(der).encode() if der else b""


class RestAPI:
    """The shared state of the HTTP face: the ApiService, and JSON/error helpers."""

    def __init__(self, svc, *, version: dict | None = None):
        self.svc = svc
        self.version = version or {}

    def context(self, request: web.Request) -> Context:
        return Context(request)

    @staticmethod
    def error(e: ApiError, *, name: str = "", resource: str = "", group: str = "") -> web.Response:
        body = errors.status(e, name=name, resource=resource, group=group)
        resp = web.json_response(body, status=body["code"], dumps=dumps)
        if body["code"] == 401:
            resp.headers["WWW-Authenticate"] = 'Basic realm="kubernetes-master"'
        return resp

    @staticmethod
    def encode(msg: Message) -> dict:
        """The object in Kubernetes' JSON: apiVersion and kind first, int64 fields as numbers, and
        the zero values Go's types always write (codec.GO_ALWAYS)."""
        return codec.to_dict(msg, go_defaults=True)

    @staticmethod
    def decode(body, kind: kinds.Kind, *, validation: str = "Strict") -> tuple[Message, list[str]]:
        """A request body (a JSON object with apiVersion/kind) as the kind's message, and the
        warnings to send back. validation is fieldValidation: Strict refuses unknown fields
        (BadRequest naming each), Warn drops them and warns, Ignore drops them."""
        what = f'{kind.kind} in version "{kind.api_version.rpartition("/")[2]}" cannot be handled as a {kind.kind}'
        if not isinstance(body, dict):
            raise BadRequest(f"{what}: json: cannot unmarshal {codec._json_type(body)} into Go value of type "
                             f"struct {{ APIVersion string \"json:\\\"apiVersion,omitempty\\\"\"; "
                             f"Kind string \"json:\\\"kind,omitempty\\\"\" }}")
        api_version, kind_name = body.get("apiVersion"), body.get("kind")
        if kind_name not in (None, "", kind.kind):
            raise BadRequest(f"{what}: the kind in the data ({kind_name}) does not match the expected kind "
                             f"({kind.kind})")
        if api_version not in (None, "", kind.api_version):
            raise BadRequest(f"the API version in the data ({api_version}) does not match the expected API "
                             f"version ({kind.api_version})")
        rest = {k: v for k, v in body.items() if k not in ("apiVersion", "kind")}
        try:
            msg, unknown = codec.decode_lenient(rest, kind)
        except ValueError as e:
            raise BadRequest(f"{what}: {e}") from None
        if unknown and validation == "Strict":
            raise BadRequest(f"{what}: strict decoding error: " + ", ".join(f'unknown field "{p}"' for p in unknown))
        warnings = [f'unknown field "{p}"' for p in unknown] if validation == "Warn" else []
        return msg, warnings

    async def call(self, method: str, req, request: web.Request):
        """One unary ApiService call; etcd trouble becomes ServiceUnavailable, as on gRPC."""
        try:
            return await getattr(self.svc, method)(req, self.context(request))
        except EtcdError as e:
            raise ServiceUnavailable(f"etcd: {e}") from None


def dumps(obj) -> str:
    return json.dumps(obj, separators=(",", ":"))


def json_response(body, status: int = 200, warnings=()) -> web.Response:
    resp = web.json_response(body, status=status, dumps=dumps)
    for w in warnings:
        resp.headers.add("Warning", '299 - "' + w.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return resp


@web.middleware
async def _errors(request: web.Request, handler):
    """No request crashes the server: an ApiError is its Status, a bug a 500 Status."""
    try:
        return await handler(request)
    except ApiError as e:
        return RestAPI.error(e)
    except web.HTTPException as e:
        if e.status == 404:
            return RestAPI.error(errors.HTTPError("NotFound", "the server could not find the requested resource"))
        if e.status == 405:
            return RestAPI.error(errors.HTTPError("MethodNotAllowed",
                                                  "the server does not allow this method on the requested resource"))
        if e.status == 413:
            return RestAPI.error(errors.HTTPError("RequestEntityTooLarge", "the request body is too large"))
        raise
    except Exception as e:
        log.exception("internal error serving %s %s", request.method, request.path)
        return RestAPI.error(ApiError(f"Internal error occurred: {type(e).__name__}: {e}"))


def make_app(api: RestAPI) -> web.Application:
    from . import discovery, handlers, openapi, streams, watch
    app = web.Application(middlewares=[_errors], client_max_size=MAX_BODY)
    with warnings.catch_warnings():  # a plain key: the handler modules read request.app["api"]
        warnings.simplefilter("ignore", web.NotAppKeyWarning)
        app["api"] = api
    openapi.add_routes(app, api)
    streams.add_routes(app, api)
    discovery.add_routes(app, api)
    watch.add_routes(app, api)
    handlers.add_routes(app, api)
    return app


def ssl_context(pki_dir: Path) -> ssl.SSLContext:
    """The API server's serving certificate (with the CA after it, as on gRPC); a client
    certificate is optional but, when sent, must chain to the cluster CA."""
    d = Path(pki_dir)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(d / "ca.crt"))
    ctx.load_cert_chain(str(d / "apiserver.crt"), str(d / "apiserver.key"))
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class HTTPServer:
    """The running HTTP face: start(host, port) -> the bound port; stop()."""

    def __init__(self, api: RestAPI, pki_dir: Path | None):
        self.api = api
        self.pki_dir = pki_dir
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        self.runner = web.AppRunner(make_app(self.api), access_log=None, handle_signals=False, handler_cancellation=True,
                                    shutdown_timeout=1.0)
        await self.runner.setup()
        ctx = ssl_context(self.pki_dir) if self.pki_dir is not None else None
        site = web.TCPSite(self.runner, host or None, port, ssl_context=ctx, reuse_address=True)
        try:
            await site.start()
        except OSError as e:
            await self.runner.cleanup()
            self.runner = None
            raise RuntimeError(f"--http-listen {host}:{port}: cannot listen: {e.strerror or e}") from None
        self.port = site._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
