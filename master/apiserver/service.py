"""The gRPC face of the API server: the seven generic verbs for every kind.

Every handler first admits the request (`admit`: authenticate, then authorize; the one place
both happen), then decodes it, calls the kind's Store and answers with the stored bytes
(never decoded and re-encoded on reads). Watch streams take already-encoded events from the
watch cache, so its response serializer is the identity. Every error leaves as a gRPC status
with the Kubernetes reason in trailing metadata; no input can crash the process.
"""
from __future__ import annotations

import logging

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError

from kubelab.api import kinds, printers
from kubelab.api.v1 import api_pb2
from kubelab.errors import ApiError, BadRequest, NotFound, ServiceUnavailable
from kubelab.api.v1 import objects_pb2 as v1
from kubelab.etcd.client import EtcdError
from kubelab.selectors import FieldSelector, LabelSelector

from .auth import Authenticator, UserInfo
from .authz import Attributes, authorize
from .store import Store

log = logging.getLogger(__name__)
SERVICE = "kubelab.api.v1.API"


class ApiService:
    def __init__(self, stores: dict[str, Store], proxy=None, *, ca_pem: bytes | None = None):
        self.stores = stores
        self.proxy = proxy  # pods/log and pods/exec go to the kubelet through it
        self.authn = Authenticator(ca_pem, stores.get("secrets"))

    async def admit(self, ctx, verb: str, resource: str, namespace: str = "", name: str = "",
                    subresource: str = "", obj=None) -> UserInfo:
        """Authenticate the caller and authorize this request, or raise Unauthorized/Forbidden."""
        user = await self.authn.authenticate(ctx)
        kind = kinds.BY_RESOURCE.get(resource)
        if kind is not None and not kind.namespaced:
            namespace = ""

        async def fetch():
            store = self.stores.get(resource)
            if store is None or not name:
                return None
            try:
                return store.kind.message.FromString(await store.get(namespace or "default", name))
            except NotFound:
                return None
        await authorize(Attributes(user, verb, resource, namespace, name, subresource, obj), fetch)
        return user

    def store(self, resource: str) -> Store:
        s = self.stores.get(resource)
        if s is None:
            raise NotFound(f'the server could not find the requested resource "{resource}"')
        return s

    def decode(self, store: Store, a: any_pb2.Any):
        if a.type_url != store.kind.type_url:
            raise BadRequest(f"{store.kind.resource}: object of type {a.type_url or 'nothing'!r} "
                             f"where {store.kind.kind} was expected")
        try:
            return store.kind.message.FromString(a.value)
        except DecodeError as e:
            raise BadRequest(f"{store.kind.resource}: cannot decode object: {e}") from None

    @staticmethod
    def answer(store: Store, raw: bytes) -> api_pb2.ObjectResponse:
        return api_pb2.ObjectResponse(object=any_pb2.Any(type_url=store.kind.type_url, value=raw))

    async def Create(self, req: api_pb2.CreateRequest, ctx):
        if req.resource == "bindings":
            pods, b = self.store("pods"), kinds.BY_RESOURCE["bindings"]
            if req.object.type_url != b.type_url:
                raise BadRequest("bindings: a Binding object was expected")
            binding = b.message.FromString(req.object.value)
            await self.admit(ctx, "create", "pods", req.namespace or binding.metadata.namespace or "default",
                             binding.metadata.name, "binding", binding)
            from .registry import STRATEGIES
            STRATEGIES["bindings"].validate(binding)
            return self.answer(pods, await pods.bind(req.namespace or binding.metadata.namespace or "default",
                                                     binding, dry_run=req.dryRun))
        store = self.store(req.resource)
        obj = self.decode(store, req.object)
        user = await self.admit(ctx, "create", req.resource, req.namespace or obj.metadata.namespace or "default",
                                obj.metadata.name, obj=obj)
        if isinstance(obj, v1.CertificateSigningRequest):
            # who asked is the server's to say, never the client's (certificates.k8s.io)
            spec = obj.spec
            spec.username, spec.uid = user.name, ""
            del spec.groups[:]
            spec.groups.extend(user.groups)
            spec.ClearField("extra")
        return self.answer(store, await store.create(req.namespace, obj, dry_run=req.dryRun))

    async def Get(self, req: api_pb2.GetRequest, ctx):
        await self.admit(ctx, "get", req.resource, req.namespace or "default", req.name)
        store = self.store(req.resource)
        raw = await store.get(req.namespace or "default", req.name)
        resp = self.answer(store, raw)
        if req.table:  # kubectl's columns, computed here once for every client
            resp.table.CopyFrom(printers.table(store.kind, [store.kind.message.FromString(raw)], [raw]))
        return resp

    async def List(self, req: api_pb2.ListRequest, ctx):
        await self.admit(ctx, "list", req.resource, req.namespace)
        store = self.store(req.resource)
        items, rv, cont, remaining = await store.list(
            req.namespace, req.labelSelector, req.fieldSelector, limit=req.limit,
            continue_token=req.continue_token, resource_version=req.resourceVersion)
        url = store.kind.type_url
        if req.table:  # the objects travel once, in the rows, beside their cells
            resp = api_pb2.ListResponse(resourceVersion=str(rv), continue_token=cont, table=printers.table(
                store.kind, [store.kind.message.FromString(r) for r in items], items))
        else:
            resp = api_pb2.ListResponse(items=[any_pb2.Any(type_url=url, value=r) for r in items],
                                        resourceVersion=str(rv), continue_token=cont)
        if remaining is not None:
            resp.remainingItemCount = remaining
        return resp

    async def _update(self, req: api_pb2.UpdateRequest, ctx, status: bool):
        store = self.store(req.resource)
        obj = self.decode(store, req.object)
        await self.admit(ctx, "update", req.resource, req.namespace or obj.metadata.namespace or "default",
                         obj.metadata.name, "status" if status else "", obj)
        return self.answer(store, await store.update(req.namespace, obj, status=status, dry_run=req.dryRun))

    async def Update(self, req, ctx):
        return await self._update(req, ctx, False)

    async def UpdateStatus(self, req, ctx):
        return await self._update(req, ctx, True)

    async def Delete(self, req: api_pb2.DeleteRequest, ctx):
        await self.admit(ctx, "delete", req.resource, req.namespace or "default", req.name)
        store = self.store(req.resource)
        grace = req.gracePeriodSeconds if req.HasField("gracePeriodSeconds") else None
        raw = await store.delete(req.namespace or "default", req.name, grace=grace,
                                 uid=req.preconditionUid, resource_version=req.preconditionResourceVersion,
                                 dry_run=req.dryRun, propagation_policy=req.propagationPolicy)
        return self.answer(store, raw)

    async def Watch(self, req: api_pb2.WatchRequest, ctx):
        try:
            await self.admit(ctx, "watch", req.resource, req.namespace)
            store = self.store(req.resource)
            if store.cache is None:
                raise BadRequest(f"{req.resource} cannot be watched")
            labels = LabelSelector.parse(req.labelSelector)
            fields = FieldSelector.parse(req.fieldSelector, store.kind.field_selectors, store.kind.kind)
            ns = req.namespace if store.kind.namespaced else ""
            w = await store.cache.watch(ns, labels, fields, req.resourceVersion, req.allowWatchBookmarks)
        except ApiError as e:
            await abort(ctx, e)
            return
        except EtcdError as e:  # a token's Secret could not be read
            await abort(ctx, ServiceUnavailable(f"etcd: {e}"))
            return
        try:
            while True:
                data = await w.queue.get()
                if data is None:
                    return  # closed by the cache (too slow, or reset): the client rewatches
                yield data
        finally:
            store.cache.unwatch(w)


    async def PodLogs(self, req: api_pb2.LogsRequest, ctx):
        try:
            await self.admit(ctx, "get", "pods", req.namespace or "default", req.name, "log")
            async for chunk in self.proxy.logs(req):
                yield chunk
        except ApiError as e:
            await abort(ctx, e)

    async def PodExec(self, requests, ctx):
        async for resp in self._pod_stream(requests, ctx, "exec", self.proxy.exec):
            yield resp

    async def PodAttach(self, requests, ctx):
        async for resp in self._pod_stream(requests, ctx, "attach", self.proxy.attach):
            yield resp

    async def _pod_stream(self, requests, ctx, subresource: str, relay):
        """pods/exec and pods/attach: admitted as `create pods/<subresource>`, then relayed."""
        try:
            first = await anext(requests, None)
            start = first.start if first is not None and first.WhichOneof("msg") == "start" else None
            await self.admit(ctx, "create", "pods", (start.namespace if start else "") or "default",
                             start.name if start else "", subresource)

            async def replay():
                if first is not None:
                    yield first
                async for r in requests:
                    yield r
            async for resp in relay(replay()):
                yield resp
        except ApiError as e:
            await abort(ctx, e)


