"""Where `net show` and `net trace` run their commands: a node's network namespace (and, for a
pod, the pod's), its files, and its address. Everything the verbs print is read through here
from the kernel (ip, bridge, iptables-save, /proc/net/nf_conntrack) or from the node's pod
network state (worker/network's files under /var/lib/kubelab/network), never from memory.

Two kinds of node:
- a lab VM (kubelab/lab): commands run inside the VM's mount, UTS and network namespaces
  through nsenter on its supervisor, as `lab shell` runs them; its private trees are read
  through the lab dir on the host;
- this machine, with no lab (a node of a real cluster): the same commands run directly, so
  `kubelab net show` on the node itself shows that node. Other nodes of such a cluster are not
  readable from here: a trace says so at the hop where it would have to read them.
A pod's network namespace is /run/netns/<netns> on its node (worker/network names it); a
command for the pod runs through `nsenter --net=` inside the node's mount namespace.
"""
from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

NETWORK_STATE = "/var/lib/kubelab/network"   # worker/network's state dir under the kubelet root
NETNS_DIR = "/run/netns"
TIMEOUT = 15.0


class NetError(Exception):
    """A failure the CLI prints as `error: ...` and exits 1."""


@dataclass
class Node:
    name: str
    ip: str = ""
    readable: bool = True
    prefix: list[str] = field(default_factory=list)      # how to enter the node (nsenter ...)
    env: dict[str, str] | None = None
    roots: dict[str, str] = field(default_factory=dict)  # node path -> host path

    def argv(self, cmd: list[str], netns: str = "") -> list[str]:
        if netns:
            cmd = ["nsenter", f"--net={NETNS_DIR}/{netns}", "--", *cmd]
        return [*self.prefix, *cmd]

    def run(self, cmd: list[str], netns: str = "", timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
        if not self.readable:
            raise NetError(f"node {self.name} is not readable from here: run the command on it")
        try:
            return subprocess.run(self.argv(cmd, netns), capture_output=True, text=True, timeout=timeout,
                                  env=self.env, check=False, stdin=subprocess.DEVNULL)
        except FileNotFoundError as e:
            return subprocess.CompletedProcess(cmd, 127, "", f"{e.filename}: not installed")
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(cmd, 124, "", f"{' '.join(cmd)}: no answer in {timeout:.0f}s")

    def out(self, cmd: list[str], netns: str = "") -> str:
        """stdout of a command that must work (ip, bridge): its failure names the node."""
        p = self.run(cmd, netns)
        if p.returncode != 0:
            where = f"pod netns {netns} on {self.name}" if netns else self.name
            raise NetError(f"{' '.join(cmd)} in {where} failed: {(p.stderr or p.stdout).strip()}")
        return p.stdout

    def path(self, p: str) -> Path:
        """A path of the node's filesystem as this process reaches it."""
        for inside, outside in self.roots.items():
            if p == inside or p.startswith(inside + "/"):
                return Path(outside + p[len(inside):])
        return Path(p)


class Nodes:
    """The nodes this process can read: the lab's VMs, else only this machine."""

    def __init__(self, nodes: list[Node], lab: bool):
        self.nodes, self.lab = nodes, lab

    def get(self, name: str) -> Node:
        for n in self.nodes:
            if name == n.name or (self.lab and n.name.endswith("-" + name) and name):
                return n
        if self.lab:
            known = ", ".join(n.name for n in self.nodes)
            raise NetError(f'node "{name}" is not a VM of the lab (the lab has: {known})')
        return Node(name=name, readable=False)

    def by_ip(self, ip: str) -> Node | None:
        return next((n for n in self.nodes if n.ip and n.ip == ip), None)

    def name_of(self, ip: str) -> str:
        n = self.by_ip(ip)
        return n.name if n else ""


def local_node() -> Node:
    name = socket.gethostname()
    ip = ""
    try:
        ip = socket.gethostbyname(name)
    except OSError:
        pass
    return Node(name=name, ip=ip)


def discover(lab_dir: str | None = None) -> Nodes:
    """The lab at lab_dir ($KUBELAB_LAB_DIR, /var/lib/kubelab-lab) if one is up, else this machine."""
    from kubelab.lab import cluster, vms
    from kubelab.lab.state import LabError, load
    from kubelab.lab.state import lab_dir as default_dir
    try:
        st = load(default_dir(lab_dir))
    except LabError as e:
        raise NetError(str(e))
    if st is None:
        if lab_dir:
            raise NetError(f"no lab is up (lab dir {lab_dir})")
        return Nodes([local_node()], lab=False)
    nodes = []
    for vm in st.vms:
        if not vms.alive(vm):
            nodes.append(Node(name=vm.name, ip=vm.ip, readable=False))
            continue
        roots = {target: str(Path(vm.dir) / sub) for sub, target in vms.PRIVATE.items()}
        nodes.append(Node(name=vm.name, ip=vm.ip, prefix=cluster.enter_argv(vm, []),
                          env=cluster.vm_env(vm), roots=roots))
    return Nodes(nodes, lab=True)


def is_root() -> bool:
    return os.geteuid() == 0
