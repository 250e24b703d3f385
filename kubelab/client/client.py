"""The one client library (client-go's role): the CLI, the scheduler, the controllers, the
kubelet and the hollow nodes all talk to the API server through it.

`Client` holds one mTLS gRPC channel; `client.pods("dev")` gives a typed ResourceClient with
create/get/list/update/update_status/delete/watch. Failed calls raise the ApiError subclass the
server named (NotFound, Conflict, Invalid, Gone, ...), so callers catch errors by name.
"""
from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import AsyncIterator, Generic, TypeVar

import grpc
from google.protobuf.message import Message

from kubelab import meta
from kubelab.api import kinds
from kubelab.api.v1 import api_pb2, objects_pb2 as v1
from kubelab.errors import ApiError, ServiceUnavailable, Timeout, from_rpc_error

from .config import ClientConfig, channel_credentials, channel_options, load_default

T = TypeVar("T", bound=Message)
SERVICE = "/kubelab.api.v1.API/"


@dataclass
class ObjectList(Generic[T]):
    items: list[T]
    resource_version: str
    continue_token: str = ""
    remaining: int | None = None


@dataclass
class WatchEvent(Generic[T]):
    type: str  # ADDED, MODIFIED, DELETED, BOOKMARK
    object: T


class Client:
    def __init__(self, channel: grpc.aio.Channel, *, timeout: float = 30.0):
        self.channel = channel
        self.timeout = timeout
        self._calls = {name: channel.unary_unary(SERVICE + name, request_serializer=req.SerializeToString,
                                                 response_deserializer=resp.FromString)
                       for name, req, resp in (
                           ("Create", api_pb2.CreateRequest, api_pb2.ObjectResponse),
                           ("Get", api_pb2.GetRequest, api_pb2.ObjectResponse),
                           ("List", api_pb2.ListRequest, api_pb2.ListResponse),
                           ("Update", api_pb2.UpdateRequest, api_pb2.ObjectResponse),
                           ("UpdateStatus", api_pb2.UpdateRequest, api_pb2.ObjectResponse),
                           ("Delete", api_pb2.DeleteRequest, api_pb2.ObjectResponse))}
        self._watch = channel.unary_stream(SERVICE + "Watch", request_serializer=api_pb2.WatchRequest.SerializeToString,
                                           response_deserializer=api_pb2.WatchEvent.FromString)

    async def pod_logs(self, namespace: str, name: str, *, container: str = "", follow: bool = False,
                       previous: bool = False, tail: int | None = None) -> AsyncIterator[bytes]:
        """A pod's container log (pods/log), relayed by the API server from the pod's kubelet."""
        req = api_pb2.LogsRequest(namespace=namespace, name=name, container=container, follow=follow,
                                  previous=previous)
        if tail is not None:
            req.tailLines = tail
        call = self.channel.unary_stream(SERVICE + "PodLogs", request_serializer=api_pb2.LogsRequest.SerializeToString,
                                         response_deserializer=api_pb2.LogChunk.FromString)(req)
        try:
            async for chunk in call:
                yield chunk.data
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.CANCELLED:
                return
            raise from_rpc_error(e) from None
        finally:
            call.cancel()

    def pod_exec(self, requests) -> grpc.aio.StreamStreamCall:
        """pods/exec: `requests` yields an ExecRequest with `start` first, then stdin."""
        return self.channel.stream_stream(SERVICE + "PodExec", request_serializer=api_pb2.ExecRequest.SerializeToString,
                                          response_deserializer=api_pb2.ExecResponse.FromString)(requests)

    @classmethod
    def from_config(cls, cfg: ClientConfig, **kw) -> "Client":
        ch = grpc.aio.secure_channel(cfg.server, channel_credentials(cfg), options=channel_options(cfg.server))
        return cls(ch, **kw)

    @classmethod
    def connect(cls, config_path: str | None = None, **kw) -> "Client":
        """A client from --config, $KUBELAB_CONFIG or ~/.kubelab/config, in that order."""
        return cls.from_config(load_default(config_path), **kw)

    @classmethod
    def insecure(cls, address: str, **kw) -> "Client":
        """Plaintext channel: only for unit tests of a server started without TLS."""
        return cls(grpc.aio.insecure_channel(address, options=channel_options(address)), **kw)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    def resource(self, kind: kinds.Kind | str, namespace: str = "") -> "ResourceClient":
        if isinstance(kind, str):
            kind = kinds.lookup(kind)
        return ResourceClient(self, kind, namespace if kind.namespaced else "")

    def namespaces(self) -> "ResourceClient[v1.Namespace]":
        return self.resource(kinds.BY_RESOURCE["namespaces"])

    def nodes(self) -> "ResourceClient[v1.Node]":
        return self.resource(kinds.BY_RESOURCE["nodes"])

    def pods(self, namespace: str = "") -> "ResourceClient[v1.Pod]":
        return self.resource(kinds.BY_RESOURCE["pods"], namespace)

    def leases(self, namespace: str = "") -> "ResourceClient[v1.Lease]":
        return self.resource(kinds.BY_RESOURCE["leases"], namespace)

    def events(self, namespace: str = "") -> "ResourceClient[v1.Event]":
        return self.resource(kinds.BY_RESOURCE["events"], namespace)

    async def call(self, name: str, request, *, retries: int = 0):
        delay = 0.2
        for attempt in range(retries + 1):
            try:
                return await self._calls[name](request, timeout=self.timeout)
            except grpc.RpcError as e:
                err = from_rpc_error(e)
                if attempt < retries and isinstance(err, (ServiceUnavailable, Timeout)):
                    await asyncio.sleep(delay * (1 + random.random()))
                    delay = min(delay * 2, 5)
                    continue
                raise err from None

    async def bind(self, namespace: str, pod_name: str, node_name: str, *, resource_version: str = "") -> v1.Pod:
        b = v1.Binding()
        b.metadata.name, b.metadata.namespace = pod_name, namespace
        b.metadata.resourceVersion = resource_version
        b.target.kind, b.target.name = "Node", node_name
        resp = await self.call("Create", api_pb2.CreateRequest(resource="bindings", namespace=namespace,
                                                               object=meta.pack(b)))
        return meta.unpack(resp.object)


