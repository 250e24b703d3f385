"""The pod sandbox's runtime half: what a pod's containers share besides the network.

The network namespace is made by the node's network code (worker/network) and only joined
here. IPC and UTS namespaces are made here, once per pod, and *pinned* instead of being held
by a pause process: `unshare --ipc=FILE --uts=FILE hostname POD` creates both namespaces,
sets the hostname inside, and bind-mounts the namespace files onto FILE (as `ip netns add`
does for network namespaces, and as CRI-O's pinns does). A pinned namespace lives with no
process in it, survives kubelet and runtime restarts, and goes when the file is unmounted.
Every container of the pod joins the pins through runc's `linux.namespaces[].path`.

Also per pod: a tmpfs mounted as every container's /dev/shm (shared POSIX shared memory, as
the sandbox's shm in containerd) and the generated /etc/hostname, /etc/hosts and
/etc/resolv.conf bind-mounted into each container. hostNetwork pods share the host's network
and UTS namespaces (hostname = the node's), but still get a private IPC namespace.

Everything lives in `<run_dir>/sandboxes/<pod uid>/`, a tmpfs on real hosts (/run), so a
reboot forgets pins exactly when the kernel forgets the namespaces.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

from . import mounts
from .proc import run

SHM_SIZE = 64 * 1024 * 1024


@dataclass(frozen=True)
class Sandbox:
    pod_uid: str
    pod_name: str
    namespace: str
    hostname: str
    dir: Path
    host_network: bool

    @property
    def ipc(self) -> Path:
        return self.dir / "ipc"

    @property
    def uts(self) -> Path | None:
        return None if self.host_network else self.dir / "uts"

    @property
    def shm(self) -> Path:
        return self.dir / "shm"

    def file(self, name: str) -> Path:
        return self.dir / name


def pod_hostname(pod_name: str) -> str:
    # a hostname is at most 64 bytes; Kubernetes truncates to 63 and trims a trailing - or .
    return pod_name[:63].rstrip("-.") or "pod"


def hosts_file(hostname: str, pod_ip: str | None) -> str:
    lines = ["# Kubernetes-managed hosts file (kubelab).", "127.0.0.1\tlocalhost",
             "::1\tlocalhost ip6-localhost ip6-loopback", "fe00::0\tip6-localnet",
             "fe00::1\tip6-allnodes", "fe00::2\tip6-allrouters"]
    if pod_ip:
        lines.append(f"{pod_ip}\t{hostname}")
    return "\n".join(lines) + "\n"


class SandboxManager:
    def __init__(self, run_dir: Path, *, unshare: str = "unshare"):
        self.dir = Path(run_dir) / "sandboxes"
        self.unshare = unshare
        self._locks: dict[str, asyncio.Lock] = {}

    def path(self, pod_uid: str) -> Path:
        if not pod_uid or "/" in pod_uid or pod_uid.startswith("."):
            raise ValueError(f"invalid pod uid {pod_uid!r}")
        return self.dir / pod_uid

    async def ensure(self, pod_uid: str, pod_name: str, namespace: str, *, host_network: bool,
                     pod_ip: str | None = None, resolv_conf: str | None = None) -> Sandbox:
        """The pod's sandbox, made on first use; later calls reuse it (idempotent)."""
        d = self.path(pod_uid)
        hostname = socket.gethostname() if host_network else pod_hostname(pod_name)
        sb = Sandbox(pod_uid, pod_name, namespace, hostname, d, host_network)
        lock = self._locks.setdefault(pod_uid, asyncio.Lock())
        async with lock:
            d.mkdir(parents=True, exist_ok=True)
            meta = d / "sandbox.json"
            if meta.exists():
                old = json.loads(meta.read_text())
                pod_ip = pod_ip or old.get("pod_ip")  # later containers need not repeat it
                if old.get("host_network") != host_network:
                    raise ValueError(f"pod {namespace}/{pod_name}: sandbox exists with hostNetwork="
                                     f"{old.get('host_network')}")
            if not mounts.is_mountpoint(sb.ipc) or (sb.uts and not mounts.is_mountpoint(sb.uts)):
                await self._pin(sb)
            if not mounts.is_mountpoint(sb.shm):
                sb.shm.mkdir(exist_ok=True)
                mounts.mount("shm", sb.shm, "tmpfs", mounts.MS_NOSUID | mounts.MS_NODEV | mounts.MS_NOEXEC,
                             f"mode=1777,size={SHM_SIZE}")
            _write(d / "hostname", hostname + "\n")
            if host_network:
                _write(d / "hosts", _read("/etc/hosts") or hosts_file(hostname, None))
            else:
                _write(d / "hosts", hosts_file(hostname, pod_ip))
            if resolv_conf is not None or not (d / "resolv.conf").exists():
                _write(d / "resolv.conf", resolv_conf if resolv_conf is not None else _read("/etc/resolv.conf"))
            _write(meta, json.dumps({**asdict(sb), "dir": str(d), "pod_ip": pod_ip}))
        return sb

    async def _pin(self, sb: Sandbox) -> None:
        for p in (sb.ipc, sb.uts):
            if p is not None:
                mounts.umount_all(p)
                p.touch()
        argv = [self.unshare, f"--ipc={sb.ipc}"]
        if sb.uts is not None:
            argv += [f"--uts={sb.uts}", "hostname", sb.hostname]
        else:
            argv += ["true"]
        await run(*argv)

    def get(self, pod_uid: str) -> Sandbox | None:
        meta = self.path(pod_uid) / "sandbox.json"
        try:
            d = json.loads(meta.read_text())
        except (OSError, ValueError):
            return None
        d["dir"] = Path(d["dir"])
        d.pop("pod_ip", None)
        return Sandbox(**d)

    def list(self) -> list[str]:
        return sorted(p.name for p in self.dir.iterdir()) if self.dir.exists() else []

    async def remove(self, pod_uid: str) -> None:
        """Unpin the namespaces, unmount the pod's shm and forget the sandbox (idempotent)."""
        d = self.path(pod_uid)
        lock = self._locks.setdefault(pod_uid, asyncio.Lock())
        async with lock:
            for name in ("ipc", "uts", "shm"):
                mounts.umount_all(d / name)
            shutil.rmtree(d, ignore_errors=True)
        self._locks.pop(pod_uid, None)


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _write(path: Path, text: str) -> None:
    # rewrite in place: the file may be bind-mounted into running containers, and a
    # rename would leave them looking at the old inode
    if path.exists() and path.read_text() == text:
        return
    with open(path, "a+") as f:
        f.seek(0)
        f.truncate()
        f.write(text)
    os.chmod(path, 0o644)
