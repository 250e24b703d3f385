"""`kubelab reset` (kubeadm reset's node half): stop and remove every container of a node's
root dir, its pod sandboxes and pod networks, and the bridge with its iptables rules. The
kubelet leaves containers running on purpose when it stops (they outlive it); this is how a
lab, a test or a user takes a node down for good."""
from __future__ import annotations

from pathlib import Path


async def reset_node(root: Path, *, bridge: str = "cni0", image_dir: Path | None = None,
                     runc_root: Path | None = None, stop_timeout: float = 2.0) -> int:
    """Remove what the node's runtime and network hold; returns the number of containers removed."""
    from worker.network import PodNetwork
    from worker.runtime.images import ImageStore
    from worker.runtime.runtime import Runtime
    rt = Runtime(root, runc_root=runc_root or root / "runc", images=ImageStore(image_dir or root))
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


def register(sub, parents) -> None:
    p = sub.add_parser("reset", parents=parents,
                       help="Remove a node's containers, pod networks and bridge (stop the kubelet first)")
    p.add_argument("--root-dir", default="/var/lib/kubelab")
    p.add_argument("--runc-root", default="")
    p.add_argument("--bridge", default="cni0")
    p.set_defaults(func=run)


async def run(args) -> int:
    root = Path(args.root_dir)
    n = await reset_node(root, bridge=args.bridge, runc_root=Path(args.runc_root) if args.runc_root else None)
    print(f"removed {n} containers and the pod networks under {root}; bridge {args.bridge} and its rules are gone")
    return 0
