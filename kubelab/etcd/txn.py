"""Builders for etcd transactions: `Compare.mod_revision(key, "==", rev)`, `Op.put(key, value)`."""
from __future__ import annotations

from . import rpc_pb2

_RESULT = {"==": rpc_pb2.Compare.EQUAL, "!=": rpc_pb2.Compare.NOT_EQUAL,
           ">": rpc_pb2.Compare.GREATER, "<": rpc_pb2.Compare.LESS}


def _b(x) -> bytes:
    return x.encode() if isinstance(x, str) else x


def prefix_end(prefix: bytes) -> bytes:
    """The range end that covers every key starting with prefix."""
    b = bytearray(prefix)
    for i in range(len(b) - 1, -1, -1):
        if b[i] < 0xFF:
            b[i] += 1
            return bytes(b[: i + 1])
    return b"\x00"


class Compare:
    @staticmethod
    def _make(key, op, target, **value) -> rpc_pb2.Compare:
        return rpc_pb2.Compare(key=_b(key), result=_RESULT[op], target=target, **value)

    @classmethod
    def mod_revision(cls, key, op: str, rev: int):
        return cls._make(key, op, rpc_pb2.Compare.MOD, mod_revision=rev)

    @classmethod
    def create_revision(cls, key, op: str, rev: int):
        return cls._make(key, op, rpc_pb2.Compare.CREATE, create_revision=rev)

    @classmethod
    def version(cls, key, op: str, version: int):
        return cls._make(key, op, rpc_pb2.Compare.VERSION, version=version)

    @classmethod
    def value(cls, key, op: str, value):
        return cls._make(key, op, rpc_pb2.Compare.VALUE, value=_b(value))


class Op:
    @staticmethod
    def put(key, value, *, lease: int = 0) -> rpc_pb2.RequestOp:
        return rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=_b(key), value=_b(value), lease=lease))

    @staticmethod
    def get(key, *, prefix: bool = False, limit: int = 0) -> rpc_pb2.RequestOp:
        key = _b(key)
        return rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(
            key=key, range_end=prefix_end(key) if prefix else b"", limit=limit))

    @staticmethod
    def delete(key, *, prefix: bool = False) -> rpc_pb2.RequestOp:
        key = _b(key)
        return rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(
            key=key, range_end=prefix_end(key) if prefix else b""))
