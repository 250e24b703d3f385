"""`kubelab reset`: take back what `init` or `join` made on this host, as kubeadm reset does.

    1. stop the node services (their flags files removed, the systemd units disabled)
    2. the node half (worker/kubelet/reset.py): every container of the node's root dir (the
       static pods among them), the pod sandboxes and networks, cni0 and its iptables rules
    3. the overlay's flannel.1 and /run/flannel
    4. the node's cgroup parent (/kubelab/NODE, from the runtime's flags)
    5. ETC/{pki,manifests,*.conf}, VAR/etcd and the rest of VAR's state; images stay, as
       kubeadm reset leaves the container runtime's images
Safe to run twice: every step is a no-op when its thing is gone. Init's rollback uses steps
1 to 4 for a run that got as far as starting the services.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from kubeadm import services

ETC_FILES = ("admin.conf", "kubelet.conf", "controller-manager.conf", "scheduler.conf", "bootstrap-kubelet.conf")
ETC_DIRS = ("pki", "manifests")
KEEP_IN_VAR = ("images",)
OVERLAY_DEVICE = "flannel.1"
FLANNEL_RUN = Path("/run/flannel")


def _runtime_flags(var_dir: Path) -> dict[str, str]:
    try:
        words = services.parse_flags(services.flags_path(var_dir, services.RUNTIME).read_text())
    except OSError:
        return {}
    return dict(w[2:].split("=", 1) for w in words if "=" in w)


async def reset_node_half(var_dir: Path, run_dir: Path = services.RUN_DIR, *, say=print) -> None:
    """Steps 1-4: services, containers and pod networks, the overlay device, the cgroups."""
    from worker.kubelet.reset import reset_node
    from worker.runtime import cgroups
    flags = _runtime_flags(var_dir)  # read before stop_services removes the file
    root = Path(flags.get("root-dir", var_dir))
    parent = flags.get("cgroup-parent", "/kubelab")
    services.stop_services(var_dir, run_dir, say=say)
    if root.is_dir():
        n = await reset_node(root, cgroup_parent=parent)
        say(f"[reset] removed {n} containers, their sandboxes and pod networks; cni0 and its rules are gone")
    if subprocess.run(["ip", "link", "show", OVERLAY_DEVICE], capture_output=True).returncode == 0:
        p = subprocess.run(["ip", "link", "delete", OVERLAY_DEVICE], capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"ip link delete {OVERLAY_DEVICE}: {p.stderr.strip()}")
        say(f"[reset] deleted {OVERLAY_DEVICE}")
    if FLANNEL_RUN.exists():
        shutil.rmtree(FLANNEL_RUN, ignore_errors=True)
    # only a per-node parent (/kubelab/NODE): the shared /kubelab may hold other nodes' pods
    if parent.strip("/").count("/") >= 1:
        left = cgroups.remove(parent)
        if left:
            say(f"[reset] WARNING: cgroups still busy: {', '.join(map(str, left))}")


def remove_files(etc_dir: Path, var_dir: Path, *, say=print) -> None:
    for name in ETC_DIRS:
        if (etc_dir / name).exists():
            shutil.rmtree(etc_dir / name)
    for name in ETC_FILES:
        (etc_dir / name).unlink(missing_ok=True)
    say(f"[reset] deleted {etc_dir}/{{{','.join(ETC_DIRS)}}} and {etc_dir}/*.conf")
    if var_dir.is_dir():
        for entry in var_dir.iterdir():
            if entry.name in KEEP_IN_VAR:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        say(f"[reset] deleted the contents of {var_dir} (its images stay)")


async def reset(etc_dir: Path, var_dir: Path, run_dir: Path = services.RUN_DIR, *, say=print) -> None:
    await reset_node_half(var_dir, run_dir, say=say)
    remove_files(etc_dir, var_dir, say=say)


def register(sub, parents) -> None:
    p = sub.add_parser("reset", parents=parents,
                       help="Take back what init or join made on this host (services, containers, files)")
    p.add_argument("-f", "--force", action="store_true", help="reset without asking")
    p.add_argument("--etc-dir", default="/etc/kubelab", help=argparse.SUPPRESS)
    p.add_argument("--var-dir", default="/var/lib/kubelab", help=argparse.SUPPRESS)
    p.add_argument("--run-dir", default=str(services.RUN_DIR), help=argparse.SUPPRESS)
    # the node half alone, as before init/join existed (tests and benchmarks use it)
    p.add_argument("--root-dir", default="", help=argparse.SUPPRESS)
    p.add_argument("--runc-root", default="", help=argparse.SUPPRESS)
    p.add_argument("--bridge", default="cni0", help=argparse.SUPPRESS)
    p.add_argument("--all", action="store_true",
                   help="also sweep the whole host for kubelab's containers, mounts and namespaces "
                        "(for a root dir that was deleted while containers ran)")
    p.set_defaults(func=_cmd)


async def _cmd(args) -> int:
    if args.root_dir:
        from worker.kubelet import reset as node_reset
        return await node_reset.run(args)
    if not args.force and sys.stdin.isatty():
        answer = input("[reset] WARNING: the changes kubelab init or join made to this host will be reverted.\n"
                       "[reset] Are you sure you want to proceed? [y/N]: ")
        if answer.strip().lower() not in ("y", "yes"):
            print("error execution phase preflight: aborted by the user", file=sys.stderr)
            return 1
    try:
        await reset(Path(args.etc_dir), Path(args.var_dir), Path(args.run_dir), say=lambda m: print(m, flush=True))
    except (services.ServiceError, RuntimeError, OSError) as e:
        print(f"error execution phase cleanup-node: {e}", file=sys.stderr)
        return 1
    if args.all:
        from worker.kubelet.reset import sweep_host
        done = await sweep_host(bridge=args.bridge)
        print(f"host sweep: killed {done['processes']} processes, unmounted {done['mounts']} mounts, "
              f"deleted {done['netns']} network namespaces")
    return 0
