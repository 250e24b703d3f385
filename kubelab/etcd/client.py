"""An asyncio etcd v3 client over grpc.aio.

Where it sits: etcd holds all cluster state, and the API server's storage layer (the
registry store and the watch cache in master/apiserver) is the only thing that talks to it,
through this client. Every other component goes through the API server. The control-plane
runner and the benchmarks start etcd itself with kubelab.etcd.server.EtcdServer.

We keep our own small client (the `etcd3` package no longer imports with current protobuf)
to have exactly what the API server needs, on its hot path: one channel and one set of stubs
per client, ranges paged with limit at a fixed revision, transactions with compares
(builders in txn.py), watches that report compaction, and leases. It speaks the wire API
compiled from protos/kubelab/etcd/{rpc,kv}.proto, our trimmed copy of etcd 3.5's.

Errors: EtcdUnavailable when etcd cannot be reached or does not answer in time (gRPC
UNAVAILABLE or DEADLINE_EXCEEDED), CompactedError when a revision asked for is compacted,
EtcdError for the rest.
"""
from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path

import grpc

from . import kv_pb2, rpc_pb2
from .txn import Compare, Op, key_range_end, prefix_end, range_request, to_bytes

__all__ = ["EtcdClient", "KeyValue", "Compare", "Op", "EtcdError", "CompactedError", "EtcdUnavailable",
           "RangeResult", "DeleteResult", "TxnResult", "WatchBatch", "WatchEvent", "Watch", "LeaseInfo",
           "prefix_end"]

MAX_MESSAGE_BYTES = 64 << 20
_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Ping every 30s while a call (a watch) is open, to notice a dead etcd. Never ping an idle
    # connection: etcd's server only allows that every 2h and answers with GOAWAY.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
    # etcd is near (often on loopback): reconnect soon after it comes back from a restart.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]


class EtcdError(Exception):
    def __init__(self, message: str, code: grpc.StatusCode | None = None):
        super().__init__(message)
        self.code = code


class EtcdUnavailable(EtcdError):
    """etcd cannot be reached or did not answer within the client's timeout."""


class CompactedError(EtcdError):
    """The revision asked for is older than etcd's compaction; list again and watch from there.

    compact_revision is the oldest revision etcd still has when etcd said so (watch); 0 when
    it did not (a range at a compacted revision)."""

    def __init__(self, compact_revision: int):
        super().__init__(f"required revision has been compacted (compact revision {compact_revision})",
                         grpc.StatusCode.OUT_OF_RANGE)
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
    def of(cls, kv: kv_pb2.KeyValue) -> KeyValue:
        return cls(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)


@dataclass(slots=True)
class RangeResult:
    kvs: list[KeyValue]
    more: bool  # more keys in the range than limit let through
    count: int  # keys in the whole range (at that revision), whatever the limit
    revision: int  # etcd's revision when it answered (the header's): with revision=0, the one read


@dataclass(slots=True)
class DeleteResult:
    deleted: int
    prev_kvs: list[KeyValue]
    revision: int


@dataclass(slots=True)
class TxnResult:
    succeeded: bool
    revision: int
    responses: list  # per op of the branch taken: RangeResult, put revision (int), DeleteResult


@dataclass(slots=True)
class WatchEvent:
    type: str  # "PUT" or "DELETE"
    kv: KeyValue  # for a DELETE: the key, empty value, mod_revision = the deletion's revision
    prev_kv: KeyValue | None  # with prev_kv=True, unless the key was new (or is compacted)


@dataclass(slots=True)
class WatchBatch:
    revision: int  # etcd's revision when sent; no events: progress, nothing else to come up to it
    events: list[WatchEvent]


@dataclass(slots=True)
class LeaseInfo:
    id: int
    ttl: int  # seconds left; -1 if the lease does not exist (expired or revoked)
    granted_ttl: int
    keys: list[bytes]


def _range_result(r: rpc_pb2.RangeResponse, revision: int) -> RangeResult:
    return RangeResult([KeyValue.of(kv) for kv in r.kvs], r.more, r.count, revision)


