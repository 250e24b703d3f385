"""An asyncio etcd v3 client over grpc.aio: the API server's storage layer talks to etcd
through it, and nothing else in kubelab should.

We keep our own small client (instead of the `etcd3` package, which no longer imports with
current protobuf) to have exactly what the API server needs: ranges paged with limit at a
fixed revision, transactions with compares, watches that report compaction, and leases.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator

import grpc

from . import kv_pb2, rpc_pb2
from .txn import Compare, Op, prefix_end

__all__ = ["EtcdClient", "KeyValue", "Compare", "Op", "EtcdError", "CompactedError", "EtcdUnavailable",
           "RangeResult", "DeleteResult", "TxnResult", "WatchBatch", "WatchEvent"]

_OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20),
            ("grpc.keepalive_time_ms", 30000), ("grpc.keepalive_permit_without_calls", 1)]


class EtcdError(Exception):
    pass


class EtcdUnavailable(EtcdError):
    pass


class CompactedError(EtcdError):
    def __init__(self, compact_revision: int):
        super().__init__(f"required revision has been compacted (compact revision {compact_revision})")
        self.compact_revision = compact_revision


@dataclass(slots=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    @classmethod
    def of(cls, kv: kv_pb2.KeyValue) -> "KeyValue":
        return cls(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)


@dataclass(slots=True)
class RangeResult:
    kvs: list[KeyValue]
    more: bool
    count: int
    revision: int


@dataclass(slots=True)
class DeleteResult:
    deleted: int
    prev_kvs: list[KeyValue]
    revision: int


@dataclass(slots=True)
class TxnResult:
    succeeded: bool
    revision: int
    responses: list


@dataclass(slots=True)
class WatchEvent:
    type: str  # "PUT" or "DELETE"
    kv: KeyValue
    prev_kv: KeyValue | None


@dataclass(slots=True)
class WatchBatch:
    revision: int
    events: list[WatchEvent]


def _b(x: bytes | str) -> bytes:
    return x.encode() if isinstance(x, str) else x


def _translate(e: grpc.RpcError) -> EtcdError:
    code = e.code() if hasattr(e, "code") else None
    details = e.details() if hasattr(e, "details") else str(e)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return EtcdUnavailable(f"etcd unavailable: {details}")
    if details and "compacted" in details:
        return CompactedError(0)
    return EtcdError(f"etcd: {details}")


class EtcdClient:
    def __init__(self, endpoints: list[str] | str, *, timeout: float = 10.0):
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e]
        targets = [e.split("://", 1)[-1].rstrip("/") for e in endpoints]
        # several endpoints: let grpc pick among them (round robin over an ipv4 list)
        target = targets[0] if len(targets) == 1 else "ipv4:" + ",".join(targets)
        self.endpoints = targets
        self.timeout = timeout
        self.channel = grpc.aio.insecure_channel(target, options=_OPTIONS + (
            [("grpc.lb_policy_name", "round_robin")] if len(targets) > 1 else []))
        self._kv = _Stubs(self.channel, "etcdserverpb.KV", {
            "Range": (rpc_pb2.RangeRequest, rpc_pb2.RangeResponse),
            "Put": (rpc_pb2.PutRequest, rpc_pb2.PutResponse),
            "DeleteRange": (rpc_pb2.DeleteRangeRequest, rpc_pb2.DeleteRangeResponse),
            "Txn": (rpc_pb2.TxnRequest, rpc_pb2.TxnResponse),
            "Compact": (rpc_pb2.CompactionRequest, rpc_pb2.CompactionResponse)})
        self._lease = _Stubs(self.channel, "etcdserverpb.Lease", {
            "LeaseGrant": (rpc_pb2.LeaseGrantRequest, rpc_pb2.LeaseGrantResponse),
            "LeaseRevoke": (rpc_pb2.LeaseRevokeRequest, rpc_pb2.LeaseRevokeResponse)})
        self._status = self.channel.unary_unary(
            "/etcdserverpb.Maintenance/Status", request_serializer=rpc_pb2.StatusRequest.SerializeToString,
            response_deserializer=rpc_pb2.StatusResponse.FromString)
        self._keepalive = self.channel.stream_stream(
            "/etcdserverpb.Lease/LeaseKeepAlive",
            request_serializer=rpc_pb2.LeaseKeepAliveRequest.SerializeToString,
            response_deserializer=rpc_pb2.LeaseKeepAliveResponse.FromString)
        self._watch = self.channel.stream_stream(
            "/etcdserverpb.Watch/Watch", request_serializer=rpc_pb2.WatchRequest.SerializeToString,
            response_deserializer=rpc_pb2.WatchResponse.FromString)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    async def _call(self, stub, req):
        try:
            return await stub(req, timeout=self.timeout)
        except grpc.RpcError as e:
            raise _translate(e) from None

    # -- KV --
    async def range(self, key, *, range_end=None, prefix=False, limit=0, revision=0, keys_only=False,
                    count_only=False, serializable=False) -> RangeResult:
        key = _b(key)
        end = prefix_end(key) if prefix else (_b(range_end) if range_end is not None else b"")
        r = await self._call(self._kv.Range, rpc_pb2.RangeRequest(
            key=key, range_end=end, limit=limit, revision=revision, keys_only=keys_only,
            count_only=count_only, serializable=serializable))
        return RangeResult([KeyValue.of(kv) for kv in r.kvs], r.more, r.count, r.header.revision)

    async def get(self, key) -> tuple[KeyValue | None, int]:
        r = await self.range(key)
        return (r.kvs[0] if r.kvs else None), r.revision

    async def put(self, key, value, *, lease=0) -> int:
        r = await self._call(self._kv.Put, rpc_pb2.PutRequest(key=_b(key), value=_b(value), lease=lease))
        return r.header.revision

    async def delete(self, key, *, prefix=False, prev_kv=False) -> DeleteResult:
        key = _b(key)
        r = await self._call(self._kv.DeleteRange, rpc_pb2.DeleteRangeRequest(
            key=key, range_end=prefix_end(key) if prefix else b"", prev_kv=prev_kv))
        return DeleteResult(r.deleted, [KeyValue.of(kv) for kv in r.prev_kvs], r.header.revision)

    async def txn(self, compare: list, success: list, failure: list = ()) -> TxnResult:
        r = await self._call(self._kv.Txn, rpc_pb2.TxnRequest(compare=compare, success=success,
                                                               failure=list(failure)))
        out = []
        for resp in r.responses:
            kind = resp.WhichOneof("response")
            if kind == "response_range":
                rr = resp.response_range
                out.append(RangeResult([KeyValue.of(kv) for kv in rr.kvs], rr.more, rr.count, rr.header.revision))
            elif kind == "response_put":
                out.append(resp.response_put.header.revision)
            elif kind == "response_delete_range":
                d = resp.response_delete_range
                out.append(DeleteResult(d.deleted, [KeyValue.of(kv) for kv in d.prev_kvs], d.header.revision))
            else:
                out.append(None)
        return TxnResult(r.succeeded, r.header.revision, out)

    async def compact(self, revision: int, *, physical=False) -> None:
        await self._call(self._kv.Compact, rpc_pb2.CompactionRequest(revision=revision, physical=physical))

    # -- watch --
    async def watch(self, key, *, prefix=False, range_end=None, start_revision=0, prev_kv=False,
                    progress_notify=False) -> AsyncIterator[WatchBatch]:
        """Batches of events from start_revision on; CompactedError if that is compacted."""
        key = _b(key)
        end = prefix_end(key) if prefix else (_b(range_end) if range_end is not None else b"")
        req = rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(
            key=key, range_end=end, start_revision=start_revision, prev_kv=prev_kv,
            progress_notify=progress_notify))

        async def requests():
            yield req
            # keep the request stream open: closing it would end the watch
            import asyncio
            await asyncio.Event().wait()

        call = self._watch(requests())
        try:
            async for resp in call:
                if resp.compact_revision:
                    raise CompactedError(resp.compact_revision)
                if resp.canceled:
                    raise EtcdError(f"etcd cancelled the watch: {resp.cancel_reason or 'no reason given'}")
                if resp.created and not resp.events:
                    continue
                yield WatchBatch(resp.header.revision, [
                    WatchEvent("DELETE" if ev.type == kv_pb2.Event.DELETE else "PUT", KeyValue.of(ev.kv),
                               KeyValue.of(ev.prev_kv) if ev.HasField("prev_kv") else None)
                    for ev in resp.events])
            raise EtcdUnavailable("etcd closed the watch stream")
        except grpc.RpcError as e:
            raise _translate(e) from None
        finally:
            call.cancel()

    # -- leases --
    async def lease_grant(self, ttl: int, *, lease_id: int = 0) -> int:
        r = await self._call(self._lease.LeaseGrant, rpc_pb2.LeaseGrantRequest(TTL=ttl, ID=lease_id))
        if r.error:
            raise EtcdError(r.error)
        return r.ID

    async def lease_revoke(self, lease_id: int) -> None:
        await self._call(self._lease.LeaseRevoke, rpc_pb2.LeaseRevokeRequest(ID=lease_id))

    async def lease_keepalive_once(self, lease_id: int) -> int:
        async def one():
            yield rpc_pb2.LeaseKeepAliveRequest(ID=lease_id)
        call = self._keepalive(one())
        try:
            async for resp in call:
                return resp.TTL
            return 0
        except grpc.RpcError as e:
            raise _translate(e) from None
        finally:
            call.cancel()

    async def status(self) -> dict:
        try:
            r = await self._status(rpc_pb2.StatusRequest(), timeout=self.timeout)
        except grpc.RpcError as e:
            raise _translate(e) from None
        return {"version": r.version, "dbSize": r.dbSize, "leader": r.leader, "raftIndex": r.raftIndex,
                "revision": r.header.revision}


class _Stubs:
    def __init__(self, channel, service: str, methods: dict):
        for name, (req, resp) in methods.items():
            setattr(self, name, channel.unary_unary(f"/{service}/{name}", request_serializer=req.SerializeToString,
                                                    response_deserializer=resp.FromString))