class ResourceClient(Generic[T]):
    """Typed verbs for one kind, in one namespace ("" for all namespaces or cluster scope)."""

    def __init__(self, client: Client, kind: kinds.Kind, namespace: str):
        self.client, self.kind, self.namespace = client, kind, namespace

    def _ns(self, obj: Message | None = None) -> str:
        if not self.kind.namespaced:
            return ""
        return (obj.metadata.namespace if obj is not None and obj.metadata.namespace else self.namespace) or "default"

    def _decode(self, a) -> T:
        obj = self.kind.message()
        obj.ParseFromString(a.value)
        return obj

    async def create(self, obj: T) -> T:
        r = await self.client.call("Create", api_pb2.CreateRequest(
            resource=self.kind.resource, namespace=self._ns(obj), object=meta.pack(obj)))
        return self._decode(r.object)

    async def get(self, name: str) -> T:
        r = await self.client.call("Get", api_pb2.GetRequest(resource=self.kind.resource, namespace=self._ns(),
                                                             name=name), retries=3)
        return self._decode(r.object)

    async def list(self, *, label_selector: str = "", field_selector: str = "", limit: int = 0,
                   continue_token: str = "", resource_version: str = "") -> ObjectList[T]:
        """One page with a limit (or a continue token): the caller follows continue_token.
        Without either, every object: the server cuts responses by size as well as by limit,
        so this follows the continue tokens itself (all pages at the first one's revision)."""
        page = await self._list_page(label_selector, field_selector, limit, continue_token, resource_version)
        if limit or continue_token:
            return page
        items = page.items
        while page.continue_token:
            page = await self._list_page(label_selector, field_selector, 0, page.continue_token, "")
            items.extend(page.items)
        return ObjectList(items, page.resource_version)

    async def _list_page(self, label_selector: str, field_selector: str, limit: int, continue_token: str,
                         resource_version: str) -> ObjectList[T]:
        r = await self.client.call("List", api_pb2.ListRequest(
            resource=self.kind.resource, namespace=self.namespace, labelSelector=label_selector,
            fieldSelector=field_selector, limit=limit, continue_token=continue_token,
            resourceVersion=resource_version), retries=3)
        return ObjectList([self._decode(a) for a in r.items], r.resourceVersion, r.continue_token,
                          r.remainingItemCount if r.HasField("remainingItemCount") else None)

    async def list_all(self, *, label_selector: str = "", field_selector: str = "",
                       page_size: int = 500) -> ObjectList[T]:
        """Every object, paged with limit + continue at one revision (a page may hold fewer
        than page_size objects when they are large: the server bounds a response in bytes)."""
        items: list[T] = []
        token, rv = "", ""
        while True:
            page = await self._list_page(label_selector, field_selector, page_size, token, "")
            items.extend(page.items)
            rv = rv or page.resource_version
            token = page.continue_token
            if not token:
                return ObjectList(items, rv)

    async def update(self, obj: T) -> T:
        r = await self.client.call("Update", api_pb2.UpdateRequest(
            resource=self.kind.resource, namespace=self._ns(obj), object=meta.pack(obj)))
        return self._decode(r.object)

    async def update_status(self, obj: T) -> T:
        r = await self.client.call("UpdateStatus", api_pb2.UpdateRequest(
            resource=self.kind.resource, namespace=self._ns(obj), object=meta.pack(obj)))
        return self._decode(r.object)

    async def delete(self, name: str, *, grace_period: int | None = None, uid: str = "",
                     resource_version: str = "") -> T:
        req = api_pb2.DeleteRequest(resource=self.kind.resource, namespace=self._ns(), name=name,
                                    preconditionUid=uid, preconditionResourceVersion=resource_version)
        if grace_period is not None:
            req.gracePeriodSeconds = grace_period
        r = await self.client.call("Delete", req)
        return self._decode(r.object)

    async def watch(self, *, resource_version: str = "", label_selector: str = "", field_selector: str = "",
                    allow_bookmarks: bool = True) -> AsyncIterator[WatchEvent[T]]:
        """Events after resource_version ("" or "0": ADDED for every current object first).

        Ends when the server closes the stream; raises Gone when resource_version is too old.
        """
        call = self.client._watch(api_pb2.WatchRequest(
            resource=self.kind.resource, namespace=self.namespace, labelSelector=label_selector,
            fieldSelector=field_selector, resourceVersion=resource_version,
            allowWatchBookmarks=allow_bookmarks))
        try:
            async for ev in call:
                yield WatchEvent(ev.type, self._decode(ev.object))
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.CANCELLED:
                return
            raise from_rpc_error(e) from None
        finally:
            call.cancel()


__all__ = ["Client", "ResourceClient", "ObjectList", "WatchEvent", "ApiError"]
