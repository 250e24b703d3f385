"""Pod startup on a real kubelet: create -> Running as seen through a watch, for 30 pods on
one node from a local image (busybox built offline), and the kubelet's resident memory with
those 30 pods running. Part of `make bench` (bench/run.py calls `run`)."""
from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
import time

import psutil

from kubelab.api.v1 import objects_pb2 as v1
from kubelab.client.client import Client
from worker.kubelet.reset import reset_node
from worker.runtime.conmon import is_kubelab_conmon

KUBELAB = [sys.executable, "-m", "kubelab.cli.main"]


def startup_pod(i: int) -> v1.Pod:
    p = v1.Pod()
    p.metadata.name, p.metadata.namespace = f"startup-{i}", "bench"
    p.metadata.labels["app"] = "startup"
    p.spec.terminationGracePeriodSeconds = 0
    c = p.spec.containers.add(name="c", image="busybox", imagePullPolicy="Never")
    c.command.extend(["sleep", "3600"])
    return p


async def run(cluster, report, *, pods: int = 30, interval: float = 0.5) -> None:
    root = cluster.root / "node"
    bridge = "klbench" + secrets.token_hex(2)
    subprocess.run(KUBELAB + ["image", "build-busybox", "--root-dir", str(root / "img")], check=True,
                   capture_output=True)
    kubelet = cluster.spawn("kubelet", "--config", str(cluster.config), "--node-name", "bench-node",
                            "--node-ip", "127.0.0.1", "--port", "0", "--root-dir", str(root),
                            "--image-dir", str(root / "img"), "--manifest-dir", str(root / "manifests"),
                            "--bridge", bridge)
    try:
        async with Client.connect(str(cluster.config)) as c:
            end = time.monotonic() + 60
            while True:
                try:
                    n = await c.nodes().get("bench-node")
                    if n.spec.podCIDR and any(x.type == "Ready" and x.status == "True" for x in n.status.conditions):
                        break
                except Exception:  # noqa: BLE001
                    pass
                if time.monotonic() > end:
                    raise RuntimeError("bench kubelet not ready")
                await asyncio.sleep(0.5)
            created: dict[str, float] = {}
            running: dict[str, float] = {}
            rv = (await c.pods("bench").list(limit=1)).resource_version

            async def follow():
                async for ev in c.pods("bench").watch(resource_version=rv, label_selector="app=startup",
                                                      allow_bookmarks=False):
                    p = ev.object
                    if p.status.phase == "Running" and p.metadata.name not in running and all(
                            cs.state.HasField("running") for cs in p.status.containerStatuses):
                        running[p.metadata.name] = time.monotonic()
                        if len(running) == pods:
                            return
            watcher = asyncio.create_task(follow())
            for i in range(pods):
                p = startup_pod(i)
                created[p.metadata.name] = time.monotonic()
                await c.pods("bench").create(p)
                await asyncio.sleep(interval)
            try:
                await asyncio.wait_for(watcher, 120)
            except asyncio.TimeoutError:
                watcher.cancel()
            lat = sorted(running[n] - created[n] for n in running)
            rss = psutil.Process(kubelet.pid).memory_info().rss / 2**20
            monitors = [pr for pr in psutil.process_iter(["cmdline"])
                        if is_kubelab_conmon("\0".join(pr.info["cmdline"] or []).encode())]
            mon_uss = sum(pr.memory_full_info().uss for pr in monitors) / 2**20  # private memory
            p50 = lat[len(lat) // 2] if lat else float("inf")
            p99 = lat[max(0, int(len(lat) * 0.99) - 1)] if lat else float("inf")
            report(f"6. pod startup, {pods} pods on one node (one every {interval}s), create -> Running via watch",
                   f"p50 {p50:.2f}s, p99 {p99:.2f}s ({len(lat)}/{pods} Running)", "p99 ≤ 1 s",
                   p99 <= 1.0 and len(lat) == pods)
            report(f"7. kubelet resident memory with {len(lat)} pods",
                   f"{rss:.0f} MB (+ {len(monitors)} conmons, {mon_uss:.1f} MB private in all)", "≤ 80 MB",
                   rss <= 80)
            for i in range(pods):
                try:
                    await c.pods("bench").delete(f"startup-{i}", grace_period=0)
                except Exception:  # noqa: BLE001
                    pass
            await asyncio.sleep(3)
    finally:
        kubelet.terminate()
        try:
            kubelet.wait(15)
        except subprocess.TimeoutExpired:
            kubelet.kill()
            kubelet.wait()
        cluster.procs.remove(kubelet)
        await reset_node(root, bridge=bridge, image_dir=root / "img")
