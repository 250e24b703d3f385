"""kubelab/etcd/pager.py against a real etcd: every key once, in order, at one revision, with
each reply bounded in bytes, also when the objects grow far past the average seen so far."""
from __future__ import annotations

from kubelab.etcd.pager import MAX_OBJECT_BYTES, next_limit, range_pages
from kubelab.etcd.txn import prefix_end

BIG = 1200 * 1024


async def listing(etcd_client, prefix: bytes, **kw):
    pages = []
    async for page in range_pages(etcd_client, prefix, prefix_end(prefix), **kw):
        pages.append(page)
    return pages


def test_first_page_fits_the_budget_at_the_object_size_limit():
    assert next_limit(0, 0, max_bytes=16 << 20, max_count=1000) * MAX_OBJECT_BYTES <= 16 << 20
    assert next_limit(0, 0, max_bytes=1, max_count=1000) == 1
    assert next_limit(1000 * 1024, 1000, max_bytes=16 << 20, max_count=1000) == 1000
    assert next_limit(10 * BIG, 10, max_bytes=16 << 20, max_count=1000) == (16 << 20) // BIG


async def test_pages_are_bounded_in_bytes(etcd_client):
    for i in range(20):
        await etcd_client.put(f"/p/big/{i:03d}", b"x" * BIG)
    pages = await listing(etcd_client, b"/p/big/", max_bytes=4 << 20)
    keys = [kv.key for p in pages for kv in p.kvs]
    assert keys == [f"/p/big/{i:03d}".encode() for i in range(20)]
    assert all(sum(len(kv.value) for kv in p.kvs) <= 4 << 20 for p in pages)
    assert len({p.revision for p in pages}) == 1
    assert [p.more for p in pages] == [True] * (len(pages) - 1) + [False]


async def test_objects_larger_than_the_average_seen_are_asked_again_in_smaller_pages(etcd_client):
    # small objects first teach the pager a small average; then 60 objects of 1.2 MB would be
    # one 72 MB reply, over the client's 64 MB limit, unless the page is cut again
    for i in range(100):
        await etcd_client.put(f"/p/mix/a{i:03d}", b"s" * 100)
    for i in range(60):
        await etcd_client.put(f"/p/mix/b{i:03d}", b"x" * BIG)
    pages = await listing(etcd_client, b"/p/mix/", max_count=1000)
    keys = [kv.key for p in pages for kv in p.kvs]
    assert len(keys) == 160 and keys == sorted(keys) and len(set(keys)) == 160


async def test_the_listing_reads_at_one_revision(etcd_client):
    for i in range(10):
        await etcd_client.put(f"/p/rev/{i}", b"v")
    pages = []
    async for page in range_pages(etcd_client, b"/p/rev/", prefix_end(b"/p/rev/"), max_bytes=1):
        if not pages:
            await etcd_client.put("/p/rev/9", b"changed")
            await etcd_client.delete("/p/rev/5")
        pages.append(page)
    kvs = {kv.key: kv.value for p in pages for kv in p.kvs}
    assert len(kvs) == 10 and kvs[b"/p/rev/9"] == b"v"
