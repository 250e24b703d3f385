"""The kubelet's pieces that must work before the API server exists: the status manager keeps
a static pod's status until its mirror pod appears, and the node's registration flags."""
from __future__ import annotations

import asyncio

import pytest

from kubelab.api.v1 import objects_pb2 as v1
from kubelab.cli.common import CLIError
from kubelab.errors import NotFound
from worker.kubelet.cmd import parse_taints
from worker.kubelet.statusmanager import StatusManager


class FakePods:
    """pods(ns) of a client whose API has no mirror pod until `mirror` is set."""

    def __init__(self):
        self.mirror: v1.Pod | None = None
        self.gets = 0
        self.written: list[v1.PodStatus] = []

    async def get(self, name):
        self.gets += 1
        if self.mirror is None:
            raise NotFound(f'pods "{name}" not found')
        out = v1.Pod()
        out.CopyFrom(self.mirror)
        return out

    async def update_status(self, pod):
        self.written.append(pod.status)
        return pod


async def _until(pred, what: str, timeout: float = 10.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        assert loop.time() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_static_pod_status_waits_for_its_mirror():
    pods = FakePods()
    client = type("Client", (), {"pods": lambda self, ns: pods})()
    sm = StatusManager(client)
    static = v1.Pod()
    static.metadata.name, static.metadata.namespace, static.metadata.uid = "etcd-n1", "kube-system", "u-static"
    sm.static.add("u-static")
    task = asyncio.create_task(sm.run())
    try:
        sm.set(static, v1.PodStatus(phase="Running"))
        await _until(lambda: pods.gets >= 2, "a second try while the mirror pod is missing")
        assert "u-static" in sm.pending and not pods.written
        mirror = v1.Pod()
        mirror.metadata.name, mirror.metadata.uid = "etcd-n1", "u-mirror"  # a mirror has its own uid
        pods.mirror = mirror
        await _until(lambda: pods.written, "the status written to the mirror pod")
        assert pods.written[-1].phase == "Running" and "u-static" not in sm.pending
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_an_api_pod_that_is_gone_is_forgotten():
    pods = FakePods()
    client = type("Client", (), {"pods": lambda self, ns: pods})()
    sm = StatusManager(client)
    pod = v1.Pod()
    pod.metadata.name, pod.metadata.namespace, pod.metadata.uid = "web", "default", "u1"
    task = asyncio.create_task(sm.run())
    try:
        sm.set(pod, v1.PodStatus(phase="Running"))
        await _until(lambda: "u1" not in sm.pending, "the status of a deleted pod dropped")
        assert pods.gets == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_register_with_taints():
    assert parse_taints("") == []
    assert parse_taints("node-role.kubernetes.io/control-plane:NoSchedule,dedicated=gpu:NoExecute") == [
        {"key": "node-role.kubernetes.io/control-plane", "value": "", "effect": "NoSchedule"},
        {"key": "dedicated", "value": "gpu", "effect": "NoExecute"}]
    for bad in ("dedicated=gpu", "dedicated:Sometimes", ":NoSchedule"):
        with pytest.raises(CLIError, match=f'invalid --register-with-taints "{bad}": want KEY\\[=VALUE\\]:EFFECT'):
            parse_taints(bad)
