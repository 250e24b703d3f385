"""The informer's list/watch/relist logic against a scripted fake ResourceClient (pure logic:
no server). A watch answering Gone must make the informer list again, and the handlers must
learn exactly what changed between the old store and the new list."""
from __future__ import annotations

import asyncio

import pytest

from kubelab.api import kinds
from kubelab.api.v1 import objects_pb2 as v1
from kubelab.client.client import ObjectList, WatchEvent
from kubelab.client.informer import Informer
from kubelab.errors import Gone


def pod(name: str, rv: int) -> v1.Pod:
    p = v1.Pod()
    p.metadata.name, p.metadata.namespace, p.metadata.resourceVersion = name, "default", str(rv)
    return p


class ScriptedPods:
    """Lists answer from `lists` in turn; a watch from the first list's revision delivers one
    change and then fails with Gone (its revision was compacted); a watch from any later
    revision stays open and quiet."""
    kind = kinds.BY_RESOURCE["pods"]

    def __init__(self, lists: list[ObjectList]):
        self.lists = lists
        self.listed = 0
        self.watched: list[str] = []
        self.quiet = asyncio.Event()

    async def list_all(self, **_):
        page = self.lists[min(self.listed, len(self.lists) - 1)]
        self.listed += 1
        return page

    async def watch(self, *, resource_version: str, **_):
        self.watched.append(resource_version)
        if resource_version == self.lists[0].resource_version:
            yield WatchEvent("MODIFIED", pod("b", 11))
            raise Gone("too old resource version: 10 (12)")
        if int(resource_version) < int(self.lists[-1].resource_version):
            raise Gone(f"too old resource version: {resource_version}")
        self.quiet.set()
        await asyncio.Event().wait()
        yield  # pragma: no cover - makes this an async generator


@pytest.mark.timeout(60)  # an informer that never relists spins on Gone without yielding
async def test_gone_relists_and_reports_the_difference():
    fake = ScriptedPods([ObjectList([pod("a", 5), pod("b", 6)], "10"),
                         ObjectList([pod("b", 12), pod("c", 13)], "13")])  # a went while we were away
    inf = Informer(fake)
    seen: list[tuple] = []
    inf.add_handler(lambda o: seen.append(("add", o.metadata.name, o.metadata.resourceVersion)),
                    lambda old, new: seen.append(("update", new.metadata.name, old.metadata.resourceVersion,
                                                  new.metadata.resourceVersion)),
                    lambda o: seen.append(("delete", o.metadata.name)))
    task = asyncio.create_task(inf.run())
    try:
        await asyncio.wait_for(fake.quiet.wait(), 10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert inf.relists == 2
    assert fake.watched == ["10", "13"]  # the second watch starts from the relist, not from 11
    assert sorted(inf.store) == ["default/b", "default/c"]
    assert inf.store["default/b"].metadata.resourceVersion == "12"
    assert seen == [("add", "a", "5"), ("add", "b", "6"),  # first list
                    ("update", "b", "6", "11"),  # the watch
                    ("update", "b", "11", "12"), ("add", "c", "13"), ("delete", "a")]  # the relist
    assert inf.synced.is_set()
