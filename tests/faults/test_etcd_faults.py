"""Faults under the API server's storage: etcd killed (-9) and restarted under load, and etcd
compacted past the revision of the API server's own watch. What watchers saw through the API
server is judged against etcd's own history (tests/faults/judge.py)."""
from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from kubelab.api.v1 import objects_pb2 as v1
from kubelab.errors import ServiceUnavailable
from kubelab.etcd.client import EtcdClient
from tests.faults.deadline import DEADLINE, wait_until
from tests.faults.judge import Verdict, pod_history, pod_state, settle_and_judge
from tests.faults.load import Load, pod, retrying, run_load
from tests.faults.watchers import ListChecker, Recorders
from tests.integration.conftest import start_apiserver

NS = "faults"
WATCHERS = 8
RESTARTING = 4  # more watchers, that start over with a new list every 25 events
LISTERS = 2  # clients listing at a revision all through the load (ListChecker)


def namespace(name: str) -> v1.Namespace:
    ns = v1.Namespace()
    ns.metadata.name = name
    return ns


def figures(test: str, load: Load, recs: Recorders, verdict: Verdict, **extra) -> str:
    line = (f"FAULT {test}: events checked {verdict.checked}, lost {verdict.lost}, duplicated "
            f"{verdict.duplicated}, unexpected {verdict.unexpected}, out of order {verdict.out_of_order}; "
            f"writers' errors {dict(load.errors)}; watchers' errors "
            f"{[dict(r.errors) for r in recs.recorders]}, Gone {[r.gone for r in recs.recorders]}, "
            f"rewatches {[r.rewatches for r in recs.recorders]}, restarts {[r.restarts for r in recs.recorders]}"
            + "".join(f"; {k} {v}" for k, v in extra.items()))
    print(line)
    return line


