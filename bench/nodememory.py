"""Node memory with the runtime as its own daemon: what each container costs beyond the daemon,
30 pods on one node. Part of `make bench` (bench/run.py calls `run`; `--no-node-memory` skips
it); a sibling of bench/podstartup.py, which runs the kubelet with the in-process runtime.

The node is a network namespace of its own (so that its pod bridge and the routes to its pod
CIDR never appear in the host's namespace), holding `kubelab runtime` (a private root, runc
root, image dir and cgroup parent) and a real kubelet with `--container-runtime-endpoint` on the
daemon's unix socket. The kubelet reaches bench/run.py's API server through a relay
(worker/overlay/testbed.py's) listening on the node's loopback. Figure: the private memory (USS)
of every conmon of this node plus the growth of the daemon's USS from 0 to 30 pods, divided by
the containers running. Everything (containers, sandboxes, mounts, cgroups, namespaces,
processes) is removed at the end, also when the benchmark fails.
"""
from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from bench.podstartup import startup_pod
from kubelab.client.client import Client
from kubelab.client.config import ClientConfig, load_config, write_config
from worker.network import CommandRunner, PodNetwork
from worker.overlay import testbed
from worker.overlay.testbed import NETNS
from worker.runtime import cgroups
from worker.runtime.conmon import is_kubelab_conmon

KUBELAB = [sys.executable, "-m", "kubelab.cli.main"]
NODE = "bench-mem-node"


def _stop(p: subprocess.Popen) -> None:
    if p.poll() is not None:
        return
    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    except ProcessLookupError:
        pass


def _uss(pid: int) -> float:
    """Private memory in MB of the process, or of what nsenter exec'd / started."""
    p = psutil.Process(pid)
    if p.name() == "nsenter" and p.children():
        p = p.children()[0]
    return p.memory_full_info().uss / 2**20


def _conmons(root: Path) -> list[psutil.Process]:
    """This node's conmons: kubelab's, with a bundle under root."""
    out = []
    for pr in psutil.process_iter(["cmdline"]):
        cmd = "\0".join(pr.info["cmdline"] or []).encode()
        if is_kubelab_conmon(cmd) and str(root).encode() in cmd:
            out.append(pr)
    return out


async def _running(c, pods: int) -> int:
    got = await c.pods("bench").list(label_selector="app=startup")
    return sum(1 for p in got.items if p.status.phase == "Running" and p.status.containerStatuses
               and all(cs.state.HasField("running") for cs in p.status.containerStatuses))


