"""`kubelab create namespace NAME` and `kubelab create -f FILE|DIR|-`: POST objects as given,
as `kubectl create` does (AlreadyExists is an error; `apply` is the verb that updates).

A Binding in a file is posted to its pod's binding subresource: scheduling a pod by hand,
which is what the scheduler itself does.
"""
from __future__ import annotations

from kubelab.api.v1 import objects_pb2 as v1
from . import manifest
from .common import CLIError, add_namespace_flags, cli_command, connect, report, write_all


def register(sub, parents) -> None:
    p = sub.add_parser("create", parents=parents, help="Create a resource from a file or a namespace")
    p.add_argument("what", nargs="*", help="namespace NAME (or ns NAME)")
    p.add_argument("-f", "--filename", action="append", default=[], help="file, directory or - for stdin")
    add_namespace_flags(p)
    p.set_defaults(func=run)


async def create_one(client, d: manifest.Doc) -> str:
    if d.kind.kind == "Binding":
        b = d.obj
        await client.bind(b.metadata.namespace, b.metadata.name, b.target.name,
                          resource_version=b.metadata.resourceVersion)
        return f"binding/{b.metadata.name} created"
    created = await client.resource(d.kind, d.obj.metadata.namespace).create(d.obj)
    return f"{d.kind.singular}/{created.metadata.name} created"


@cli_command
async def run(args) -> int:
    if args.filename and args.what:
        raise CLIError("use either -f FILE or namespace NAME, not both")
    if not args.filename:
        if len(args.what) != 2 or args.what[0] not in ("ns", "namespace"):
            raise CLIError('must specify one of -f, or "namespace NAME" (kubelab creates only namespaces by name)')
        ns = v1.Namespace()
        ns.metadata.name = args.what[1]
        async with connect(args) as client:
            await client.namespaces().create(ns)
        print(f"namespace/{ns.metadata.name} created")
        return 0
    docs = manifest.load(args.filename, args.namespace or "", enforce_namespace=bool(args.namespace),
                         verb="create")
    async with connect(args) as client:
        results = await write_all(docs, lambda d: create_one(client, d))
    return report(docs, results, args, "creating")
