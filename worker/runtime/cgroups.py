"""The container cgroups the runtime asks runc for, read and cleaned up by the runtime.

runc creates `<cgroupsPath>` under every hierarchy (cgroup v1, as on this machine's hybrid
mode) or in the unified tree (cgroup v2, as on current Ubuntu/Debian VMs). The runtime names
them `<parent>/<pod uid>/<container id>` so a pod's containers sit under one pod cgroup, as
the kubelet's do under kubepods. The OOM killer's count is read here: v1
`memory.oom_control` (oom_kill N), v2 `memory.events` (oom_kill N).
"""
from __future__ import annotations

import errno
import os
import time
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def is_v2() -> bool:
    return (CGROUP_ROOT / "cgroup.controllers").exists()


def hierarchies() -> list[Path]:
    """Mount points of every cgroup hierarchy (v1 controllers, named and unified ones)."""
    out = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return [CGROUP_ROOT]
    for line in lines:
        pre, _, post = line.partition(" - ")
        fstype = post.split(" ", 1)[0]
        if fstype in ("cgroup", "cgroup2"):
            out.append(Path(pre.split(" ")[4]))
    return out or [CGROUP_ROOT]


def memory_dir(cgroup_path: str) -> Path:
    rel = cgroup_path.lstrip("/")
    return CGROUP_ROOT / rel if is_v2() else CGROUP_ROOT / "memory" / rel


def oom_kills(cgroup_path: str) -> int:
    """How many processes the OOM killer killed in this cgroup (0 if unknown)."""
    d = memory_dir(cgroup_path)
    for name in ("memory.events", "memory.oom_control"):
        try:
            for line in (d / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            continue
    return 0


def remove(cgroup_path: str, *, timeout: float = 5.0) -> list[Path]:
    """rmdir the cgroup (children first) in every hierarchy; return what could not go."""
    rel = cgroup_path.strip("/")
    if not rel:
        raise ValueError("refusing to remove the root cgroup")
    left = []
    for h in hierarchies():
        top = h / rel
        if not top.is_dir():
            continue
        dirs = sorted((Path(d) for d, _, _ in os.walk(top)), key=lambda p: len(p.parts), reverse=True)
        for d in dirs:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as e:  # EBUSY while the last task is still leaving
                    if e.errno != errno.EBUSY or time.monotonic() > deadline:
                        left.append(d)
                        break
                    time.sleep(0.05)
    return left
