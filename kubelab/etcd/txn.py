"""Builders for etcd transactions, used with `EtcdClient.txn` (see client.py):

    await etcd.txn([Compare.mod_revision(key, "==", rv)], [Op.put(key, value)], [Op.get(key)])

They return the protobuf messages of our copy of etcd's API (rpc_pb2.Compare, rpc_pb2.RequestOp)
so a txn costs no conversion beyond building the request. Keys and values are bytes or str
(str is UTF-8 encoded).
"""
from __future__ import annotations

from . import rpc_pb2

_RESULT = {"==": rpc_pb2.Compare.EQUAL, "!=": rpc_pb2.Compare.NOT_EQUAL,
           ">": rpc_pb2.Compare.GREATER, "<": rpc_pb2.Compare.LESS}


def to_bytes(x: bytes | str) -> bytes:
    return x.encode() if isinstance(x, str) else bytes(x)


def prefix_end(prefix: bytes) -> bytes:
    """The range end that covers every key starting with prefix (b"\\0", all keys, for b"")."""
    b = bytearray(prefix)
    for i in range(len(b) - 1, -1, -1):
        if b[i] < 0xFF:
            b[i] += 1
            return bytes(b[: i + 1])
    return b"\x00"


def key_range_end(key: bytes, end: bytes | str | None, prefix: bool) -> bytes:
    """etcd's range_end for [key, end), every key with the prefix key, or (b"") key alone."""
    if prefix:
        if end is not None:
            raise ValueError("give either prefix=True or range_end, not both")
        return prefix_end(key)
    return b"" if end is None else to_bytes(end)


class Compare:
    """Guards of a txn: `Compare.mod_revision(key, "==", rv)`; op is one of == != > <.

    A key that does not exist has create_revision, mod_revision and version 0, so
    `Compare.create_revision(key, "==", 0)` means "key absent".
    """

    @staticmethod
    def _make(key, op: str, target, **value) -> rpc_pb2.Compare:
        try:
            result = _RESULT[op]
        except KeyError:
            raise ValueError(f"compare op must be one of {', '.join(_RESULT)}, not {op!r}") from None
        return rpc_pb2.Compare(key=to_bytes(key), result=result, target=target, **value)

    @classmethod
    def mod_revision(cls, key, op: str, rev: int) -> rpc_pb2.Compare:
        return cls._make(key, op, rpc_pb2.Compare.MOD, mod_revision=rev)

    @classmethod
    def create_revision(cls, key, op: str, rev: int) -> rpc_pb2.Compare:
        return cls._make(key, op, rpc_pb2.Compare.CREATE, create_revision=rev)

    @classmethod
    def version(cls, key, op: str, version: int) -> rpc_pb2.Compare:
        return cls._make(key, op, rpc_pb2.Compare.VERSION, version=version)

    @classmethod
    def value(cls, key, op: str, value) -> rpc_pb2.Compare:
        return cls._make(key, op, rpc_pb2.Compare.VALUE, value=to_bytes(value))

    @classmethod
    def lease(cls, key, op: str, lease: int) -> rpc_pb2.Compare:
        return cls._make(key, op, rpc_pb2.Compare.LEASE, lease=lease)


class Op:
    """Operations of a txn branch; the txn answers each with a RangeResult, a revision
    (put) or a DeleteResult, in order."""

    @staticmethod
    def put(key, value, *, lease: int = 0) -> rpc_pb2.RequestOp:
        return rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=to_bytes(key), value=to_bytes(value),
                                                                lease=lease))

    @staticmethod
    def get(key, *, range_end=None, prefix: bool = False, limit: int = 0, revision: int = 0,
            keys_only: bool = False, count_only: bool = False) -> rpc_pb2.RequestOp:
        return rpc_pb2.RequestOp(request_range=range_request(
            key, range_end=range_end, prefix=prefix, limit=limit, revision=revision, keys_only=keys_only,
            count_only=count_only))

    @staticmethod
    def delete(key, *, range_end=None, prefix: bool = False, prev_kv: bool = False) -> rpc_pb2.RequestOp:
        key = to_bytes(key)
        return rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(
            key=key, range_end=key_range_end(key, range_end, prefix), prev_kv=prev_kv))


def range_request(key, *, range_end=None, prefix=False, limit=0, revision=0, keys_only=False,
                  count_only=False, serializable=False) -> rpc_pb2.RangeRequest:
    key = to_bytes(key)
    return rpc_pb2.RangeRequest(key=key, range_end=key_range_end(key, range_end, prefix), limit=limit,
                                revision=revision, keys_only=keys_only, count_only=count_only,
                                serializable=serializable)

