"""`kubelab logs POD [-c C] [-f] [--previous] [--tail N]`: a container's log, through the API
server and the pod's kubelet."""
from __future__ import annotations

import sys

from .common import add_namespace_flags, cli_command, connect


def register(sub, parents) -> None:
    p = sub.add_parser("logs", parents=parents, help="Print the logs for a container in a pod")
    p.add_argument("pod")
    p.add_argument("-c", "--container", default="")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("-p", "--previous", action="store_true", help="the previous instance of the container")
    p.add_argument("--tail", type=int, default=-1, help="lines of recent log to show (-1: all)")
    add_namespace_flags(p)
    p.set_defaults(func=run)


@cli_command
async def run(args) -> int:
    name = args.pod.split("/", 1)[1] if args.pod.startswith(("pod/", "pods/")) else args.pod
    async with connect(args) as client:
        args._server = getattr(client, "server", "")
        async for data in client.pod_logs(args.namespace or "default", name, container=args.container,
                                          follow=args.follow, previous=args.previous,
                                          tail=None if args.tail < 0 else args.tail):
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
    return 0
