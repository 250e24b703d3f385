"""Small helpers over ObjectMeta and the wire form of objects, shared by server and clients:
timestamps in Kubernetes' RFC 3339 form, packing objects into google.protobuf.Any, and
stamping a resourceVersion onto stored bytes without decoding them.
"""
from __future__ import annotations

import datetime as dt

from google.protobuf import any_pb2
from google.protobuf.message import Message

from kubelab.api import kinds


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def rfc3339(t: dt.datetime | None = None) -> str:
    """Kubernetes' Time: seconds precision, UTC, 'Z'."""
    return (t or now()).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339_micro(t: dt.datetime | None = None) -> str:
    """Kubernetes' MicroTime (Lease renewTime, Event eventTime)."""
    return (t or now()).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(s: str) -> dt.datetime | None:
    if not s:
        return None
    try:
        return dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        return None


def varint(n: int) -> bytes:
    """Protobuf's base-128 varint (also the OpenAPI v2 document's writer uses it)."""
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def rv_suffix(rv: int) -> bytes:
    """Wire bytes of `{metadata: {resourceVersion: "<rv>"}}` for any top-level kind.

    Every kind keeps ObjectMeta at field 1 and ObjectMeta keeps resourceVersion at field 5.
    Protobuf merges concatenated messages (sub-messages merge, scalars: last one wins), so
    stored bytes + this suffix parse as the stored object with its resourceVersion set:
    the API server serves etcd's bytes without decoding and re-encoding them.
    """
    s = str(rv).encode()
    meta = b"\x2a" + varint(len(s)) + s  # field 5, length-delimited
    return b"\x0a" + varint(len(meta)) + meta  # field 1, length-delimited


def pack(obj: Message) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(obj)
    return a


def pack_raw(kind: kinds.Kind, raw: bytes) -> any_pb2.Any:
    return any_pb2.Any(type_url=kind.type_url, value=raw)


def unpack(a: any_pb2.Any) -> Message:
    kind = kinds.BY_TYPE_URL.get(a.type_url)
    if kind is None:
        raise ValueError(f"unknown object type {a.type_url!r}")
    obj = kind.message()
    obj.ParseFromString(a.value)
    return obj


def key_of(obj: Message) -> str:
    """The informer/cache key: "ns/name" for namespaced objects, "name" otherwise."""
    m = obj.metadata
    return f"{m.namespace}/{m.name}" if m.namespace else m.name
