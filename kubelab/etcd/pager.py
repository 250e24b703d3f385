"""Paged ranges over etcd, bounded in bytes as well as in keys.

Where it sits: every prefix listing the API server makes (the registry store's LIST, the watch
cache's initial list and relist) reads etcd through range_pages, so no single etcd reply can
outgrow the gRPC message limit however large the objects are.

etcd's Range has a key limit but no byte limit, and objects may be up to the object size limit
(1.5 MiB), so a page of 1,000 keys could be 1.5 GB. The pager picks each page's key limit from
the sizes it has seen so far: the first page is small enough that even objects at the size limit
fit the byte budget, later pages aim at the budget from the average size seen, and a reply that
still comes back too large (gRPC RESOURCE_EXHAUSTED) is asked again with half the limit. All
pages read at the revision of the first one, so the listing is one consistent snapshot.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator

import grpc

from .client import EtcdClient, EtcdError, KeyValue

PAGE_BYTES = 16 << 20  # target size of one etcd reply; well below the client's 64 MiB receive limit
MAX_OBJECT_BYTES = 1536 * 1024  # the largest value the API server stores (etcd's default request limit)


@dataclass(slots=True)
class Page:
    kvs: list[KeyValue]
    revision: int  # the one revision the whole listing reads at
    more: bool  # keys remain after this page


def next_limit(seen_bytes: int, seen_keys: int, *, max_bytes: int, max_count: int) -> int:
    """Keys to ask for in the next page: as many as fit max_bytes at the average size seen so
    far, or, before anything was seen, as many as fit at the largest possible size."""
    if seen_keys == 0:
        return max(1, min(max_count, max_bytes // MAX_OBJECT_BYTES))
    avg = max(1, seen_bytes // seen_keys)
    return max(1, min(max_count, max_bytes // avg))


async def range_pages(etcd: EtcdClient, start: bytes, end: bytes, *, revision: int = 0,
                      max_bytes: int = PAGE_BYTES, max_count: int = 1000) -> AsyncIterator[Page]:
    """Yield the keys in [start, end) at revision (0: now) page by page. A consumer may stop at
    any point; to resume later, range again from the last key + b"\\0" at page.revision.
    CompactedError (the revision is gone) and EtcdUnavailable propagate."""
    seen_bytes = seen_keys = 0
    limit = next_limit(0, 0, max_bytes=max_bytes, max_count=max_count)
    while True:
        try:
            res = await etcd.range(start, range_end=end, limit=limit, revision=revision)
        except EtcdError as e:
            if e.code == grpc.StatusCode.RESOURCE_EXHAUSTED and limit > 1:
                limit = max(1, limit // 2)  # larger objects than the average seen: ask for fewer
                continue
            raise
        revision = revision or res.revision
        more = res.more and bool(res.kvs)
        yield Page(res.kvs, revision, more)
        if not more:
            return
        seen_bytes += sum(len(kv.key) + len(kv.value) for kv in res.kvs)
        seen_keys += len(res.kvs)
        start = res.kvs[-1].key + b"\x00"
        limit = next_limit(seen_bytes, seen_keys, max_bytes=max_bytes, max_count=max_count)