def _translate(e: grpc.RpcError) -> EtcdError:
    code = e.code() if hasattr(e, "code") else None
    details = (e.details() if hasattr(e, "details") else None) or str(e)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        if "handshake failed" in details.lower():  # TLS: say which files to look at
            return EtcdUnavailable("etcd unavailable: the TLS handshake failed (etcd wants a client certificate "
                                   "of its CA, and the client etcd's CA as the trusted CA): " + details, code)
        return EtcdUnavailable(f"etcd unavailable: {details}", code)
    if code == grpc.StatusCode.OUT_OF_RANGE and "compacted" in details:
        return CompactedError(0)
    return EtcdError(f"etcd: {details}", code)


def _cancelled_locally() -> bool:
    """A CancelledError that is not the current task being cancelled: a call or stream we (or
    close()) cancelled. grpc.aio raises CancelledError for those too."""
    task = asyncio.current_task()
    return task is not None and not task.cancelling()


Pem = bytes | str | os.PathLike | None


def _pem(v: Pem, what: str) -> bytes | None:
    if v is None or isinstance(v, bytes):
        return v
    try:
        return Path(v).read_bytes()
    except OSError as e:
        raise ValueError(f"etcd client TLS {what} file {v}: {e.strerror}") from None


def _target(endpoints: list[str] | str) -> tuple[list[str], str, bool]:
    """(host:port targets, the channel's target, whether TLS)."""
    if isinstance(endpoints, str):
        endpoints = endpoints.split(",")
    targets, schemes = [], set()
    for e in (e.strip() for e in endpoints):
        if not e:
            continue
        scheme, sep, rest = e.partition("://")
        if not sep:
            scheme, rest = "http", e
        if scheme == "unix":
            targets.append(e)
            schemes.add("http")
            continue
        if scheme not in ("http", "https"):
            raise ValueError(f"{e}: etcd endpoints look like http://HOST:PORT, https://HOST:PORT or HOST:PORT")
        schemes.add(scheme)
        targets.append(rest.split("/", 1)[0])
    if not targets:
        raise ValueError("no etcd endpoint given")
    if len(schemes) > 1:
        raise ValueError(f"{','.join(endpoints)}: mixed http:// and https:// etcd endpoints; use one scheme")
    secure = schemes == {"https"}
    if len(targets) == 1:
        return targets, targets[0], secure
    # Several members: grpc balances among addresses given as a static ipv4/ipv6 list. Host
    # names cannot be listed that way; then the first endpoint is used.
    hosts = [t.rsplit(":", 1)[0].strip("[]") for t in targets]
    try:
        versions = {ip_address(h).version for h in hosts}
    except ValueError:
        return targets, targets[0], secure
    if len(versions) != 1:
        return targets, targets[0], secure
    return targets, f"ipv{versions.pop()}:" + ",".join(targets), secure


