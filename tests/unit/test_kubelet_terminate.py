"""PodSyncer.terminate (worker/kubelet/podsync.py) against a fake runtime: a termination that
cancels a sync mid container-create lets the create finish and removes what it made; a
container that shows up during a termination pass is removed by the next pass; a container
that cannot be removed makes terminate raise (the pod worker retries) rather than report a
pod gone while it still runs."""
from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

from kubelab.api.v1 import objects_pb2 as v1
from worker.kubelet.backoff import Backoff
from worker.kubelet.podsync import LABEL_ATTEMPT, LABEL_CONTAINER, LABEL_UID, PodSyncer

DEADLINE = 10.0


@dataclass
class FakeContainer:
    id: str
    labels: dict
    state: str = "created"
    exit_code: int | None = None
    reason: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    image: str = "busybox"


@dataclass
class FakeRuntime:
    """Like runc: a create killed midway (its caller cancelled) leaves a container that runc
    knows and list() does not show."""
    containers: dict = field(default_factory=dict)
    runc_leftovers: list = field(default_factory=list)
    create_gate: asyncio.Event = field(default_factory=asyncio.Event)
    create_entered: asyncio.Event = field(default_factory=asyncio.Event)
    unremovable: set = field(default_factory=set)
    appear_on_first_list: list = field(default_factory=list)
    ids: itertools.count = field(default_factory=itertools.count)

    async def list(self):
        while self.appear_on_first_list:  # a container a late create made while we looked
            c = self.appear_on_first_list.pop()
            self.containers[c.id] = c
            return [x for x in self.containers.values() if x.id != c.id]
        return list(self.containers.values())

    async def create(self, spec):
        cid = f"c{next(self.ids)}"
        self.create_entered.set()
        try:
            await self.create_gate.wait()
        except asyncio.CancelledError:
            self.runc_leftovers.append(cid)
            raise
        self.containers[cid] = FakeContainer(cid, dict(spec.labels))
        return cid

    async def start(self, cid):
        self.containers[cid].state = "running"

    async def stop(self, cid, timeout):
        if cid in self.containers:
            self.containers[cid].state = "exited"

    async def remove(self, cid):
        if cid in self.unremovable:
            raise RuntimeError(f"runc delete {cid}: device busy")
        self.containers.pop(cid, None)

    async def remove_sandbox(self, uid):
        pass


class FakeNetwork:
    async def setup_pod(self, uid, name, ns):
        return SimpleNamespace(ip="10.244.0.9", netns_path=Path("/proc/self/ns/net"))

    async def teardown_pod(self, uid):
        pass


class FakeImages:
    async def status(self, image):
        return SimpleNamespace(ref=image)


def syncer(rt, tmp_path) -> PodSyncer:
    return PodSyncer(runtime=rt, images=FakeImages(), network=FakeNetwork(),
                     recorder=SimpleNamespace(event=lambda *a: None), status=SimpleNamespace(set=lambda *a: None),
                     root_dir=tmp_path, node_ip="10.0.0.1", backoff=Backoff(), pull_backoff=Backoff())


def a_pod(uid="u1") -> v1.Pod:
    p = v1.Pod()
    p.metadata.name, p.metadata.namespace, p.metadata.uid = "p", "default", uid
    p.spec.restartPolicy = "Always"
    c = p.spec.containers.add()
    c.name, c.image, c.imagePullPolicy = "c", "busybox", "IfNotPresent"
    c.command.extend(["sleep", "3600"])
    return p


def labels(uid, name="c", attempt=0):
    return {LABEL_UID: uid, LABEL_CONTAINER: name, LABEL_ATTEMPT: str(attempt)}


async def test_terminate_waits_for_a_create_the_cancelled_sync_began(tmp_path):
    rt = FakeRuntime()
    s = syncer(rt, tmp_path)
    pod = a_pod()
    sync = asyncio.create_task(s.sync(pod))
    await asyncio.wait_for(rt.create_entered.wait(), DEADLINE)
    sync.cancel()  # what the pod worker does when the deletion comes
    with pytest.raises(asyncio.CancelledError):
        await sync
    term = asyncio.create_task(s.terminate(pod, "u1", grace=1))
    await asyncio.sleep(0)
    rt.create_gate.set()
    await asyncio.wait_for(term, DEADLINE)
    assert rt.runc_leftovers == [] and rt.containers == {}


async def test_a_container_appearing_mid_termination_is_removed(tmp_path):
    rt = FakeRuntime()
    rt.containers["a"] = FakeContainer("a", labels("u1"), state="running")
    rt.appear_on_first_list.append(FakeContainer("late", labels("u1", attempt=1), state="created"))
    await asyncio.wait_for(syncer(rt, tmp_path).terminate(a_pod(), "u1", grace=1), DEADLINE)
    assert rt.containers == {}


async def test_terminate_raises_while_a_container_remains(tmp_path):
    rt = FakeRuntime()
    rt.containers["a"] = FakeContainer("a", labels("u1"), state="running")
    rt.unremovable.add("a")
    with pytest.raises(RuntimeError, match="device busy"):
        await asyncio.wait_for(syncer(rt, tmp_path).terminate(a_pod(), "u1", grace=1), DEADLINE)
    rt.unremovable.clear()  # the pod worker's retry then succeeds
    await asyncio.wait_for(syncer(rt, tmp_path).terminate(a_pod(), "u1", grace=1), DEADLINE)
    assert rt.containers == {}
