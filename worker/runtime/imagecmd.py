"""`kubelab image import|ls|rm|build-busybox|pull`: the node's image store from the command
line, as `crictl images` / `ctr images import` show it. Works on the store directly (no daemon
needed), so a lab node can be given images while offline, before its kubelet runs."""
from __future__ import annotations

import sys
from pathlib import Path

from . import refs
from .busybox import BusyboxError
from .images import ImageError, ImageStore

DEFAULT_ROOT = "/var/lib/kubelab"


def register(sub, parents) -> None:
    p = sub.add_parser("image", parents=parents, help="Manage the node's container images",
                       description="The node's image store (an OCI layout under ROOT_DIR/images).")
    verbs = p.add_subparsers(dest="image_command", required=True, metavar="COMMAND")

    def verb(name: str, help: str, func):
        v = verbs.add_parser(name, help=help, parents=parents)
        v.add_argument("--root-dir", default=DEFAULT_ROOT, help=f"the node's state (default {DEFAULT_ROOT})")
        v.set_defaults(func=func)
        return v

    verb("import", "Load images from a docker-archive or oci-archive tarball", import_).add_argument("file")
    verb("ls", "List images", ls).add_argument("-q", "--quiet", action="store_true", help="only image references")
    verb("rm", "Remove images", rm).add_argument("refs", nargs="+", metavar="REF")
    verb("build-busybox", "Build a busybox image offline from /bin/busybox (busybox-static)",
         build_busybox).add_argument("ref", nargs="?", default="docker.io/library/busybox:latest")
    pull = verb("pull", "Pull an image from a registry", pull_)
    pull.add_argument("ref")
    pull.add_argument("--insecure-registry", action="append", default=[], metavar="HOST[:PORT]",
                      help="reach this registry without TLS verification (repeatable)")


def human_size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.3g}{unit}"
        n /= 1000
    return f"{n}B"


def _store(args) -> ImageStore:
    return ImageStore(Path(args.root_dir))


def _fail(e: Exception) -> int:
    print(f"error: {e}", file=sys.stderr)
    return 1


async def import_(args) -> int:
    try:
        for info in await _store(args).import_archive(Path(args.file)):
            print(f"Loaded image: {info.ref}")
    except ImageError as e:
        return _fail(e)
    return 0


def ls(args) -> int:
    images = _store(args).list()
    if args.quiet:
        for i in images:
            print(i.ref)
        return 0
    rows = [("IMAGE", "TAG", "DIGEST", "IMAGE ID", "SIZE")]
    for i in images:
        repo, tag = refs.split(i.ref)
        if tag.startswith("sha256:"):
            tag = "<none>"
        rows.append((repo, tag, i.digest.removeprefix("sha256:")[:13], i.id.removeprefix("sha256:")[:13],
                     human_size(i.size)))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for r in rows:
        print("   ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    return 0


async def rm(args) -> int:
    store, rc = _store(args), 0
    for ref in args.refs:
        try:
            for info in await store.remove(ref):
                print(f"Deleted: {info.ref}")
        except ImageError as e:
            rc = _fail(e)
    return rc


async def build_busybox(args) -> int:
    try:
        info = await _store(args).build_busybox(args.ref)
    except (ImageError, BusyboxError) as e:
        return _fail(e)
    print(f"Built image: {info.ref} ({info.id.removeprefix('sha256:')[:13]}, {human_size(info.size)})")
    return 0


async def pull_(args) -> int:
    try:
        info = await _store(args).pull(args.ref, insecure_registries=args.insecure_registry,
                                       progress=lambda line: print(line, file=sys.stderr))
    except ImageError as e:
        return _fail(e)
    print(f"Image is up to date for {info.ref}: {info.digest}")
    return 0
