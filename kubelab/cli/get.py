"""`kubelab get`: list or show objects as kubectl does (tables, -o wide|yaml|json|name, -w)."""
from __future__ import annotations

import asyncio
import sys

from kubelab.errors import Gone, NotFound

from . import printers
from .common import CLIError, add_namespace_flags, cli_command, connect, err, resolve_kind


def register(sub, parents) -> None:
    p = sub.add_parser("get", parents=parents, help="Display one or many resources")
    p.add_argument("resource", help="nodes, pods, namespaces, leases, events (or po, no, ns, ev)")
    p.add_argument("names", nargs="*")
    add_namespace_flags(p, all_namespaces=True)
    p.add_argument("-o", "--output", choices=("wide", "yaml", "json", "name"), default=None)
    p.add_argument("-l", "--selector", default="", help="label selector, e.g. app=web,tier!=db")
    p.add_argument("--field-selector", default="")
    p.add_argument("-w", "--watch", action="store_true", help="after listing, watch for changes")
    p.add_argument("--no-headers", action="store_true")
    p.set_defaults(func=run)


@cli_command
async def run(args) -> int:
    if "," in args.resource:
        raise CLIError("listing several resource types at once is not supported; run get once per type")
    kind = resolve_kind(args.resource.split("/", 1)[0])
    names = list(args.names)
    if "/" in args.resource:
        names.insert(0, args.resource.split("/", 1)[1])
    all_ns = kind.namespaced and args.all_namespaces
    ns = "" if all_ns or not kind.namespaced else (args.namespace or "default")
    async with connect(args) as client:
        args._server = getattr(client, "server", "")
        rc = client.resource(kind, ns)
        if names:
            objs, failed = [], 0
            for n in names:
                try:
                    objs.append(await rc.get(n))
                except NotFound as e:
                    err(e.kubectl())
                    failed = 1
            if objs:
                show(objs, args, single=len(names) == 1, with_namespace=all_ns)
            return failed
        listed = await rc.list_all(label_selector=args.selector, field_selector=args.field_selector)
        objs = sorted(listed.items, key=lambda o: (o.metadata.namespace, o.metadata.name))
        if kind.kind == "Event":
            objs.sort(key=lambda o: o.lastTimestamp or o.metadata.creationTimestamp)
        if not objs and args.output not in ("yaml", "json"):
            where = f" in {ns} namespace" if ns else ""
            err(f"No resources found{where}.")
        else:
            show(objs, args, single=False, with_namespace=all_ns)
        if args.watch:
            await watch(rc, args, listed.resource_version, all_ns, header=not objs)
    return 0


def show(objs, args, *, single: bool, with_namespace: bool) -> None:
    if args.output in ("yaml", "json", "name"):
        print(printers.dump(objs, args.output, single=single))
    else:
        rows = printers.table_rows(objs, wide=args.output == "wide", with_namespace=with_namespace,
                                   headers=not args.no_headers)
        print(printers.format_table(rows))
    sys.stdout.flush()


async def watch(rc, args, rv: str, all_ns: bool, header: bool) -> None:
    """Print each change as a new row, reconnecting from the last resourceVersion."""
    while True:
        try:
            async for ev in rc.watch(resource_version=rv, label_selector=args.selector,
                                     field_selector=args.field_selector):
                rv = ev.object.metadata.resourceVersion or rv
                if ev.type == "BOOKMARK":
                    continue
                if args.output in ("yaml", "json", "name"):
                    print(printers.dump([ev.object], args.output, single=True))
                    if args.output != "name":
                        print("---" if args.output == "yaml" else "")
                else:
                    rows = printers.table_rows([ev.object], wide=args.output == "wide", with_namespace=all_ns,
                                               headers=header and not args.no_headers)
                    header = False
                    print(printers.format_table(rows))
                sys.stdout.flush()
        except Gone:
            rv = ""  # too old: start over (the server sends the current state as ADDED)
        await asyncio.sleep(0.5)