class EtcdClient:
    def __init__(self, endpoints: list[str] | str, *, timeout: float = 10.0, ca: Pem = None, cert: Pem = None,
                 key: Pem = None):
        """endpoints: "http://127.0.0.1:2379", "127.0.0.1:2379", "https://127.0.0.1:2379", a
        comma-separated list or a list, all of one scheme. https: TLS, verifying etcd against
        `ca` (etcd's CA; None: the system's roots) and presenting `cert`/`key` as the client's
        identity (etcd --client-cert-auth refuses a client without one). ca/cert/key are PEM
        bytes or the path of a PEM file (the API server's --etcd-cafile/--etcd-certfile/
        --etcd-keyfile). timeout: the deadline of every unary call, in seconds."""
        self.endpoints, target, secure = _target(endpoints)
        self.timeout = timeout
        self._closed = False
        options = list(_OPTIONS)
        if target.startswith("ipv"):
            options.append(("grpc.lb_policy_name", "round_robin"))
        if (cert is None) != (key is None):
            raise ValueError("etcd client certificate: give both the certificate and its key, or neither")
        if secure:
            if target.startswith("ipv"):  # an address list has no one host name to check: the first's
                options.append(("grpc.ssl_target_name_override", self.endpoints[0].rsplit(":", 1)[0].strip("[]")))
            creds = grpc.ssl_channel_credentials(root_certificates=_pem(ca, "CA"), private_key=_pem(key, "key"),
                                                 certificate_chain=_pem(cert, "certificate"))
            self.channel = grpc.aio.secure_channel(target, creds, options=options)
        elif ca is not None or cert is not None:
            raise ValueError(f"{self.endpoints[0]}: TLS files given for a plaintext endpoint; use https://")
        else:
            self.channel = grpc.aio.insecure_channel(target, options=options)

        def unary(method, req, resp):
            return self.channel.unary_unary(method, request_serializer=req.SerializeToString,
                                            response_deserializer=resp.FromString)

        def stream(method, req, resp):
            return self.channel.stream_stream(method, request_serializer=req.SerializeToString,
                                              response_deserializer=resp.FromString)

        r = rpc_pb2
        self._range = unary("/etcdserverpb.KV/Range", r.RangeRequest, r.RangeResponse)
        self._put = unary("/etcdserverpb.KV/Put", r.PutRequest, r.PutResponse)
        self._delete = unary("/etcdserverpb.KV/DeleteRange", r.DeleteRangeRequest, r.DeleteRangeResponse)
        self._txn = unary("/etcdserverpb.KV/Txn", r.TxnRequest, r.TxnResponse)
        self._compact = unary("/etcdserverpb.KV/Compact", r.CompactionRequest, r.CompactionResponse)
        self._lease_grant = unary("/etcdserverpb.Lease/LeaseGrant", r.LeaseGrantRequest, r.LeaseGrantResponse)
        self._lease_revoke = unary("/etcdserverpb.Lease/LeaseRevoke", r.LeaseRevokeRequest, r.LeaseRevokeResponse)
        self._lease_ttl = unary("/etcdserverpb.Lease/LeaseTimeToLive", r.LeaseTimeToLiveRequest,
                                r.LeaseTimeToLiveResponse)
        self._keepalive = stream("/etcdserverpb.Lease/LeaseKeepAlive", r.LeaseKeepAliveRequest,
                                 r.LeaseKeepAliveResponse)
        self._status = unary("/etcdserverpb.Maintenance/Status", r.StatusRequest, r.StatusResponse)
        self._watch = stream("/etcdserverpb.Watch/Watch", r.WatchRequest, r.WatchResponse)

    async def close(self) -> None:
        """Close the channel; calls and watches still open end with EtcdError."""
        self._closed = True
        await self.channel.close()

    async def __aenter__(self) -> EtcdClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _call(self, stub, req):
        try:
            return await stub(req, timeout=self.timeout)
        except grpc.RpcError as e:
            raise _translate(e) from None
        except grpc.aio.UsageError:
            raise EtcdError("etcd client closed") from None
        except asyncio.CancelledError:
            if self._closed and _cancelled_locally():
                raise EtcdError("etcd client closed") from None
            raise

    # -- KV --
    async def range(self, key: bytes | str, *, range_end: bytes | str | None = None, prefix: bool = False,
                    limit: int = 0, revision: int = 0, keys_only: bool = False, count_only: bool = False,
                    serializable: bool = False) -> RangeResult:
        """Keys in [key, range_end) (or with the prefix key, or key alone), in key order, at
        revision (0: now). Page with limit, the same revision, and the last key + b"\\0"."""
        r = await self._call(self._range, range_request(
            key, range_end=range_end, prefix=prefix, limit=limit, revision=revision, keys_only=keys_only,
            count_only=count_only, serializable=serializable))
        return _range_result(r, r.header.revision)

    async def get(self, key: bytes | str) -> tuple[KeyValue | None, int]:
        """(the key's KeyValue or None, the revision it was read at)."""
        r = await self._call(self._range, rpc_pb2.RangeRequest(key=to_bytes(key)))
        return (KeyValue.of(r.kvs[0]) if r.kvs else None), r.header.revision

    async def put(self, key: bytes | str, value: bytes | str, *, lease: int = 0) -> int:
        """Returns the revision of the write (the key's new mod_revision)."""
        r = await self._call(self._put, rpc_pb2.PutRequest(key=to_bytes(key), value=to_bytes(value), lease=lease))
        return r.header.revision

    async def delete(self, key: bytes | str, *, range_end: bytes | str | None = None, prefix: bool = False,
                     prev_kv: bool = False) -> DeleteResult:
        key = to_bytes(key)
        r = await self._call(self._delete, rpc_pb2.DeleteRangeRequest(
            key=key, range_end=key_range_end(key, range_end, prefix), prev_kv=prev_kv))
        return DeleteResult(r.deleted, [KeyValue.of(kv) for kv in r.prev_kvs], r.header.revision)

    async def txn(self, compare: list, success: list, failure: list = ()) -> TxnResult:
        """If every Compare holds, apply the success ops, else the failure ops, atomically. All
        writes of a txn share one revision, TxnResult.revision; every result in responses
        carries that revision too."""
        r = await self._call(self._txn, rpc_pb2.TxnRequest(compare=compare, success=success, failure=failure))
        rev = r.header.revision
        out: list = []
        for resp in r.responses:
            kind = resp.WhichOneof("response")
            if kind == "response_put":
                out.append(rev)
            elif kind == "response_range":
                out.append(_range_result(resp.response_range, rev))
            elif kind == "response_delete_range":
                d = resp.response_delete_range
                out.append(DeleteResult(d.deleted, [KeyValue.of(kv) for kv in d.prev_kvs], rev))
            else:
                out.append(None)
        return TxnResult(r.succeeded, rev, out)

    async def compact(self, revision: int, *, physical: bool = False) -> None:
        """Forget history before revision; with physical, return once it is gone from disk."""
        await self._call(self._compact, rpc_pb2.CompactionRequest(revision=revision, physical=physical))

    # -- watch --
    def watch(self, key: bytes | str, *, prefix: bool = False, range_end: bytes | str | None = None,
              start_revision: int = 0, prev_kv: bool = False, progress_notify: bool = False) -> Watch:
        """Changes to key (or the prefix, or [key, range_end)) from start_revision on (0: from
        now), as an async iterator of WatchBatch; see Watch. Nothing is sent to etcd before the
        first `async for` step, `await w.start()` or `async with`."""
        key = to_bytes(key)
        return Watch(self, rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(
            key=key, range_end=key_range_end(key, range_end, prefix), start_revision=start_revision,
            prev_kv=prev_kv, progress_notify=progress_notify, fragment=True)))

    # -- leases --
    async def lease_grant(self, ttl: int, *, lease_id: int = 0) -> int:
        """A lease of ttl seconds (etcd's minimum is a few seconds); returns its id."""
        r = await self._call(self._lease_grant, rpc_pb2.LeaseGrantRequest(TTL=ttl, ID=lease_id))
        if r.error:
            raise EtcdError(f"etcd: {r.error}")
        return r.ID

    async def lease_revoke(self, lease_id: int) -> None:
        """End the lease now, deleting its keys. EtcdError (NOT_FOUND) if it does not exist."""
        await self._call(self._lease_revoke, rpc_pb2.LeaseRevokeRequest(ID=lease_id))

    async def lease_keepalive_once(self, lease_id: int) -> int:
        """Renew the lease once; returns its new TTL, 0 if it has expired or does not exist."""
        try:
            call = self._keepalive(timeout=self.timeout)
        except grpc.aio.UsageError:
            raise EtcdError("etcd client closed") from None
        try:
            await call.write(rpc_pb2.LeaseKeepAliveRequest(ID=lease_id))
            await call.done_writing()
            resp = await call.read()
            return 0 if resp is grpc.aio.EOF else resp.TTL
        except grpc.RpcError as e:
            raise _translate(e) from None
        except asyncio.CancelledError:
            if self._closed and _cancelled_locally():
                raise EtcdError("etcd client closed") from None
            raise
        finally:
            call.cancel()

    async def lease_time_to_live(self, lease_id: int, *, keys: bool = False) -> LeaseInfo:
        r = await self._call(self._lease_ttl, rpc_pb2.LeaseTimeToLiveRequest(ID=lease_id, keys=keys))
        return LeaseInfo(r.ID, r.TTL, r.grantedTTL, list(r.keys))

    async def status(self) -> dict:
        """The member's status: version, dbSize, dbSizeInUse, leader, raftIndex, raftTerm,
        raftAppliedIndex, memberId, revision (the header's), errors (alarms)."""
        r = await self._call(self._status, rpc_pb2.StatusRequest())
        return {"version": r.version, "dbSize": r.dbSize, "dbSizeInUse": r.dbSizeInUse, "leader": r.leader,
                "raftIndex": r.raftIndex, "raftTerm": r.raftTerm, "raftAppliedIndex": r.raftAppliedIndex,
                "memberId": r.header.member_id, "revision": r.header.revision, "errors": list(r.errors)}


