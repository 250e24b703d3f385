"""Pod workers (worker/kubelet/podworkers.py) with a fake sync and terminate: termination wins
over a sync in flight, is never lost to a later update, is retried until it succeeds, and starts
over when the grace period is shortened."""
from __future__ import annotations

import asyncio

import pytest

from kubelab.api.v1 import objects_pb2 as v1
from worker.kubelet.podworkers import PodWorkers

DEADLINE = 10.0  # seconds a fake step may take before the test fails (they take milliseconds)


def pod(uid="u1", *, deleting=False, grace=None) -> v1.Pod:
    p = v1.Pod()
    p.metadata.name, p.metadata.namespace, p.metadata.uid = "p", "default", uid
    if deleting:
        p.metadata.deletionTimestamp = "2026-01-01T00:00:00Z"
    if grace is not None:
        p.metadata.deletionGracePeriodSeconds = grace
    return p


class Fake:
    def __init__(self):
        self.syncs, self.terminations, self.finished = [], [], []
        self.sync_entered = asyncio.Event()
        self.sync_gate = asyncio.Event()  # a sync blocks until this is set (a 10-minute liveness kill)
        self.terminate_entered = asyncio.Event()
        self.terminate_gate = asyncio.Event()
        self.terminate_gate.set()
        self.fail_terminations = 0
        self.sync_cancelled = 0

    async def sync(self, p):
        self.syncs.append(p.metadata.uid)
        self.sync_entered.set()
        try:
            await self.sync_gate.wait()
        except asyncio.CancelledError:
            self.sync_cancelled += 1
            raise
        return None

    async def terminate(self, p, uid):
        self.terminations.append((uid, p.metadata.deletionGracePeriodSeconds if p is not None else None))
        self.terminate_entered.set()
        await self.terminate_gate.wait()
        if self.fail_terminations:
            self.fail_terminations -= 1
            raise RuntimeError("runc said no")
        self.finished.append(uid)


async def exited(workers: PodWorkers, uid: str) -> None:
    w = workers.workers.get(uid)
    if w is not None:
        await asyncio.wait_for(asyncio.shield(w.task), DEADLINE)


async def test_a_deletion_cancels_a_sync_in_flight():
    f = Fake()
    workers = PodWorkers(f.sync, f.terminate)
    try:
        workers.update("u1", pod())
        await asyncio.wait_for(f.sync_entered.wait(), DEADLINE)
        workers.update("u1", pod(deleting=True, grace=1))  # the sync is still blocked
        await exited(workers, "u1")
        assert f.sync_cancelled == 1
        assert f.finished == ["u1"] and f.terminations == [("u1", 1)]
        assert "u1" not in workers.workers
    finally:
        await workers.stop()


async def test_no_sync_after_termination_began():
    f = Fake()
    f.sync_gate.set()
    f.terminate_gate.clear()
    workers = PodWorkers(f.sync, f.terminate)
    try:
        workers.update("u1", pod())
        await asyncio.wait_for(f.sync_entered.wait(), DEADLINE)
        workers.update("u1", pod(deleting=True, grace=5))
        await asyncio.wait_for(f.terminate_entered.wait(), DEADLINE)
        syncs = len(f.syncs)
        for _ in range(3):  # wakes (PLEG, a status write) during the termination
            workers.poke("u1")
            workers.update("u1", pod(deleting=True, grace=5))
            await asyncio.sleep(0)
        f.terminate_gate.set()
        await exited(workers, "u1")
        assert len(f.syncs) == syncs and f.terminations == [("u1", 5)]
    finally:
        await workers.stop()


async def test_the_terminating_signal_survives_a_later_update():
    """Only the latest desired state is kept, but 'terminating' is sticky: an update without
    the deletionTimestamp (an older copy, a static pod's rescan) does not bring the pod back."""
    f = Fake()
    workers = PodWorkers(f.sync, f.terminate)
    try:
        workers.update("u1", pod())
        await asyncio.wait_for(f.sync_entered.wait(), DEADLINE)
        workers.update("u1", pod(deleting=True, grace=1))
        workers.update("u1", pod())
        await exited(workers, "u1")
        assert f.finished == ["u1"]
    finally:
        await workers.stop()


async def test_a_failed_termination_is_retried():
    f = Fake()
    f.fail_terminations = 2
    workers = PodWorkers(f.sync, f.terminate)
    try:
        workers.update("u1", pod(deleting=True, grace=1))
        async def retried():
            while "u1" in workers.workers:
                workers.poke("u1")  # wake the retries rather than wait out their backoff
                await asyncio.sleep(0.01)
        await asyncio.wait_for(retried(), DEADLINE)
        await exited(workers, "u1")
        assert len(f.terminations) == 3 and f.finished == ["u1"]
    finally:
        await workers.stop()


async def test_a_shorter_grace_period_starts_the_termination_over():
    f = Fake()
    f.terminate_gate.clear()
    workers = PodWorkers(f.sync, f.terminate)
    try:
        workers.update("u1", pod(deleting=True, grace=30))
        await asyncio.wait_for(f.terminate_entered.wait(), DEADLINE)
        workers.update("u1", pod(deleting=True, grace=30))  # the same grace: carry on
        await asyncio.sleep(0)
        assert f.terminations == [("u1", 30)]
        workers.update("u1", pod(deleting=True, grace=0))
        f.terminate_gate.set()
        await exited(workers, "u1")
        assert f.terminations == [("u1", 30), ("u1", 0)] and f.finished == ["u1"]
    finally:
        await workers.stop()


async def test_removed_from_every_source_terminates_without_a_pod():
    f = Fake()
    workers = PodWorkers(f.sync, f.terminate)
    try:
        workers.update("u1", pod())
        await asyncio.wait_for(f.sync_entered.wait(), DEADLINE)
        workers.update("u1", None)
        await exited(workers, "u1")
        assert f.terminations == [("u1", None)]
    finally:
        await workers.stop()


@pytest.mark.parametrize("n", [1, 5])
async def test_stop_cancels_every_worker(n):
    f = Fake()
    workers = PodWorkers(f.sync, f.terminate)
    for i in range(n):
        workers.update(f"u{i}", pod(f"u{i}"))
    await asyncio.wait_for(f.sync_entered.wait(), DEADLINE)
    await workers.stop()
    assert f.finished == []
