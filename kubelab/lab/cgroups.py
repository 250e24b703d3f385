"""The lab VMs' container cgroups, taken back by `lab down`.

A lab VM has no cgroup namespace of its own (as a VM's systemd would give it a whole tree):
runc in a VM makes its containers' cgroups in the host's hierarchies, `<parent>/<pod uid>/<id>`
under the runtime's --cgroup-parent (/kubelab). `kubelab reset` in the VM removes them; what
a stuck or killed runtime leaves, down finds by the lab's own marks (the cgroups its
processes are in, and those its runtimes recorded in each container's meta.json) and removes
leaf first, never a cgroup of a container outside the lab."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

PARENT = "kubelab"      # the runtime's default --cgroup-parent, as the lab's nodes run it
GONE_TIMEOUT = 10.0


def hierarchies() -> list[Path]:
    """Mount points of every cgroup hierarchy (v1 controllers, named ones, the unified one)."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if right.split()[:1] and right.split()[0] in ("cgroup", "cgroup2"):
                out.append(Path(left.split()[4]))
    return out


def missing_parents() -> list[str]:
    """The <hierarchy>/kubelab dirs that do not exist yet: a lab that makes them removes them."""
    return [str(h / PARENT) for h in hierarchies() if not (h / PARENT).exists()]


def of_processes(pids: set[int]) -> set[str]:
    """The /kubelab/... cgroup paths these processes are in."""
    found = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cgroup") as f:
                for line in f:
                    path = line.rstrip("\n").split(":", 2)[-1]
                    if path.startswith(f"/{PARENT}/"):
                        found.add(path)
        except OSError:
            continue
    return found


def of_vm_runtimes(vm_dirs: list[str]) -> set[str]:
    """The cgroup paths the VMs' runtimes recorded for their containers (exited ones too)."""
    found = set()
    for d in vm_dirs:
        for meta in Path(d, "var-lib-kubelab", "containers").glob("*/meta.json"):
            try:
                path = json.loads(meta.read_text()).get("cgroup_path", "")
            except (OSError, ValueError):
                continue
            if isinstance(path, str) and path.startswith(f"/{PARENT}/"):
                found.add(path)
    return found


def remove(paths: set[str], parents: list[str]) -> list[str]:
    """rmdir each path and its now-empty ancestors below /kubelab in every hierarchy, then the
    /kubelab dirs `up` found missing if nothing else uses them; returns what would not go."""
    dirs: set[Path] = set()
    for h in hierarchies():
        for p in paths:
            rel = Path(p.strip("/"))
            while rel.parts and rel != Path(PARENT):
                dirs.add(h / rel)
                rel = rel.parent
    left = []
    deadline = time.monotonic() + GONE_TIMEOUT
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        if not d.is_dir():
            continue
        for sub in sorted((s for s in d.rglob("*") if s.is_dir()), key=lambda s: len(s.parts), reverse=True):
            _rmdir(sub, deadline)
        if not _rmdir(d, deadline) and d.is_dir():
            left.append(str(d))
    for parent in parents:
        try:
            os.rmdir(parent)  # refused while another node on the host has pods under it: fine
        except OSError:
            pass
    return left


def _rmdir(d: Path, deadline: float) -> bool:
    while True:
        try:
            d.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError as e:
            # EBUSY while the kernel still lets go of a killed task: retry until the deadline
            if e.errno != 16 or time.monotonic() > deadline:
                return False
            time.sleep(0.05)