async def abort(ctx, e: ApiError):
    await ctx.abort(e.code, e.message, trailing_metadata=(("reason", e.reason),))


def _wrap(fn):
    async def handler(req, ctx):
        try:
            return await fn(req, ctx)
        except ApiError as e:
            await abort(ctx, e)
        except EtcdError as e:
            await abort(ctx, ServiceUnavailable(f"etcd: {e}"))
        except Exception as e:  # noqa: BLE001 - a bug answers one request, never kills the server
            if isinstance(e, grpc.aio.AbortError):
                raise
            log.exception("internal error in %s", fn.__name__)
            await abort(ctx, ApiError(f"Internal error occurred: {type(e).__name__}: {e}"))
    return handler


def generic_handler(svc: ApiService) -> grpc.GenericRpcHandler:
    unary = {
        "Create": api_pb2.CreateRequest, "Get": api_pb2.GetRequest, "List": api_pb2.ListRequest,
        "Update": api_pb2.UpdateRequest, "UpdateStatus": api_pb2.UpdateRequest,
        "Delete": api_pb2.DeleteRequest,
    }
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            _wrap(getattr(svc, name)), request_deserializer=req.FromString,
            response_serializer=lambda m: m.SerializeToString())
        for name, req in unary.items()
    }
    handlers["Watch"] = grpc.unary_stream_rpc_method_handler(
        svc.Watch, request_deserializer=api_pb2.WatchRequest.FromString,
        response_serializer=lambda b: b)  # events arrive encoded once from the watch cache
    handlers["PodLogs"] = grpc.unary_stream_rpc_method_handler(
        svc.PodLogs, request_deserializer=api_pb2.LogsRequest.FromString, response_serializer=lambda b: b)
    for name in ("PodExec", "PodAttach"):
        handlers[name] = grpc.stream_stream_rpc_method_handler(
            getattr(svc, name), request_deserializer=api_pb2.ExecRequest.FromString, response_serializer=lambda b: b)
    return grpc.method_handlers_generic_handler(SERVICE, handlers)
