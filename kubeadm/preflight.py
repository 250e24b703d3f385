"""kubeadm's preflight checks for `kubelab init`: everything is checked, then every failure is
reported at once in kubeadm's words (`[ERROR Port-6443]: Port 6443 is in use`), so that one
run tells the user all there is to fix. Each check is a function returning an error string or
None; init runs them in its preflight phase.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

# kube-apiserver, etcd client and peer, the kubelet's API
PORTS = (6443, 6444, 2379, 2380, 10250)  # gRPC and HTTP API, etcd client and peer, kubelet
BR_NETFILTER = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")


def check_root() -> str | None:
    return None if os.geteuid() == 0 else "[ERROR IsPrivilegedUser]: user is not running as root"


def check_binaries(names=("runc", "conmon", "ip", "iptables")) -> list[str]:
    return [f"[ERROR FileExisting-{n}]: {n} not found in system path (Debian package "
            f"{ {'ip': 'iproute2'}.get(n, n)})" for n in names if shutil.which(n) is None]


def check_port(port: int, host: str = "0.0.0.0") -> str | None:
    with socket.socket() as s:
        # SO_REUSEADDR: a port in TIME_WAIT is free; one with a listener still refuses the bind
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return f"[ERROR Port-{port}]: Port {port} is in use"
    return None


def check_br_netfilter(path: Path = BR_NETFILTER) -> str | None:
    if path.exists():
        return None
    return (f"[ERROR FileContent--proc-sys-net-bridge-bridge-nf-call-iptables]: {path} does not exist "
            "(load the br_netfilter module: modprobe br_netfilter)")


def check_vxlan() -> str | None:
    """Make a VXLAN device in a throwaway network namespace (gone when `unshare` exits)."""
    p = subprocess.run(["unshare", "--net", "--", "ip", "link", "add", "kubelab-probe", "type", "vxlan",
                        "id", "1", "dstport", "8472"], capture_output=True, text=True)
    if p.returncode == 0:
        return None
    return (f"[ERROR SystemVerification]: the kernel cannot make a VXLAN device ({p.stderr.strip()}): "
            "load the vxlan module (modprobe vxlan)")


def check_not_initialized(etc_dir: Path) -> list[str]:
    errs = []
    for f in ("admin.conf", "kubelet.conf"):
        if (etc_dir / f).exists():
            errs.append(f"[ERROR FileAvailable-{str(etc_dir / f).replace('/', '-').lstrip('-')}]: "
                        f"{etc_dir / f} already exists")
    manifests = etc_dir / "manifests"
    if manifests.is_dir() and any(manifests.iterdir()):
        errs.append(f"[ERROR DirAvailable-{str(manifests).replace('/', '-').lstrip('-')}]: {manifests} is not empty")
    return errs


def init_checks(etc_dir: Path, ports=PORTS) -> list[str]:
    errs = [e for e in (check_root(),) if e]
    errs += check_not_initialized(etc_dir)
    errs += check_binaries()
    errs += [e for e in (check_port(p) for p in ports) if e]
    errs += [e for e in (check_br_netfilter(), check_vxlan()) if e]
    return errs


def report(errs: list[str], *, reset_hint: bool) -> str:
    """The message of a failed preflight phase, kubeadm's shape."""
    lines = ["[preflight] Some fatal errors occurred:"] + [f"\t{e}" for e in errs]
    if reset_hint:
        lines.append("this node looks initialized already: run \"kubelab reset\" first")
    return "\n".join(lines)
