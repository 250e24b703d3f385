"""`kubelab reset` (kubeadm reset's node half): stop and remove every container of a node's
root dir, its pod sandboxes and pod networks, and the bridge with its iptables rules. The
kubelet leaves containers running on purpose when it stops (they outlive it); this is how a
lab, a test or a user takes a node down for good."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path


async def reset_node(root: Path, *, bridge: str = "cni0", image_dir: Path | None = None,
                     runc_root: Path | None = None, stop_timeout: float = 2.0, cgroup_parent: str = "/kubelab") -> int:
    """Remove what the node's runtime and network hold; returns the number of containers removed.
    cgroup_parent: the runtime's --cgroup-parent (the pods' cgroups live under it)."""
    from worker.network import PodNetwork
    from worker.runtime.images import ImageStore
    from worker.runtime.runtime import Runtime
    rt = Runtime(root, runc_root=runc_root or root / "runc", images=ImageStore(image_dir or root),
                 cgroup_parent=cgroup_parent)
    uids, removed = set(), 0
    for c in await rt.list():
        uids.add(c.labels.get("kubelab.pod.uid"))
        await rt.stop(c.id, stop_timeout)
        await rt.remove(c.id)
        removed += 1
    for uid in (uids | set(rt.sandbox_uids())) - {None}:
        await rt.remove_sandbox(uid)
    await PodNetwork(root / "network", bridge=bridge).cleanup_all(remove_bridge=True)
    return removed


MOUNT_PATTERN = re.compile(r"/(containers/[0-9a-f]{16,}/rootfs|sandboxes/[0-9a-f-]{16,}/(shm|ipc|uts|etc)[^ ]*)$")


async def sweep_host(*, cgroup_parent: str = "kubelab", netns_dir: Path = Path("/var/run/netns"),
                     bridge: str = "cni0") -> dict:
    """Everything kubelab left on this host, found by its marks rather than by a root dir (for a
    root dir that is already gone): processes in kubelab's cgroups and the container monitors,
    container and sandbox mounts, kl-* network namespaces, the bridge and the KUBELAB-* rules."""
    import os
    import signal
    import tempfile
    import time
    from worker.network import PodNetwork
    from worker.runtime.conmon import is_kubelab_conmon
    done = {"processes": 0, "mounts": 0, "netns": 0}
    cg = Path("/sys/fs/cgroup")
    parents = [d for d in cg.glob(f"*/{cgroup_parent}") if d.is_dir()] + (
        [cg / cgroup_parent] if (cg / cgroup_parent / "cgroup.procs").exists() else [])
    pids = set()
    for d in parents:
        for procs in d.rglob("cgroup.procs"):
            # a task of another PID namespace shows as 0 (cgroup v2): kill(0) would hit our own group
            pids |= {int(x) for x in procs.read_text().split() if x.strip() and int(x) > 0}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if is_kubelab_conmon((proc / "cmdline").read_bytes()):
                pids.add(int(proc.name))
        except OSError:
            pass
    pids.discard(os.getpid())
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            done["processes"] += 1
        except ProcessLookupError:
            pass
    _wait_gone(pids, deadline=time.monotonic() + 10)  # their mounts and netns pins go with them
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for m in sorted((m for m in mounts if MOUNT_PATTERN.search(m)), key=len, reverse=True):
        if subprocess.run(["umount", "-l", m], capture_output=True).returncode == 0:
            done["mounts"] += 1
    if netns_dir.is_dir():
        for ns in netns_dir.glob("kl-*"):
            if subprocess.run(["ip", "netns", "delete", ns.name], capture_output=True).returncode == 0:
                done["netns"] += 1
    for d in parents:
        for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            try:
                sub.rmdir()
            except OSError:
                pass
        try:
            d.rmdir()
        except OSError:
            pass
    with tempfile.TemporaryDirectory() as state:
        await PodNetwork(Path(state), bridge=bridge).cleanup_all(remove_bridge=True)
    return done


def register(sub, parents) -> None:
    p = sub.add_parser("reset", parents=parents,
                       help="Remove a node's containers, pod networks and bridge (stop the kubelet first)")
    p.add_argument("--root-dir", default="/var/lib/kubelab")
    p.add_argument("--runc-root", default="")
    p.add_argument("--bridge", default="cni0")
    p.add_argument("--all", action="store_true",
                   help="also sweep the whole host for kubelab's containers, mounts and namespaces "
                        "(for a root dir that was deleted while containers ran)")
    p.set_defaults(func=run)


async def run(args) -> int:
    root = Path(args.root_dir)
    n = await reset_node(root, bridge=args.bridge, runc_root=Path(args.runc_root) if args.runc_root else None)
    print(f"removed {n} containers and the pod networks under {root}; bridge {args.bridge} and its rules are gone")
    if args.all:
        done = await sweep_host(bridge=args.bridge)
        print(f"host sweep: killed {done['processes']} processes, unmounted {done['mounts']} mounts, "
              f"deleted {done['netns']} network namespaces")
    return 0


def _wait_gone(pids: set[int], *, deadline: float) -> None:
    """Wait until none of pids is alive (a zombie counts as gone), or the deadline passes."""
    import time
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                break
            if state in ("Z", "X"):
                break
            time.sleep(0.05)
