"""The node's image store: what `crictl images` lists and what PullImage fills.

Images live under `<root>/images` as one OCI image layout (index.json names each image by its
normalized reference in the `org.opencontainers.image.ref.name` annotation). skopeo moves
images in (registry pull, docker-archive/oci-archive import); umoci unpacks an image once per
manifest digest into `<root>/images/unpacked/<hex>/rootfs`, the read-only lower directory that
every container of that image shares through overlayfs (see bundle.py): nothing is copied per
container. Mutations take one lock (in process and, with flock, across processes such as
`kubelab image import` beside a running kubelet), so blob garbage collection never races a
copy in progress; like the kubelet's default (serializeImagePulls), pulls run one at a time.
"""
from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import tarfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Callable, Iterable

from . import refs
from .proc import CommandError, run

REF_ANNOTATION = "org.opencontainers.image.ref.name"
MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v2+json")
POLICY = Path("/etc/containers/policy.json")


class ImageError(Exception):
    """Base of the image store's errors."""


class ImageNotFound(ImageError):
    def __init__(self, ref: str):
        self.ref = ref
        super().__init__(f'image "{ref}" not found')


class ImagePullError(ImageError):
    """A failed pull; `message` is the registry's (through skopeo), shown as ErrImagePull."""

    def __init__(self, ref: str, message: str):
        self.ref, self.message = ref, message
        super().__init__(f'failed to pull image "{ref}": {message}')


class ImageImportError(ImageError):
    pass


@dataclass(frozen=True)
class ImageInfo:
    ref: str          # normalized: docker.io/library/busybox:latest
    digest: str       # manifest digest (the repo digest a registry would show)
    id: str           # config digest (the image ID, as crictl/docker show it)
    size: int         # bytes: manifest + config + compressed layers


@dataclass(frozen=True)
class ImageConfig:
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    working_dir: str = ""
    user: str = ""


