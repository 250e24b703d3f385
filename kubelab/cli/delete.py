"""`kubelab delete TYPE NAME...`: delete and, like kubectl, wait until the objects are gone."""
from __future__ import annotations

import asyncio

from kubelab.errors import ApiError, NotFound

from .common import add_namespace_flags, cli_command, connect, err, resolve_kind


def register(sub, parents) -> None:
    p = sub.add_parser("delete", parents=parents, help="Delete resources by names")
    p.add_argument("resource", help="pod, namespace, node, lease, event (or po, ns, no)")
    p.add_argument("names", nargs="+")
    add_namespace_flags(p)
    p.add_argument("--grace-period", type=int, default=None, help="seconds to let the pod stop (0: at once)")
    p.add_argument("--now", action="store_true", help="same as --grace-period=1")
    p.add_argument("--force", action="store_true", help="with --grace-period=0: do not wait for the kubelet")
    p.add_argument("--wait", default="true", choices=("true", "false"), help="wait until the objects are gone")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait (with --wait)")
    p.set_defaults(func=run)


@cli_command
async def run(args) -> int:
    kind = resolve_kind(args.resource)
    grace = 1 if args.now else args.grace_period
    failed = 0
    async with connect(args) as client:
        args._server = getattr(client, "server", "")
        rc = client.resource(kind, args.namespace or "default")
        deleted = []
        for name in args.names:
            try:
                obj = await rc.delete(name, grace_period=grace)
                deleted.append((name, obj.metadata.uid))
                print(f'{kind.singular} "{name}" deleted', flush=True)
            except ApiError as e:
                err(e.kubectl())
                failed = 1
        if args.wait == "true":
            await asyncio.gather(*(wait_gone(rc, n, uid, args.timeout) for n, uid in deleted))
    return failed


async def wait_gone(rc, name: str, uid: str, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        try:
            obj = await rc.get(name)
            if obj.metadata.uid != uid:
                return  # a new object with the same name: ours is gone
        except NotFound:
            return
        await asyncio.sleep(0.5)
    err(f'error: timed out waiting for the condition on {rc.kind.resource}/{name}')
