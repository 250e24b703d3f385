"""`kubelab create ns NAME` and `kubelab create -f FILE`."""
from __future__ import annotations

from kubelab.api.v1 import objects_pb2 as v1
from kubelab.errors import ApiError

from . import manifest
from .common import CLIError, add_namespace_flags, cli_command, connect, err


def register(sub, parents) -> None:
    p = sub.add_parser("create", parents=parents, help="Create a resource from a file or a namespace")
    p.add_argument("what", nargs="*", help="namespace NAME (or ns NAME)")
    p.add_argument("-f", "--filename", action="append", default=[], help="file, directory or - for stdin")
    add_namespace_flags(p)
    p.set_defaults(func=run)


@cli_command
async def run(args) -> int:
    if args.filename:
        docs = manifest.load(args.filename, args.namespace or "")
    elif len(args.what) == 2 and args.what[0] in ("ns", "namespace"):
        ns = v1.Namespace()
        ns.metadata.name = args.what[1]
        docs = [manifest.Doc("args", 1, ns)]
    else:
        raise CLIError('must specify one of -f, or "namespace NAME"')
    failed = 0
    async with connect(args) as client:
        args._server = getattr(client, "server", "")
        for d in docs:
            rc = client.resource(d.kind, d.obj.metadata.namespace or args.namespace or "default")
            try:
                created = await rc.create(d.obj)
                print(f"{d.kind.singular}/{created.metadata.name} created", flush=True)
            except ApiError as e:
                err(e.kubectl())
                failed = 1
    return failed
