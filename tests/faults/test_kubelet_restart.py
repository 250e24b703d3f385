"""The kubelet killed (-9) while its pods terminate: the pods' containers outlive it, the API
still holds the pods marked for deletion, and the kubelet that comes back must finish every
deletion (stop, remove, confirm) and leave no container behind.

A real control plane and a real kubelet with runc containers (the node fixture of the kubelet
integration tests). The figures (pods, seconds to converge) are printed, not judged: the
machine is shared."""
from __future__ import annotations

import signal
import time

import pytest

from tests.integration.conftest import wait_for
from tests.integration.test_kubelet import Node, clean_pods, node, pod_from  # noqa: F401 - fixtures

PODS = 8
GRACE = 30  # long enough that the kill lands while every container still waits out SIGTERM


def pods_manifest(i: int) -> str:
    # sh as the container's init ignores SIGTERM: each stop waits out the whole grace period
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: doomed-{i}, labels: {{fault: kubelet}}}}
spec:
  terminationGracePeriodSeconds: 30
  {"initContainers: [{name: side, image: busybox, imagePullPolicy: Never, restartPolicy: Always, command: [sleep, '100000']}]" if i % 2 else ""}
  containers: [{{name: c, image: busybox, imagePullPolicy: Never, command: [sh, -c, "sleep 100000"]}}]
"""


@pytest.mark.timeout(600)
async def test_deletions_complete_after_the_kubelet_is_killed_mid_termination(node: Node):
    async with node.cp.client() as c:
        pods = c.pods("default")
        made = [await pods.create(pod_from(pods_manifest(i))) for i in range(PODS)]

        async def all_running():
            items = (await pods.list(label_selector="fault=kubelet")).items
            return len(items) == PODS and all(
                p.status.phase == "Running" and p.status.containerStatuses and all(
                    cs.state.running.startedAt for cs in p.status.containerStatuses) for p in items)
        await wait_for(all_running, 120, interval=0.5, what=f"{PODS} pods running")
        cids = {}
        for p in (await pods.list(label_selector="fault=kubelet")).items:
            cids[p.metadata.uid] = [cs.containerID.removeprefix("runc://")
                                    for cs in list(p.status.containerStatuses) + list(p.status.initContainerStatuses)]

        for p in made:
            await pods.delete(p.metadata.name, grace_period=GRACE)

        async def stopping():  # the kubelet has sent SIGTERM to every pod: it is mid-termination
            evs = (await c.events("default").list()).items
            told = {e.involvedObject.name for e in evs if e.reason == "Killing"}
            return all(p.metadata.name in told for p in made)
        await wait_for(stopping, 60, interval=0.2, what="the kubelet stopping every pod's containers")
        node.stop(signal.SIGKILL)
        killed_at = time.monotonic()
        still = [p for p in (await pods.list(label_selector="fault=kubelet")).items]
        assert len(still) == PODS, "a pod went before its grace period ended"
        alive = [cid for ids in cids.values() for cid in ids if (node.root / "containers" / cid).is_dir()]
        assert alive, "the containers should outlive the killed kubelet"

        node.start()

        async def converged():
            left = (await pods.list(label_selector="fault=kubelet")).items
            dirs = [cid for ids in cids.values() for cid in ids if (node.root / "containers" / cid).exists()]
            return not left and not dirs
        await wait_for(converged, 180, interval=0.5, what="every deletion completed and no container left")
        took = time.monotonic() - killed_at
        print(f"\nkubelet -9 mid-termination: {PODS} pods ({sum(map(len, cids.values()))} containers), "
              f"grace {GRACE}s; converged {took:.1f}s after the kill")
        assert not any((node.root / "pods" / uid / "volumes").exists() for uid in cids)

