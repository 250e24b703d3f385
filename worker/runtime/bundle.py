"""The OCI runtime bundle of one container: config.json, as runc reads it.

Pure functions from what the kubelet asked for (command/args/env/mounts/limits), what the
image says (entrypoint, cmd, env, working dir, user) and what the pod shares (the sandbox's
namespaces, /dev/shm, /etc files) to the runtime spec. The root filesystem is the overlayfs
mount the runtime makes in the bundle (rootfs/), so the spec only points at it.
Kubernetes' rules for command and args: command replaces the image's entrypoint (and drops
its cmd); args replace the image's cmd.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .images import ImageConfig

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CPU_PERIOD = 100_000
# the capabilities containerd and Docker give a container by default
DEFAULT_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
                "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
                "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]
ALL_CAPS = DEFAULT_CAPS + [
    "CAP_DAC_READ_SEARCH", "CAP_LINUX_IMMUTABLE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_IPC_LOCK",
    "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_LEASE",
    "CAP_AUDIT_CONTROL", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ"]
# capability(7) numbers, to read the host's bounding set
_CAP_BITS = {name: bit for bit, name in enumerate([
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT",
    "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
    "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ"])}


def bounding_caps() -> set[str]:
    """The capabilities this process may hand on. A privileged container gets all of them, as
    containerd does: runc refuses a capability outside the bounding set ("unable to apply caps"),
    and a node that is itself a container (a CI sandbox) often lacks CAP_SYS_RESOURCE."""
    try:
        with open("/proc/self/status") as f:
            line = next(ln for ln in f if ln.startswith("CapBnd:"))
    except (OSError, StopIteration):
        return set(ALL_CAPS)
    mask = int(line.split()[1], 16)
    return {name for name, bit in _CAP_BITS.items() if mask >> bit & 1}


MASKED_PATHS = ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware"]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


class SpecError(ValueError):
    """The container cannot be described to runc (no command, unknown user...)."""


@dataclass(frozen=True)
class Shared:
    """What the pod sandbox gives every container."""
    ipc_path: Path
    uts_path: Path | None          # None: the host's UTS namespace (hostNetwork)
    netns_path: str | None         # None: the host's network namespace
    shm_dir: Path
    etc_files: dict[str, Path]     # /etc/hostname, /etc/hosts, /etc/resolv.conf -> host file


def process_args(image: ImageConfig, command: list[str], args: list[str]) -> list[str]:
    if command:
        argv = list(command) + list(args)
    else:
        argv = list(image.entrypoint) + (list(args) if args else list(image.cmd))
    if not argv:
        raise SpecError("no command specified: the image has no entrypoint or cmd, and the container no command")
    return argv


def process_env(image: ImageConfig, env: dict[str, str], hostname: str) -> list[str]:
    merged = {"PATH": DEFAULT_PATH, "HOSTNAME": hostname}
    merged.update(image.env)
    merged.update(env)
    return [f"{k}={v}" for k, v in merged.items()]


def resolve_user(user: str, rootfs: Path) -> tuple[int, int]:
    """uid, gid for an image's User ("", "1000", "1000:1000", "nobody", "www:www")."""
    if not user:
        return 0, 0
    name, _, group = user.partition(":")
    passwd = _table(rootfs / "etc" / "passwd")
    uid = gid = None
    if name.isdigit():
        uid = int(name)
        gid = next((int(f[3]) for f in passwd if len(f) > 3 and f[2] == name and f[3].isdigit()), 0)
    else:
        for f in passwd:
            if f[0] == name and len(f) > 3:
                uid, gid = int(f[2]), int(f[3])
        if uid is None:
            raise SpecError(f'unable to find user {name}: no matching entries in passwd file')
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            found = [int(f[2]) for f in _table(rootfs / "etc" / "group") if f[0] == group and len(f) > 2]
            if not found:
                raise SpecError(f'unable to find group {group}: no matching entries in group file')
            gid = found[0]
    return uid, gid


def _table(path: Path) -> list[list[str]]:
    try:
        return [ln.split(":") for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
    except OSError:
        return []


def runtime_spec(*, args: list[str], env: list[str], cwd: str, uid: int, gid: int, rootfs: Path,
                 shared: Shared, mounts: list[tuple[str, str, bool]], cgroups_path: str,
                 memory_bytes: int | None = None, cpu_millis: int | None = None,
                 privileged: bool = False, annotations: dict[str, str] | None = None, tty: bool = False) -> dict:
    caps = [c for c in ALL_CAPS if c in bounding_caps()] if privileged else DEFAULT_CAPS
    spec_mounts = [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "bind", "source": str(shared.shm_dir), "options": ["rbind", "rw"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "rw" if privileged else "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "rw" if privileged else "ro"]},
    ]
    if shared.netns_path is None:
        # without a network namespace of its own the container may not mount a fresh sysfs
        spec_mounts[5] = {"destination": "/sys", "type": "bind", "source": "/sys",
                          "options": ["rbind", "nosuid", "noexec", "nodev", "rw" if privileged else "ro"]}
    for dest, host in shared.etc_files.items():
        spec_mounts.append({"destination": dest, "type": "bind", "source": str(host), "options": ["rbind", "rw"]})
    for host, dest, read_only in mounts:
        spec_mounts.append({"destination": dest, "type": "bind", "source": str(host),
                            "options": ["rbind", "rprivate", "ro" if read_only else "rw"]})

    namespaces: list[dict] = [{"type": "pid"}, {"type": "mount"}, {"type": "ipc", "path": str(shared.ipc_path)}]
    if shared.uts_path is not None:
        namespaces.append({"type": "uts", "path": str(shared.uts_path)})
    if shared.netns_path is not None:
        namespaces.append({"type": "network", "path": shared.netns_path})

    resources: dict = {"devices": [{"allow": privileged, "access": "rwm"}]}
    if memory_bytes is not None:
        # swap = memory: the container cannot dodge its limit by swapping, as kubelet sets it
        resources["memory"] = {"limit": int(memory_bytes), "swap": int(memory_bytes)}
    if cpu_millis is not None:
        resources["cpu"] = {"shares": max(2, cpu_millis * 1024 // 1000),
                            "quota": max(1000, cpu_millis * CPU_PERIOD // 1000), "period": CPU_PERIOD}

    linux: dict = {"namespaces": namespaces, "resources": resources, "cgroupsPath": cgroups_path}
    if not privileged:
        linux["maskedPaths"] = MASKED_PATHS
        linux["readonlyPaths"] = READONLY_PATHS
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": tty,  # conmon -t hands runc a console socket and keeps the master
            "user": {"uid": uid, "gid": gid},
            "args": args,
            "env": env,
            "cwd": cwd or "/",
            "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
            "noNewPrivileges": False,
            "oomScoreAdj": 0,
        },
        "root": {"path": str(rootfs), "readonly": False},
        "mounts": spec_mounts,
        "annotations": annotations or {},
        "linux": linux,
    }