class Watch:
    """One etcd watch on its own gRPC stream, as an async iterator of WatchBatch.

        async with etcd.watch(b"/registry/pods/", prefix=True, start_revision=rv + 1) as w:
            async for batch in w:
                ...

    A batch has the events of one or more revisions, in revision order (a batch with no
    events is a progress notification: batch.revision is reached). Iteration ends with
    CompactedError if start_revision is compacted (or the watch fell behind compaction),
    EtcdUnavailable if etcd goes away, EtcdError if etcd cancels the watch. The stream is
    closed by aclose(), leaving `async with`, any error, cancelling the consumer, or when the
    Watch is garbage (a bare `async for` left with break).
    """

    __slots__ = ("_client", "_request", "_call", "_closed", "_write_lock", "revision", "__weakref__")

    def __init__(self, client: EtcdClient, request: rpc_pb2.WatchRequest):
        self._client = client
        self._request = request
        self._call = None
        self._closed = False
        # grpc.aio allows one write in flight per stream; a second concurrent write fails
        self._write_lock = asyncio.Lock()
        self.revision = 0  # etcd's revision when the watch was created

    async def start(self) -> int:
        """Open the stream and wait until etcd has created the watch; events for writes after
        this returns are guaranteed. Returns etcd's revision at creation. Idempotent."""
        if self._call is None:
            if self._closed:
                raise EtcdError("watch is closed")
            try:
                self._call = self._client._watch()
                async with self._write_lock:  # taken at once: nobody else has the call yet
                    await self._call.write(self._request)
            except grpc.RpcError as e:
                self._cancel()
                raise _translate(e) from None
            except grpc.aio.UsageError:
                self._cancel()
                raise EtcdError("etcd client closed") from None
            except asyncio.CancelledError:
                self._cancel()
                raise
            resp = await self._read()
            self.revision = resp.header.revision
        return self.revision

    async def request_progress(self) -> None:
        """Ask etcd for a progress notification (an empty batch) as soon as the watch is caught up.

        Safe to call from several tasks at once: the writes are serialized. A failed request
        raises EtcdError but leaves the watch open: if the stream itself broke, reading it
        says so; a lost progress request must not cost the events still to come."""
        await self.start()
        async with self._write_lock:
            if self._closed:
                raise EtcdError("watch is closed")
            try:
                await self._call.write(rpc_pb2.WatchRequest(progress_request=rpc_pb2.WatchProgressRequest()))
            except grpc.RpcError as e:
                raise _translate(e) from None
            except grpc.aio.UsageError as e:
                raise EtcdError(f"progress request not sent: {e}") from None

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> WatchBatch:
        if self._call is None:
            await self.start()
        if self._closed:
            raise StopAsyncIteration
        events: list[WatchEvent] = []
        while True:
            resp = await self._read()
            for ev in resp.events:
                events.append(WatchEvent("DELETE" if ev.type == kv_pb2.Event.DELETE else "PUT", KeyValue.of(ev.kv),
                                         KeyValue.of(ev.prev_kv) if ev.HasField("prev_kv") else None))
            if not resp.fragment:  # a large revision may come split in fragments
                return WatchBatch(resp.header.revision, events)

    async def _read(self) -> rpc_pb2.WatchResponse:
        try:
            resp = await self._call.read()
        except grpc.RpcError as e:
            self._cancel()
            raise _translate(e) from None
        except asyncio.CancelledError:
            closed = self._closed
            self._cancel()
            if _cancelled_locally():  # not our task: the stream was cancelled under us
                if closed:
                    raise StopAsyncIteration from None
                if self._client._closed:
                    raise EtcdError("etcd client closed") from None
            raise
        if resp is grpc.aio.EOF:
            self._cancel()
            raise EtcdUnavailable("etcd ended the watch stream")
        if resp.compact_revision:
            self._cancel()
            raise CompactedError(resp.compact_revision)
        if resp.canceled:
            self._cancel()
            raise EtcdError(f"etcd cancelled the watch: {resp.cancel_reason or 'no reason given'}")
        return resp

    def _cancel(self) -> None:
        self._closed = True
        call = self._call
        if call is not None and not call.done():
            call.cancel()

    async def aclose(self) -> None:
        self._cancel()

    async def __aenter__(self) -> Watch:
        try:
            await self.start()
        except BaseException:
            self._cancel()
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    def __del__(self) -> None:
        try:
            self._cancel()
        except Exception:  # noqa: BLE001 - the loop may be gone already
            pass
