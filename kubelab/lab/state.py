"""The lab's record on disk: which VMs, links and rules `lab up` made, so that status, shell,
partition and down work from another process. Written before each thing is made, so that a
failed or interrupted `up` can always be taken down."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_LAB_DIR = Path("/var/lib/kubelab-lab")
STATE_FILE = "lab.json"


class LabError(Exception):
    """A lab failure the CLI prints as `error: ...` and exits 1."""


@dataclass
class VM:
    name: str              # also its hostname, netns name and the Node name init/join will use
    role: str              # master | worker
    ip: str
    veth: str              # host end of the VM's link, a port of the lab bridge
    dir: str               # the VM's private trees and supervisor log
    pid: int = 0           # the supervisor
    mnt_ns: str = ""       # "mnt:[inode]" of the supervisor, to tell a reused pid apart
    partitioned: bool = False

    @property
    def netns(self) -> str:
        return self.name


@dataclass
class LabState:
    bridge: str
    subnet: str
    prefix: str
    bridge_ip: str
    vms: list[VM] = field(default_factory=list)
    created_dirs: list[str] = field(default_factory=list)  # host mount points made for the VMs
    rules: list[list[str]] = field(default_factory=list)   # iptables filter rules (without -A/-D)
    bare: bool = True                                       # VMs only: no init/join run by `up`
    pod_cidr: str = "10.244.0.0/16"
    service_cidr: str = "10.96.0.0/12"
    routes: list[list[str]] = field(default_factory=list)  # host routes [dst, via] on the bridge
    kubeconfig: str = ""          # the admin config `up` wrote for the host's CLI (~/.kubelab/config)
    kubeconfig_sha256: str = ""   # of what up wrote: down leaves a config replaced since alone
    kubeconfig_backup: str = ""   # what was there before, restored by `down`
    cgroup_parents: list[str] = field(default_factory=list)  # /sys/fs/cgroup/*/kubelab dirs up made

    def vm(self, name: str) -> VM:
        for vm in self.vms:
            if name in (vm.name, vm.name.removeprefix(self.prefix + "-")):
                return vm
        known = ", ".join(v.name for v in self.vms)
        raise LabError(f'lab VM "{name}" not found (the lab has: {known})')


def lab_dir(arg: str | None = None) -> Path:
    return Path(arg or os.environ.get("KUBELAB_LAB_DIR") or DEFAULT_LAB_DIR)


def load(d: Path) -> LabState | None:
    try:
        raw = json.loads((d / STATE_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise LabError(f"cannot read the lab state {d / STATE_FILE}: {e} (remove it by hand if no lab is up)")
    vms = [VM(**v) for v in raw.pop("vms", [])]
    return LabState(**raw, vms=vms)


def save(d: Path, st: LabState) -> None:
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(asdict(st), indent=1))
    os.replace(tmp, d / STATE_FILE)
