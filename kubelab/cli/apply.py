"""`kubelab apply -f FILE|DIR|-`: create what is missing, update what differs, many at once.

Namespaces go first (later documents may live in them); the rest are written concurrently
(a bounded number in flight), and the output keeps the order of the documents.
"""
from __future__ import annotations

import asyncio

from google.protobuf import json_format

from kubelab.errors import AlreadyExists, ApiError, NotFound

from . import manifest
from .common import add_namespace_flags, cli_command, connect, err

IN_FLIGHT = 48


def register(sub, parents) -> None:
    p = sub.add_parser("apply", parents=parents, help="Apply a configuration by file name or stdin")
    p.add_argument("-f", "--filename", action="append", required=True, help="file, directory or - for stdin")
    add_namespace_flags(p)
    p.set_defaults(func=run)


def _subset(want, live) -> bool:
    """Every field the manifest sets has the same value in the live object (defaults aside)."""
    if isinstance(want, dict):
        return isinstance(live, dict) and all(_subset(v, live.get(k)) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(live, list) and len(want) <= len(live) and all(_subset(a, b) for a, b in zip(want, live))
    return want == live


def _desired_equal(live, want) -> bool:
    """Would sending `want` change anything a user wrote? (spec, labels, annotations)"""
    w, l = json_format.MessageToDict(want), json_format.MessageToDict(live)
    return all(_subset(w.get(k), l.get(k)) for k in ("spec",) if k in w) and _subset(
        {k: v for k, v in w.get("metadata", {}).items() if k in ("labels", "annotations")}, l.get("metadata", {}))


async def apply_one(client, d: manifest.Doc, default_ns: str) -> str:
    rc = client.resource(d.kind, d.obj.metadata.namespace or default_ns)
    name = d.obj.metadata.name
    for _ in range(3):
        try:
            live = await rc.get(name)
        except NotFound:
            try:
                await rc.create(d.obj)
                return f"{d.kind.singular}/{name} created"
            except AlreadyExists:
                continue
        if _desired_equal(live, d.obj):
            return f"{d.kind.singular}/{name} unchanged"
        want = type(live)()
        want.CopyFrom(live)
        want.metadata.labels.update(d.obj.metadata.labels)
        want.metadata.annotations.update(d.obj.metadata.annotations)
        if hasattr(want, "spec"):
            want.spec.CopyFrom(d.obj.spec)
        await rc.update(want)
        return f"{d.kind.singular}/{name} configured"
    return f"{d.kind.singular}/{name} unchanged"


@cli_command
async def run(args) -> int:
    default_ns = args.namespace or "default"
    docs = manifest.load(args.filename, "")
    failed = 0
    async with connect(args) as client:
        args._server = getattr(client, "server", "")
        sem = asyncio.Semaphore(IN_FLIGHT)

        async def one(d):
            async with sem:
                try:
                    return await apply_one(client, d, default_ns), None
                except ApiError as e:
                    return None, f"Error from server ({e.reason}): error when applying \"{d.source}\": {e.message}"

        first = [d for d in docs if not d.kind.namespaced]
        rest = [d for d in docs if d.kind.namespaced]
        results = dict(zip(map(id, first), await asyncio.gather(*(one(d) for d in first))))
        results.update(zip(map(id, rest), await asyncio.gather(*(one(d) for d in rest))))
        for d in docs:
            ok, bad = results[id(d)]
            if ok:
                print(ok)
            else:
                err(bad)
                failed = 1
    return failed
