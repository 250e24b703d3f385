"""`kubelab delete TYPE NAME... | TYPE/NAME... | TYPE -l SEL | TYPE --all | -f FILE`: ask the
API server to delete, then, like kubectl, wait until the objects are really gone.

Deleting is often not instant: a pod is marked (deletionTimestamp) and stays until its kubelet
has stopped it within the grace period; a namespace stays Terminating until the namespace
controller has emptied it. The wait watches that happen by polling for the objects' UIDs.
"""
from __future__ import annotations

import asyncio
import re

from kubelab.errors import ApiError, NotFound

from . import manifest
from .common import (CLIError, add_namespace_flags, bounded_gather, cli_command, connect, err, resolve_kind,
                     split_type_names)

POLL = 0.5


def register(sub, parents) -> None:
    p = sub.add_parser("delete", parents=parents, help="Delete resources by names, selector or file")
    p.add_argument("resource", nargs="?", help="pod, service, namespace, node, lease, event (or po, svc, ns, no, ev), "
                   "or TYPE/NAME")
    p.add_argument("names", nargs="*")
    p.add_argument("-f", "--filename", action="append", default=[], help="delete what these manifests name")
    p.add_argument("-l", "--selector", default="", help="delete the objects with these labels")
    p.add_argument("--all", action="store_true", help="delete every object of the type in the namespace")
    add_namespace_flags(p)
    p.add_argument("--grace-period", type=int, default=-1, help="seconds to let a pod stop (-1: the pod's own)")
    p.add_argument("--now", action="store_true", help="same as --grace-period=1")
    p.add_argument("--force", action="store_true", help="remove from the API at once (with --grace-period=0)")
    p.add_argument("--wait", nargs="?", const="true", default="true", choices=("true", "false"),
                   help="wait until the objects are gone (default true)")
    p.add_argument("--timeout", default="0s", help="how long to wait, e.g. 60s or 5m (0: a week)")
    p.add_argument("--ignore-not-found", action="store_true", help="a missing object is not an error")
    p.set_defaults(func=run)


def parse_duration(s: str) -> float:
    """Go-style durations as kubectl takes them: 30s, 5m, 1h30m, 1.5s; a bare number is seconds."""
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return float(s)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", s)
    if not parts or "".join(a + b for a, b in parts) != s:
        raise CLIError(f'invalid argument "{s}" for "--timeout" flag: time: invalid duration "{s}"')
    unit = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(a) * unit[b] for a, b in parts)


def grace_of(args) -> tuple[int | None, bool]:
    """(grace period to send, force) with kubectl's rules: --now is 1; 0 without --force is 1."""
    if args.now:
        return 1, False
    grace = None if args.grace_period < 0 else args.grace_period
    if args.force:
        return 0 if grace is None else grace, grace in (None, 0)
    return (1 if grace == 0 else grace), False


async def targets(client, args) -> list[tuple]:
    """[(kind, namespace, name)] to delete, from the arguments, a selector or files."""
    ns = args.namespace or "default"
    if args.filename:
        if args.resource:
            raise CLIError("a resource cannot be given with -f")
        docs = manifest.load(args.filename, ns, verb="delete")
        return [(d.kind, d.obj.metadata.namespace, d.obj.metadata.name) for d in docs]
    if not args.resource:
        raise CLIError("You must provide one or more resources by argument or filename.")
    if args.selector or args.all:
        if args.names or "/" in args.resource:
            raise CLIError("name cannot be provided when a selector or --all is specified")
        kind = resolve_kind(args.resource)
        listed = await client.resource(kind, ns).list_all(label_selector=args.selector)
        if not listed.items:
            err(f"No resources found in {ns} namespace." if kind.namespaced else "No resources found")
        return [(kind, o.metadata.namespace, o.metadata.name) for o in listed.items]
    pairs = split_type_names(args.resource, args.names)
    if not pairs:
        raise CLIError("resource(s) were provided, but no name was specified")
    return [(k, ns, n) for k, n in pairs]


@cli_command
async def run(args) -> int:
    grace, force = grace_of(args)
    timeout = parse_duration(args.timeout) or 7 * 24 * 3600
    async with connect(args) as client:
        todo = await targets(client, args)
        if force:
            err("Warning: Immediate deletion does not wait for confirmation that the running resource has been "
                "terminated. The resource may continue to run on the cluster indefinitely.")

        async def one(t):
            kind, ns, name = t
            try:
                obj = await client.resource(kind, ns).delete(name, grace_period=grace)
                return obj.metadata.uid
            except NotFound as e:
                return None if args.ignore_not_found else e
            except ApiError as e:
                return e

        results = await bounded_gather(one, todo)
        failed, deleted = 0, []
        for (kind, ns, name), r in zip(todo, results):
            if isinstance(r, ApiError):
                err(r.kubectl())
                failed = 1
            elif r is not None:
                print(f'{kind.singular} "{name}" {"force deleted" if force else "deleted"}', flush=True)
                deleted.append((kind, ns, name, r))
        if args.wait == "true" and deleted and not await wait_gone(client, deleted, timeout):
            failed = 1
    return failed


async def wait_gone(client, deleted: list[tuple], timeout: float) -> bool:
    """Poll until no object with these UIDs is left; False (and kubectl's error) on timeout."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    pending = {(k.resource, ns if k.namespaced else "", name): (k, uid) for k, ns, name, uid in deleted}
    while pending:
        groups: dict[tuple, dict] = {}
        for (res, ns, name), (k, uid) in pending.items():
            groups.setdefault((res, ns), {})[name] = (k, uid)
        for (res, ns), names in groups.items():
            kind = next(iter(names.values()))[0]
            rc = client.resource(kind, ns)
            if len(names) == 1:
                name = next(iter(names))
                live = (await rc.list(field_selector=f"metadata.name={name}")).items
            else:
                live = (await rc.list_all()).items
            still = {(o.metadata.name, o.metadata.uid) for o in live}
            for name, (_, uid) in names.items():
                if (name, uid) not in still:
                    pending.pop((res, ns, name))
        if not pending:
            return True
        if loop.time() >= end:
            for res, _, name in pending:
                err(f"error: timed out waiting for the condition on {res}/{name}")
            return False
        await asyncio.sleep(POLL)
    return True