async def run(cluster, report, *, pods: int = 30, interval: float = 0.2) -> None:
    suffix = secrets.token_hex(3)
    ns, parent, bridge = f"klbm-{suffix}-node", f"/kubelab-bench-{suffix}", "cni0"
    root = cluster.root / "memnode"
    root.mkdir(parents=True, exist_ok=True)
    sock = root / "runtime.sock"
    procs: list[subprocess.Popen] = []
    relay = None

    def spawn(name: str, *args: str) -> subprocess.Popen:
        with open(root / f"{name}.log", "ab") as log:
            p = subprocess.Popen(["nsenter", f"--net={NETNS / ns}", "--", *KUBELAB, *args], stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(p)
        return p

    try:
        await asyncio.to_thread(subprocess.run, KUBELAB + ["image", "build-busybox", "--root-dir", str(root / "img")],
                                check=True, capture_output=True)
        testbed.sh("ip", "netns", "add", ns)
        testbed.sh("ip", "-n", ns, "link", "set", "lo", "up")
        relay = testbed.start_relay(ns, "127.0.0.1", 6443, int(cluster.address.rsplit(":", 1)[1]))
        admin = load_config(cluster.config)
        write_config(root / "kubelet.conf", ClientConfig("127.0.0.1:6443", admin.ca_pem, admin.cert_pem, admin.key_pem))
        daemon = spawn("runtime", "runtime", "--root-dir", str(root), "--image-dir", str(root / "img"),
                       "--cgroup-parent", parent, "--listen", f"unix://{sock}")
        kubelet = spawn("kubelet", "kubelet", "--config", str(root / "kubelet.conf"), "--node-name", NODE,
                        "--node-ip", "127.0.0.1", "--port", "0", "--root-dir", str(root),
                        "--manifest-dir", str(root / "manifests"), "--bridge", bridge,
                        "--container-runtime-endpoint", f"unix://{sock}")
        async with Client.connect(str(cluster.config)) as c:
            end = time.monotonic() + 90
            while True:
                for p, name in ((daemon, "runtime"), (kubelet, "kubelet")):
                    if p.poll() is not None:
                        raise RuntimeError(f"the {name} exited: {(root / f'{name}.log').read_text()[-2000:]}")
                try:
                    n = await c.nodes().get(NODE)
                    if n.spec.podCIDR and any(x.type == "Ready" and x.status == "True" for x in n.status.conditions):
                        break
                except Exception:  # noqa: BLE001,S110 - not registered yet
                    pass
                if time.monotonic() > end:
                    raise RuntimeError(f"the bench kubelet is not Ready: {(root / 'kubelet.log').read_text()[-2000:]}")
                await asyncio.sleep(0.5)
            await asyncio.sleep(3)  # the kubelet's first syncs against the daemon
            before = _uss(daemon.pid)
            for i in range(pods):
                await c.pods("bench").create(startup_pod(i))
                await asyncio.sleep(interval)
            end = time.monotonic() + 180
            while (up := await _running(c, pods)) < pods and time.monotonic() < end:
                await asyncio.sleep(1)
            await asyncio.sleep(5)  # settle: status updates, log writers
            after = _uss(daemon.pid)
            monitors = _conmons(root)
            mon = sum(pr.memory_full_info().uss for pr in monitors) / 2**20
        containers = len(monitors)
        per = (mon + after - before) / containers if containers else float("inf")
        report(f"9. node memory, {pods} pods on one node: (conmons + runtime daemon growth) ÷ containers",
               f"({mon:.1f} + {after - before:.1f}) MB ÷ {containers} = {per:.2f} MB "
               f"(daemon USS {before:.0f} -> {after:.0f} MB; {up}/{pods} Running)", "≤ 2 MB",
               per <= 2.0 and up == pods)
    finally:
        for p in reversed(procs):  # the kubelet, then the daemon; the containers outlive both
            _stop(p)
        if relay is not None:
            _stop(relay)
        left = await _tear_down(root, ns, parent, bridge)
        left += testbed.delete_namespaces(suffix)
        left += [f"conmon {pr.pid}" for pr in _conmons(root)]
        if left:
            print(f"the node memory benchmark left behind: {left}", file=sys.stderr, flush=True)
            if sys.exc_info()[0] is None:
                raise RuntimeError(f"the node memory benchmark left behind: {left}")


async def _tear_down(root: Path, ns: str, parent: str, bridge: str) -> list[str]:
    """Remove the node's containers, sandboxes and pod networks, each piece on its own so that
    one failure does not keep the rest in place; what could not go."""
    from worker.runtime.images import ImageStore
    from worker.runtime.runtime import Runtime
    errors = []
    rt = Runtime(root, runc_root=root / "runc", images=ImageStore(root / "img"), cgroup_parent=parent)
    try:
        containers = await rt.list()
    except Exception as e:  # noqa: BLE001
        errors.append(f"listing containers: {e!r}")
        containers = []
    for st in containers:
        try:
            await rt.stop(st.id, 2.0)
            await rt.remove(st.id)
        except Exception as e:  # noqa: BLE001
            errors.append(f"container {st.id}: {e!r}")
    for uid in rt.sandbox_uids():
        try:
            await rt.remove_sandbox(uid)
        except Exception as e:  # noqa: BLE001
            errors.append(f"sandbox {uid}: {e!r}")
    if (NETNS / ns).exists():
        net = PodNetwork(root / "network", bridge=bridge, runner=CommandRunner(prefix=["nsenter", f"--net={NETNS / ns}"]))
        sandboxes = await net.list_sandboxes()
        try:
            await net.cleanup_all(remove_bridge=True)
        except Exception as e:  # noqa: BLE001
            errors.append(f"pod networks: {e!r}")
        errors += [f"netns {PodNetwork.netns_name(s)}" for s in sandboxes
                   if (NETNS / PodNetwork.netns_name(s)).exists()]
    errors += [f"cgroup {p} is busy" for p in cgroups.remove(parent)]
    return errors
