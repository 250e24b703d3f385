"""The API server killed (-9) mid-load and started again: `kubelab apiserver` as a real child
process on real etcd. Clients retry, watchers resume or relist; etcd judges the outcome."""
from __future__ import annotations

import asyncio
import time

import pytest

from kubelab.errors import ServiceUnavailable
from tests.faults.deadline import DEADLINE, wait_until
from tests.faults.judge import pod_history, pod_state, settle_and_judge
from tests.faults.load import Load, run_load
from tests.faults.test_etcd_faults import NS, RESTARTING, WATCHERS, figures, namespace
from tests.faults.watchers import Recorders
from tests.integration.conftest import start_apiserver


async def test_apiserver_killed_and_restarted_under_load(fault_etcd, apiserver_process, lease_churn, tmp_path):
    """240 pods are created, relabelled and deleted under twelve watchers (each on its own
    connection, four starting over every 25 events; leases renewed back to back) while the
    API server is SIGKILLed; while it is down an HA peer changes 30 more pods; then it
    starts again on the same port. Every
    create that succeeded exists exactly once (the uid it answered), creates retried after an
    error end in success or AlreadyExists, acknowledged updates and deletes hold; every
    watcher resumes from its last revision or relists on Gone, and misses nothing."""
    n, extra = 240, 30
    srv = await apiserver_process(fault_etcd.endpoint, "--bookmark-interval", "0.5",
                                  "--compaction-interval", "3600")
    writer_client = srv.client()
    clients = [srv.client() for _ in range(WATCHERS + RESTARTING)]
    recs = writer = None
    try:
        await writer_client.namespaces().create(namespace(NS))
        churn = lease_churn(writer_client, NS)
        await wait_until(lambda: churn.renewals >= 20, "leases to be renewed")
        recs = Recorders(clients, NS, restarting=RESTARTING)
        await recs.started()
        load = Load()
        rc = writer_client.pods(NS)
        writer = asyncio.create_task(run_load(rc, NS, range(n), load))
        await wait_until(lambda: load.done >= n // 3 or writer.done(), "a third of the load")
        assert not writer.done(), "the load finished before the API server could be killed under it"
        srv.kill9()
        killed = time.monotonic()
        with pytest.raises(ServiceUnavailable):
            await writer_client.namespaces().get("default")
        await wait_until(lambda: load.errors["ServiceUnavailable"] >= 8 or writer.done(),
                         "the load's clients to be told ServiceUnavailable")
        # Meanwhile a second API server on the same etcd (an HA peer) changes pods: the
        # restarted server cannot replay those to the watchers that come back to it.
        (tmp_path / "peer").mkdir()
        other = await start_apiserver(fault_etcd, tmp_path / "peer")
        try:
            await run_load(other.client.pods(NS), NS, range(n, n + extra), load)
        finally:
            await other.client.close()
            await other.server.stop(0)
        await srv.start()
        restarted = time.monotonic()
        await asyncio.wait_for(writer, DEADLINE)
        finished = time.monotonic()

        start = min(r.segments[0].start_rv for r in recs.recorders)
        history, _ = await pod_history(fault_etcd.endpoint, start)
        verdict, reached = await settle_and_judge(recs, churn, history, fault_etcd.endpoint, NS)
        converged = reached - finished
        told_gone = [g - restarted for r in recs.recorders for g in r.gone_at if g > restarted]
        figures("apiserver-kill", load, recs, verdict, apiserver_down_s=f"{restarted - killed:.1f}",
                all_told_gone_within_s=f"{max(told_gone, default=0):.1f}",
                caught_up_after_load_s=f"{converged:.1f}",
                history_events=len(history), lease_renewals=churn.renewals)
        assert verdict.ok, "watchers differ from etcd's history:\n" + "\n".join(verdict.problems[:20])
        final = await pod_state(fault_etcd.endpoint, 0, NS)
        for r in recs.recorders:
            assert r.state() == final, f"{r.name}'s view differs from etcd's"
            # The restarted server's cache starts after the peer's writes: resuming from an
            # older revision must be refused (Gone), and the watcher relist. (A restarting
            # watcher may have been between a list and its watch, with nothing to resume.)
            assert len(r.segments) == r.gone + r.restarts + 1, f"{r.name}: lists without a cause"
            assert r.gone >= 1 or r.restart_every, f"{r.name} resumed without being told Gone"
            # A dead server breaks streams, which clients see as ServiceUnavailable; a watch
            # from an etcd list newer than the new server's cache may also time out.
            assert set(r.errors) <= {"ServiceUnavailable", "Timeout"}, r.errors
        assert set(load.errors) <= {"ServiceUnavailable", "AlreadyExists after a failed attempt",
                                    "NotFound after a failed attempt"}, load.errors

        # No lost and no duplicated pods: exactly the pods not deleted, once each, and each one
        # whose create answered is that object (same uid), not a second one made by a retry.
        assert set(final) == {f"{NS}/p{i}" for i in range(n + extra)} - {f"{NS}/{x}" for x in load.deleted}
        listed = (await rc.list()).items
        by_name = {p.metadata.name: p for p in listed}
        assert len(by_name) == len(listed) == len(final)
        assert len({p.metadata.uid for p in listed}) == len(listed)
        for name, uid in load.created.items():
            if uid and name not in load.deleted:
                assert by_name[name].metadata.uid == uid, f"{name} is not the object its create returned"
            if int(name[1:]) % 3 == 0:
                assert by_name[name].metadata.labels["step"] == "2", f"{name} lost its acknowledged update"
    finally:
        if writer is not None and not writer.done():
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        if recs is not None:
            await recs.stop()
        for c in clients:
            await c.close()
        await writer_client.close()
