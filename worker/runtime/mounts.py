"""mount(2)/umount(2) for the runtime's own mounts: each container's overlayfs root, and each
pod's /dev/shm tmpfs. Direct system calls (ctypes) rather than mount(8): one container start
should not fork a helper per mount."""
from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)

MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
MNT_DETACH = 2


def mount(source: str, target: Path, fstype: str, flags: int = 0, data: str = "") -> None:
    if _libc.mount(source.encode(), str(target).encode(), fstype.encode(), flags, data.encode()) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount {fstype} on {target} ({data}): {os.strerror(e)}")


def umount(target: Path, *, detach: bool = False) -> bool:
    """Unmount target; False when it was not mounted (or does not exist)."""
    if _libc.umount2(str(target).encode(), MNT_DETACH if detach else 0) != 0:
        e = ctypes.get_errno()
        if e in (errno.EINVAL, errno.ENOENT):
            return False
        raise OSError(e, f"umount {target}: {os.strerror(e)}")
    return True


def umount_all(target: Path) -> None:
    """Unmount target until nothing is mounted there, lazily if it is busy."""
    for _ in range(8):
        try:
            if not umount(target):
                return
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise
            umount(target, detach=True)


def mount_overlay(lower: Path, upper: Path, work: Path, target: Path) -> None:
    for p in (lower, upper, work, target):
        if any(c in str(p) for c in ",:"):
            raise ValueError(f"overlayfs cannot take a path with ',' or ':': {p}")
    mount("overlay", target, "overlay", 0, f"lowerdir={lower},upperdir={upper},workdir={work}")


def is_mountpoint(path: Path) -> bool:
    """True when path is a mount point (a pinned namespace file counts: nsfs has its own st_dev)."""
    try:
        return os.stat(path).st_dev != os.stat(Path(path).parent).st_dev or os.path.ismount(path)
    except FileNotFoundError:
        return False