async def test_etcd_killed_and_restarted_under_load(fault_etcd, lease_churn, tmp_path):
    """etcd is SIGKILLed three times while 240 pods are created, relabelled and deleted
    under twelve watchers (four of them starting over every 25 events), two clients listing
    at a revision and leases renewed back to back, and each time started again on its data
    dir. Meanwhile clients get ServiceUnavailable from the API server; afterwards every write
    they were told succeeded is in etcd, every list equals etcd's state at its revision, and
    every watcher saw exactly etcd's history, per pod, from its start revision."""
    n, kills = 240, 3
    api = await start_apiserver(fault_etcd, tmp_path, bookmark_interval=0.5)
    clients = [api.new_client() for _ in range(WATCHERS + RESTARTING + LISTERS)]
    recs = writer = None
    listers = []
    try:
        await api.client.namespaces().create(namespace(NS))
        churn = lease_churn(api.client, NS)
        await wait_until(lambda: churn.renewals >= 20, "leases to be renewed")
        recs = Recorders(clients[LISTERS:], NS, restarting=RESTARTING)
        await recs.started()
        load, probes = Load(), Load()
        rc = api.client.pods(NS)
        listers = [ListChecker(c, NS, lambda: max(load.last_rv, churn.last_rv)) for c in clients[:LISTERS]]
        writer = asyncio.create_task(run_load(rc, NS, range(n), load))
        outages, recovered = [], []  # etcd down (s); etcd back to a create through the API (s)
        for k in range(1, kills + 1):
            await wait_until(lambda: load.done >= n * k // (kills + 1) or writer.done(), f"{k}/{kills + 1} of the load")
            assert not writer.done(), "the load finished before etcd could be killed under it"
            seen = load.errors["ServiceUnavailable"]
            fault_etcd.kill9()
            killed = time.monotonic()
            # The API server stays up and says what is wrong, with the reason clients retry on.
            with pytest.raises(ServiceUnavailable, match="etcd"):
                await rc.create(pod(NS, f"probe{k}"))
            await wait_until(lambda: load.errors["ServiceUnavailable"] >= seen + 8 or writer.done(),
                             "the load's clients to be told ServiceUnavailable")
            await fault_etcd.restart()
            restarted = time.monotonic()
            await retrying(lambda: rc.create(pod(NS, f"probe{k}")), probes)
            outages.append(round(restarted - killed, 2))
            recovered.append(round(time.monotonic() - restarted, 2))
        await asyncio.wait_for(writer, DEADLINE)
        finished = time.monotonic()
        for lister in listers:
            await lister.stop()

        start = min(r.segments[0].start_rv for r in recs.recorders)
        history, _ = await pod_history(fault_etcd.endpoint, start)
        verdict, reached = await settle_and_judge(recs, churn, history, fault_etcd.endpoint, NS)
        converged = reached - finished
        bad_lists = [b for lister in listers for b in await lister.judge(fault_etcd.endpoint, NS)]
        figures("etcd-kill", load, recs, verdict, etcd_down_s=outages, api_recovered_s=recovered,
                caught_up_after_load_s=f"{converged:.1f}",
                lists_checked=sum(len(x.answers) for x in listers), lists_wrong=len(bad_lists),
                listers_errors=[dict(x.errors) for x in listers],
                history_events=len(history), lease_renewals=churn.renewals)
        assert verdict.ok, "watchers differ from etcd's history:\n" + "\n".join(verdict.problems[:20])
        assert not bad_lists, "lists differ from etcd's state at their revision:\n" + "\n".join(bad_lists[:10])
        # Nothing was compacted and the cache's window holds every event since the watchers
        # started: none of them had reason to be told Gone. The only other answer a watch may
        # get is Timeout ("Too large resource version"), when it starts from an etcd list
        # newer than a cache still reconnecting to etcd; the client retries.
        assert [r.gone for r in recs.recorders] == [0] * len(recs.recorders)
        assert all(set(r.errors) <= {"Timeout"} for r in recs.recorders), [dict(r.errors) for r in recs.recorders]
        # What clients were told, and only that, is in etcd.
        assert set(load.errors) <= {"ServiceUnavailable", "AlreadyExists after a failed attempt",
                                    "NotFound after a failed attempt"}, load.errors
        final = await pod_state(fault_etcd.endpoint, 0, NS)
        assert set(final) == ({f"{NS}/p{i}" for i in range(n)} - {f"{NS}/{x}" for x in load.deleted}
                              | {f"{NS}/probe{k}" for k in range(1, kills + 1)})
        listed = {p.metadata.name: p for p in (await rc.list()).items}
        for name, uid in load.created.items():
            if uid and name not in load.deleted:
                assert listed[name].metadata.uid == uid, f"{name} is not the object its create returned"
            if int(name[1:]) % 3 == 0:
                assert listed[name].metadata.labels["step"] == "2", f"{name} lost its acknowledged update"
        assert len({p.metadata.uid for p in listed.values()}) == len(listed)
    finally:
        if writer is not None and not writer.done():
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        for lister in listers:
            await lister.stop()
        if recs is not None:
            await recs.stop()
        for c in clients:
            await c.close()
        await api.client.close()
        await api.server.stop(0)


async def test_compaction_past_the_caches_watch(fault_etcd, tcp_relay, lease_churn, tmp_path):
    """An API server is cut off from etcd (its etcd connection goes through a relay) while a
    second API server on the same etcd keeps writing; etcd is then compacted past the first
    server's watch position and the cut is healed. The first server's watch cache must find
    its etcd watch compacted and relist; its eight watchers are told Gone, relist and watch
    again, and miss nothing: each list equals etcd's state at its revision, each watch run
    equals etcd's history, and the changes made after the relist are all seen."""
    relay = await tcp_relay(fault_etcd.client_port)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    api = await start_apiserver(SimpleNamespace(endpoint=relay.endpoint), tmp_path / "a", bookmark_interval=0.5)
    other = await start_apiserver(fault_etcd, tmp_path / "b", bookmark_interval=0.5)
    clients = [api.new_client() for _ in range(WATCHERS)]
    recs = None
    try:
        await other.client.namespaces().create(namespace(NS))
        churn = lease_churn(other.client, NS)
        await wait_until(lambda: churn.renewals >= 20, "leases to be renewed")
        recs = Recorders(clients, NS)
        await recs.started()
        load = Load()
        await run_load(other.client.pods(NS), NS, range(0, 45), load)
        start = min(r.segments[0].start_rv for r in recs.recorders)
        # the first lists' revisions are about to be compacted: read etcd's state at them now
        listings = {r.segments[0].start_rv: await pod_state(fault_etcd.endpoint, r.segments[0].start_rv, NS)
                    for r in recs.recorders}

        await relay.cut()
        with pytest.raises(ServiceUnavailable, match="etcd"):  # a write must reach etcd
            await api.client.pods(NS).create(pod(NS, "cut-off"))
        await run_load(other.client.pods(NS), NS, range(45, 90), load)  # unseen by the cut-off server
        before, compact_at = await pod_history(fault_etcd.endpoint, start)
        async with EtcdClient(fault_etcd.endpoint) as etcd:
            await etcd.compact(compact_at, physical=True)
        await relay.heal()
        healed = time.monotonic()

        # Told Gone first, then the changes it must see after its relist.
        await wait_until(lambda: all(r.gone and len(r.segments) > r.gone for r in recs.recorders),
                         "every watcher to be told Gone and relist")
        await run_load(api.client.pods(NS), NS, range(90, 135), load)  # through the healed server
        after, _ = await pod_history(fault_etcd.endpoint, compact_at)
        history = before + after
        verdict, reached = await settle_and_judge(recs, churn, history, fault_etcd.endpoint, NS, listings)
        converged = reached - healed
        relisted = [round(r.gone_at[0] - healed, 2) if r.gone_at else None for r in recs.recorders]
        figures("compaction", load, recs, verdict, gone_after_heal_s=relisted, converge_s=f"{converged:.1f}",
                compacted_at=compact_at, lease_renewals=churn.renewals)
        assert verdict.ok, "watchers differ from etcd's history:\n" + "\n".join(verdict.problems[:20])
        final = await pod_state(fault_etcd.endpoint, 0, NS)
        for r in recs.recorders:
            # resuming from its old revision, after the cache relisted, had to be refused
            assert r.gone >= 1 and len(r.segments) == r.gone + 1, f"{r.name}: Gone {r.gone} times, {len(r.segments)} lists"
            # the relist came after the compaction, and the watch after it saw every later change
            assert r.segments[-1].start_rv >= compact_at
            assert r.state() == final, f"{r.name}'s view differs from etcd's"
        # (Timeout: a relist from etcd newer than the cache, which has just relisted itself)
        assert all(set(r.errors) <= {"Timeout"} for r in recs.recorders), [dict(r.errors) for r in recs.recorders]
    finally:
        if recs is not None:
            await recs.stop()
        for c in clients:
            await c.close()
        for h in (api, other):
            await h.client.close()
            await h.server.stop(0)
