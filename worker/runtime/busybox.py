"""An offline busybox image for tests, examples and the lab: Debian's static /bin/busybox
(package busybox-static) plus one symlink per applet, a minimal /etc, and `sh` as the command.
Labs are often offline and no public registry is reachable from CI, so this is how a node gets
its first image without a pull. The layer is a tarball written here (deterministic: fixed
mtimes, so rebuilding yields the same digest); umoci wraps it into an image in a scratch OCI
layout and the store copies it in under its name.
"""
from __future__ import annotations

import io
import shutil
import struct
import subprocess
import tarfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from .proc import run

if TYPE_CHECKING:
    from .images import ImageInfo, ImageStore

BUSYBOX = Path("/bin/busybox")
EPOCH = "1970-01-01T00:00:00Z"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DIRS = {"bin": 0o755, "dev": 0o755, "etc": 0o755, "home": 0o755, "proc": 0o755, "root": 0o700,
        "sys": 0o755, "tmp": 0o1777, "usr": 0o755, "usr/bin": 0o755, "var": 0o755, "var/www": 0o755}
FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n",
    "etc/group": "root:x:0:\nnobody:x:65534:\n",
    "var/www/index.html": "hello from kubelab busybox\n",
}


# Debian's busybox-static (1.35) is built without wget's -T (timeout) and crashes on it, while
# the busybox image people pull has it, and lessons and checks type `wget -T 5 URL`. Where the
# binary lacks it, /bin/wget is a wrapper: the same command line, -T N run as `timeout N`. The
# wrapper is the lab shell's busybox shim itself (one script for both, it tells the two jobs
# apart by the name it runs under), read from kubelab's package data without importing the lab.
WGET_WRAPPER_PATH = Path(__file__).resolve().parents[2] / "kubelab" / "lab" / "bin" / "busybox"
WGET_WRAPPER = WGET_WRAPPER_PATH.read_text()


def wget_has_timeout(busybox: Path = BUSYBOX) -> bool:
    p = subprocess.run([str(busybox), "wget", "--help"], capture_output=True, text=True)
    return "-T SEC" in p.stdout + p.stderr


class BusyboxError(Exception):
    pass


def is_static_elf(path: Path) -> bool:
    """True when the ELF binary has no program interpreter (PT_INTERP), i.e. runs alone."""
    data = path.read_bytes()[:65536]
    if data[:4] != b"\x7fELF" or data[4] != 2:  # 64-bit only; Debian's amd64/arm64 builds
        return False
    endian = "<" if data[5] == 1 else ">"
    phoff, = struct.unpack_from(endian + "Q", data, 0x20)
    phentsize, phnum = struct.unpack_from(endian + "HH", data, 0x36)
    for i in range(phnum):
        ptype, = struct.unpack_from(endian + "I", data, phoff + i * phentsize)
        if ptype == 3:
            return False
    return True


def applets(busybox: Path = BUSYBOX) -> list[str]:
    out = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True).stdout
    return sorted({a.strip() for a in out.split() if a.strip() and a.strip() != "busybox"})


def layer_tar(busybox: Path = BUSYBOX) -> bytes:
    """The image's single layer as an uncompressed tarball."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add(info: tarfile.TarInfo, data: bytes | None = None) -> None:
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "root", "root"
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
        for d, mode in DIRS.items():
            ti = tarfile.TarInfo(d)
            ti.type, ti.mode = tarfile.DIRTYPE, mode
            add(ti)
        binary = busybox.read_bytes()
        ti = tarfile.TarInfo("bin/busybox")
        ti.mode, ti.size = 0o755, len(binary)
        add(ti, binary)
        wrap_wget = not wget_has_timeout(busybox)
        if wrap_wget:
            data = WGET_WRAPPER.encode()
            ti = tarfile.TarInfo("bin/wget")
            ti.mode, ti.size = 0o755, len(data)
            add(ti, data)
        for a in applets(busybox):
            if a == "wget" and wrap_wget:
                continue
            ti = tarfile.TarInfo(f"bin/{a}")
            ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, "busybox", 0o777
            add(ti)
        for name, text in FILES.items():
            data = text.encode()
            ti = tarfile.TarInfo(name)
            ti.mode, ti.size = 0o644, len(data)
            add(ti, data)
    return buf.getvalue()


async def build_busybox(store: "ImageStore", ref: str = "docker.io/library/busybox:latest",
                        *, busybox: Path = BUSYBOX) -> "ImageInfo":
    if not busybox.exists():
        raise BusyboxError(f"{busybox} not found: install Debian's busybox-static package")
    if not is_static_elf(busybox):
        raise BusyboxError(f"{busybox} is dynamically linked: install busybox-static (not busybox)")
    store.layout.mkdir(parents=True, exist_ok=True)
    work = store.layout / f".build-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    try:
        (work / "layer.tar").write_bytes(layer_tar(busybox))
        image = f"{work / 'oci'}:busybox"
        await run("umoci", "init", "--layout", str(work / "oci"))
        await run("umoci", "new", "--image", image)
        await run("umoci", "raw", "add-layer", "--no-history", "--image", image, str(work / "layer.tar"))
        await run("umoci", "config", "--no-history", "--image", image, "--created", EPOCH,
                  "--author", "kubelab", "--config.cmd", "sh", "--config.env", PATH_ENV)
        return await store.add_from_layout(f"oci:{work / 'oci'}:busybox", ref)
    finally:
        shutil.rmtree(work, ignore_errors=True)