class ImageStore:
    def __init__(self, root: Path, *, skopeo: str = "skopeo", umoci: str = "umoci"):
        self.root = Path(root)
        self.layout = self.root / "images"
        self.unpacked = self.layout / "unpacked"
        self.skopeo, self.umoci = skopeo, umoci
        self._lock = asyncio.Lock()
        self._unpack_locks: dict[str, asyncio.Lock] = {}

    # ---- reading the layout ---------------------------------------------------------------

    def _ensure_layout(self) -> None:
        (self.layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        if not (self.layout / "oci-layout").exists():
            _write_json(self.layout / "oci-layout", {"imageLayoutVersion": "1.0.0"})
        if not (self.layout / "index.json").exists():
            _write_json(self.layout / "index.json", {"schemaVersion": 2, "manifests": []})

    def _index(self) -> dict:
        path = self.layout / "index.json"
        for attempt in range(20):  # skopeo rewrites index.json in place: retry a torn read
            try:
                return json.loads(path.read_text())
            except FileNotFoundError:
                return {"schemaVersion": 2, "manifests": []}
            except ValueError:
                if attempt == 19:
                    raise
                time.sleep(0.05)
        raise AssertionError("unreachable")

    def _blob(self, digest: str) -> Path:
        algo, _, hexd = digest.partition(":")
        return self.layout / "blobs" / algo / hexd

    def _read_blob_json(self, digest: str) -> dict:
        return json.loads(self._blob(digest).read_text())

    def _entries(self) -> list[tuple[str, dict]]:
        """(ref, manifest descriptor) for every named image in the layout."""
        out = []
        for desc in self._index().get("manifests", []):
            name = desc.get("annotations", {}).get(REF_ANNOTATION)
            if name:
                out.append((name, desc))
        return out

    def _info(self, ref: str, desc: dict) -> ImageInfo:
        manifest = self._read_blob_json(desc["digest"])
        size = desc.get("size", 0) + manifest["config"].get("size", 0) + sum(
            layer.get("size", 0) for layer in manifest.get("layers", []))
        return ImageInfo(ref=ref, digest=desc["digest"], id=manifest["config"]["digest"], size=size)

    def list(self) -> list[ImageInfo]:
        return sorted((self._info(r, d) for r, d in self._entries()), key=lambda i: i.ref)

    async def status(self, ref: str) -> ImageInfo | None:
        """get() as a coroutine, the shape the kubelet calls (the remote store needs a round trip)."""
        return self.get(ref)

    def get(self, ref: str) -> ImageInfo | None:
        """The local image named ref (any spelling), or by image ID / digest (a unique prefix
        of at least 4 hex digits, with or without `sha256:`); None when absent."""
        found = self._find(ref)
        return found[0] if found else None

    def _find(self, ref: str) -> list[ImageInfo]:
        entries = self._entries()
        try:
            name = refs.normalize(ref)
        except refs.InvalidReference:
            name = None
        if name:
            exact = [self._info(r, d) for r, d in entries if r == name]
            if exact:
                return exact
        h = ref.removeprefix("sha256:")
        if len(h) >= 4 and all(c in "0123456789abcdef" for c in h):
            infos = [self._info(r, d) for r, d in entries]
            return [i for i in infos if i.id.removeprefix("sha256:").startswith(h)
                    or i.digest.removeprefix("sha256:").startswith(h)]
        return []

    def _require(self, ref: str) -> ImageInfo:
        info = self.get(ref)
        if info is None:
            raise ImageNotFound(ref)
        return info

    def config(self, ref: str) -> ImageConfig:
        info = self._require(ref)
        cfg = self._read_blob_json(info.id).get("config") or {}
        env: dict[str, str] = {}
        for kv in cfg.get("Env") or []:
            k, _, v = kv.partition("=")
            env[k] = v
        return ImageConfig(entrypoint=list(cfg.get("Entrypoint") or []), cmd=list(cfg.get("Cmd") or []),
                           env=env, working_dir=cfg.get("WorkingDir") or "", user=cfg.get("User") or "")

    # ---- changing the layout ----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def locked(self) -> AsyncIterator[None]:
        """Exclusive use of the layout, in this process and against other processes."""
        async with self._lock:
            self._ensure_layout()
            fd = os.open(self.layout / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        await asyncio.sleep(0.1)
                yield
            finally:
                os.close(fd)  # releases the flock

    def _skopeo(self, *args: str) -> list[str]:
        argv = [self.skopeo]
        if not POLICY.exists():  # a machine without containers-common: accept anything, as before
            argv.append("--insecure-policy")
        return argv + ["copy", *args]

    def _dest(self, ref: str) -> str:
        return f"oci:{self.layout}:{ref}"

    async def pull(self, ref: str, *, insecure_registries: Iterable[str] = (),
                   progress: Callable[[str], None] | None = None) -> ImageInfo:
        """Copy ref from its registry into the store. Loopback registries and the ones listed
        in insecure_registries are reached over plain HTTP / without TLS verification."""
        try:
            parsed = refs.parse(ref)
        except refs.InvalidReference as e:
            raise ImagePullError(ref, str(e)) from None
        name = str(parsed)
        args = []
        if parsed.domain in set(insecure_registries) or refs.is_loopback_registry(parsed.domain):
            args.append("--src-tls-verify=false")
        if progress is None:
            args.append("--quiet")
        async with self.locked():
            try:
                # a registry is asked by digest alone when both are given (as docker does)
                source = f"{parsed.repository}@{parsed.digest}" if parsed.digest else name
                await run(*self._skopeo(*args, f"docker://{source}", self._dest(name)),
                          on_line=progress)
            except CommandError as e:
                raise ImagePullError(name, e.message) from None
            self._gc()
        return self._require(name)

    async def import_archive(self, path: Path) -> list[ImageInfo]:
        """Load a docker-archive (`docker save`) or oci-archive tarball, keeping its names."""
        path = Path(path)
        sources = _archive_sources(path)
        out = []
        async with self.locked():
            for source, name in sources:
                try:
                    await run(*self._skopeo("--quiet", source, self._dest(name)))
                except CommandError as e:
                    raise ImageImportError(f"importing {path}: {e.message}") from None
                out.append(name)
            self._gc()
        return [self._require(n) for n in out]

    async def add_from_layout(self, source: str, ref: str) -> ImageInfo:
        """Copy an image from any skopeo source (e.g. `oci:/dir:tag`) under the name ref."""
        name = refs.normalize(ref)
        async with self.locked():
            await run(*self._skopeo("--quiet", source, self._dest(name)))
            self._gc()
        return self._require(name)

    async def remove(self, ref: str) -> list[ImageInfo]:
        """Untag ref (or every name of an image ID), then collect the blobs and unpacked
        rootfs nothing names any more; a rootfs still mounted by a container is kept."""
        async with self.locked():
            victims = self._find(ref)
            if not victims:
                raise ImageNotFound(ref)
            names = {v.ref for v in victims}
            index = self._index()
            index["manifests"] = [d for d in index.get("manifests", [])
                                  if d.get("annotations", {}).get(REF_ANNOTATION) not in names]
            _write_json(self.layout / "index.json", index)
            self._gc()
        return victims

    def _gc(self) -> None:
        """Delete blobs no manifest in index.json reaches, and unused unpacked rootfs dirs."""
        index = self._index()
        named = [d for d in index.get("manifests", []) if d.get("annotations", {}).get(REF_ANNOTATION)]
        if len(named) != len(index.get("manifests", [])):
            # skopeo leaves the previous image of a moved tag in the index, unnamed: drop it
            index["manifests"] = named
            _write_json(self.layout / "index.json", index)
        keep: set[str] = set()
        live_manifests = set()
        for desc in named:
            keep.add(desc["digest"])
            live_manifests.add(desc["digest"])
            try:
                m = self._read_blob_json(desc["digest"])
            except (OSError, ValueError):
                continue
            for d in [m.get("config", {})] + m.get("layers", []) + m.get("manifests", []):
                if d.get("digest"):
                    keep.add(d["digest"])
        blobs = self.layout / "blobs" / "sha256"
        for p in blobs.iterdir() if blobs.exists() else ():
            if f"sha256:{p.name}" not in keep:
                p.unlink(missing_ok=True)
        if self.unpacked.exists():
            mounted = _mount_options()
            for d in self.unpacked.iterdir():
                if d.name.startswith(".") or f"sha256:{d.name}" in live_manifests:
                    continue
                if str(d) + "/" in mounted:
                    continue
                shutil.rmtree(d, ignore_errors=True)

    # ---- unpacking for containers ----------------------------------------------------------

    async def rootfs(self, ref: str) -> Path:
        """The unpacked, shared, read-only rootfs of ref (unpacked on first use)."""
        info = self._require(ref)
        hexd = info.digest.removeprefix("sha256:")
        target = self.unpacked / hexd
        if (target / "rootfs").is_dir():
            return target / "rootfs"
        lock = self._unpack_locks.setdefault(hexd, asyncio.Lock())
        async with lock:
            if (target / "rootfs").is_dir():
                return target / "rootfs"
            async with self.locked():
                if (target / "rootfs").is_dir():  # another process did it meanwhile
                    return target / "rootfs"
                tmp = self.unpacked / f".tmp-{hexd[:12]}-{uuid.uuid4().hex[:8]}"
                tmp.mkdir(parents=True)
                try:
                    await run(self.umoci, "raw", "unpack", "--image", f"{self.layout}:{info.ref}",
                              str(tmp / "rootfs"))
                    _write_json(tmp / "image.json", {"ref": info.ref, "digest": info.digest})
                    os.rename(tmp, target)
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
        return target / "rootfs"

    async def build_busybox(self, ref: str = "docker.io/library/busybox:latest") -> ImageInfo:
        from .busybox import build_busybox
        return await build_busybox(self, ref)


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _mount_options() -> str:
    try:
        return Path("/proc/self/mountinfo").read_text()
    except OSError:
        return ""


def _archive_sources(path: Path) -> list[tuple[str, str]]:
    """[(skopeo source, normalized name)] for each image in an archive."""
    if not path.is_file():
        raise ImageImportError(f"{path}: no such file")
    try:
        with tarfile.open(path, "r:*") as tar:
            names = {m.name.removeprefix("./") for m in tar.getmembers()}
            if "index.json" in names and "oci-layout" in names:
                index = json.load(tar.extractfile(_member(tar, "index.json")))
                return _oci_archive_sources(path, index)
            if "manifest.json" in names:
                manifest = json.load(tar.extractfile(_member(tar, "manifest.json")))
                return _docker_archive_sources(path, manifest)
    except (tarfile.TarError, ValueError, KeyError) as e:
        raise ImageImportError(f"{path}: not a readable image archive: {e}") from None
    raise ImageImportError(f"{path}: neither an oci-archive (index.json, oci-layout) "
                           f"nor a docker-archive (manifest.json)")


def _member(tar: tarfile.TarFile, name: str) -> tarfile.TarInfo:
    try:
        return tar.getmember(name)
    except KeyError:
        return tar.getmember("./" + name)


def _oci_archive_sources(path: Path, index: dict) -> list[tuple[str, str]]:
    out = []
    manifests = index.get("manifests", [])
    for i, desc in enumerate(manifests):
        ann = desc.get("annotations", {})
        raw = ann.get("io.containerd.image.name") or ann.get(REF_ANNOTATION) or ""
        tag = ann.get(REF_ANNOTATION, "")
        if raw and ("/" in raw or "." in raw.split(":")[0] or ":" in raw):
            name = refs.normalize(raw)
        elif raw:  # a bare tag, as OCI layouts often name images
            name = refs.normalize(f"import.local/{path.stem}:{raw}")
        else:
            name = refs.normalize(f"import.local/{path.stem}:{desc['digest'][7:19]}")
        if tag:
            src = f"oci-archive:{path}:{tag}"
        elif len(manifests) == 1:
            src = f"oci-archive:{path}"
        else:
            raise ImageImportError(f"{path}: manifest {i} has no name; skopeo cannot select it")
        out.append((src, name))
    if not out:
        raise ImageImportError(f"{path}: the archive's index.json lists no image")
    return out


def _docker_archive_sources(path: Path, manifest: list) -> list[tuple[str, str]]:
    out = []
    for i, entry in enumerate(manifest):
        tags = entry.get("RepoTags") or []
        if not tags:
            out.append((f"docker-archive:{path}:@{i}", refs.normalize(f"import.local/{path.stem}:{i}")))
        for t in tags:
            out.append((f"docker-archive:{path}:{t}", refs.normalize(t)))
    if not out:
        raise ImageImportError(f"{path}: the archive's manifest.json lists no image")
    return out
