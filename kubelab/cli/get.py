"""`kubelab get`: list or show objects as kubectl does (tables, -o wide|yaml|json|name, -l,
--field-selector, -w). A thin layer over the client library's paginated LIST and WATCH.

Tables are the server's, as kubectl's are: GET and LIST ask for `table` and print its cells
(kubelab.api.printers, run by the API server). Rows of a watch are computed here with the same
printers, since a watch event carries only its object.
"""
from __future__ import annotations

import asyncio
import sys

from kubelab.api import kinds
from kubelab.api.v1 import api_pb2
from kubelab.errors import Gone, NotFound, ServiceUnavailable, Timeout

from . import printers

UNAVAILABLE_FOR = 30.0  # seconds get -w waits for an API server that went away
from .common import CLIError, add_namespace_flags, cli_command, connect, err, resolve_kind, split_type_names


def register(sub, parents) -> None:
    p = sub.add_parser("get", parents=parents, help="Display one or many resources")
    p.add_argument("resource", help="nodes, pods, namespaces, services, endpoints, endpointslices, leases, "
                   "events (or no, po, ns, svc, ep, ev), or TYPE/NAME")
    p.add_argument("names", nargs="*")
    add_namespace_flags(p, all_namespaces=True)
    p.add_argument("-o", "--output", choices=("wide", "yaml", "json", "name"), default=None)
    p.add_argument("-l", "--selector", default="", help="label selector, e.g. app=web,tier!=db")
    p.add_argument("--field-selector", default="", help="e.g. spec.nodeName=n1,status.phase=Running")
    p.add_argument("-w", "--watch", action="store_true", help="after listing, watch for changes")
    p.add_argument("--watch-only", action="store_true", help="watch for changes without listing first")
    p.add_argument("--no-headers", action="store_true")
    p.add_argument("--show-labels", action="store_true", help="add a LABELS column")
    p.set_defaults(func=run)


class View:
    """How this invocation prints objects; remembers column widths so watch rows line up."""

    def __init__(self, args, with_namespace: bool, *, kind_prefix: bool = False):
        self.args, self.with_namespace, self.kind_prefix = args, with_namespace, kind_prefix
        self.widths: list[int] = []
        self.headers_due = not args.no_headers

    def show(self, objs, *, single: bool = False, stream: bool = False, table: api_pb2.Table | None = None) -> None:
        """Print objects; `table`, when given, is the server's Table of exactly these objects."""
        fmt = self.args.output
        if fmt in ("yaml", "json", "name"):
            out = printers.dump(objs, fmt, single=single)
            if stream and fmt == "yaml":
                out = "---\n" + out
            if out:
                print(out)
        elif objs:
            opts = dict(wide=fmt == "wide", with_namespace=self.with_namespace, headers=self.headers_due,
                        show_labels=self.args.show_labels)
            rows = printers.render(table, objs, **opts) if table is not None else printers.table_rows(objs, **opts)
            if self.kind_prefix:  # several types at once: kubectl names rows pod/x, node/y
                col = 1 if self.with_namespace else 0
                for r, o in zip(rows[1:] if self.headers_due else rows, objs):
                    r[col] = f"{printers.qualified(kinds.kind_of(o))}/{r[col]}"
            self.headers_due = False
            print(printers.format_table(rows, self.widths))
        sys.stdout.flush()


def requested(args) -> list[tuple[kinds.Kind, list[str]]]:
    """What to get, as (kind, names) in the order asked: `pods`, `pods,nodes`, `pod a b`, `pod/a node/b`."""
    if "," in args.resource:
        if args.names:
            raise CLIError("names cannot be given with several resource types; use TYPE/NAME")
        return [(resolve_kind(r), []) for r in args.resource.split(",") if r]
    if not args.names and "/" not in args.resource:
        return [(resolve_kind(args.resource), [])]
    groups: dict[str, tuple[kinds.Kind, list[str]]] = {}
    for kind, name in split_type_names(args.resource, args.names):
        groups.setdefault(kind.kind, (kind, []))[1].append(name)
    return list(groups.values())


@cli_command
async def run(args) -> int:
    groups = requested(args)
    named = any(names for _, names in groups)
    if args.all_namespaces and named:
        raise CLIError("a resource cannot be retrieved by name across all namespaces")
    if (args.watch or args.watch_only) and len(groups) > 1:
        raise CLIError("you may only specify a single resource type to watch")
    view = View(args, args.all_namespaces and groups[0][0].namespaced, kind_prefix=len(groups) > 1)
    failed, shown = 0, []
    async with connect(args) as client:
        for kind, names in groups:
            ns = "" if args.all_namespaces or not kind.namespaced else (args.namespace or "default")
            rc = client.resource(kind, ns)
            if args.watch or args.watch_only:
                return await get_and_watch(rc, names, args, view)
            tables = args.output in (None, "wide")
            if names:
                objs, table, bad = await get_named(rc, names, table=tables)
                failed |= bad
            elif tables:
                objs, table, _ = await list_table(rc, args.selector, args.field_selector)
            else:
                objs, table = (await rc.list_all(label_selector=args.selector,
                                                 field_selector=args.field_selector)).items, None
            if kind.kind == "Event":
                objs, table = sort_events(objs, table)
            shown.append((kind, objs, table))
    if args.output in ("yaml", "json", "name"):
        objs = [o for _, group, _ in shown for o in group]
        if objs or args.output != "name":
            view.show(objs, single=named and len(groups) == 1 and len(groups[0][1]) == 1)
    else:
        for i, (kind, objs, table) in enumerate(s for s in shown if s[1]):
            if i:
                print()
            view.headers_due, view.widths = not args.no_headers, []
            view.with_namespace = kind.namespaced and args.all_namespaces
            view.show(objs, table=table)
        if not named and not any(objs for _, objs, _ in shown):
            ns = args.namespace or "default"
            err(f"No resources found in {ns} namespace." if groups[0][0].namespaced and not args.all_namespaces
                else "No resources found")
    return failed


async def get_named(rc, names: list[str], *, table: bool = False) -> tuple[list, api_pb2.Table | None, int]:
    """The named objects (and, with table=True, the server's Table of them); NotFound ones
    are reported as kubectl does and make the command fail."""
    objs, failed = [], 0
    t = api_pb2.Table() if table else None
    for n in names:
        try:
            if t is None:
                objs.append(await rc.get(n))
                continue
            r = await rc.client.call("Get", api_pb2.GetRequest(resource=rc.kind.resource, namespace=rc._ns(),
                                                               name=n, table=True), retries=3)
            objs.append(rc._decode(r.object))
            if not r.HasField("table"):  # a server without Tables: the rows are made here
                t = None
                continue
            if not t.columnDefinitions:
                t.columnDefinitions.extend(r.table.columnDefinitions)
            t.rows.extend(r.table.rows)
        except NotFound as e:
            err(e.kubectl())
            failed = 1
    return objs, t, failed


async def list_table(rc, label_selector: str, field_selector: str, *,
                     page_size: int = 500) -> tuple[list, api_pb2.Table | None, str]:
    """Every object's row of the server's Table, paged with limit + continue at one revision
    (returned: a watch goes on from it)."""
    t, token, rv, plain = api_pb2.Table(), "", "", []
    while True:
        r = await rc.client.call("List", api_pb2.ListRequest(
            resource=rc.kind.resource, namespace=rc.namespace, labelSelector=label_selector,
            fieldSelector=field_selector, limit=page_size, continue_token=token, table=True), retries=3)
        if not t.columnDefinitions:
            t.columnDefinitions.extend(r.table.columnDefinitions)
        t.rows.extend(r.table.rows)
        plain.extend(r.items)  # a server without Tables answers items: the rows are made here
        rv, token = rv or r.resourceVersion, r.continue_token
        if not token:
            if plain:
                return [rc._decode(a) for a in plain], None, rv
            return [rc._decode(row.object) for row in t.rows], t, rv


def sort_events(objs: list, table: api_pb2.Table | None) -> tuple[list, api_pb2.Table | None]:
    """Events oldest first (by when they were last seen), rows kept with their objects."""
    order = sorted(range(len(objs)), key=lambda i: objs[i].lastTimestamp or objs[i].eventTime
                   or objs[i].metadata.creationTimestamp)
    if table is None:
        return [objs[i] for i in order], None
    t = api_pb2.Table(columnDefinitions=table.columnDefinitions, rows=[table.rows[i] for i in order])
    return [objs[i] for i in order], t


async def get_and_watch(rc, names: list[str], args, view: View) -> int:
    """-w: the current state (unless --watch-only), then a row per change."""
    if len(names) > 1:
        raise CLIError("you may only specify a single resource type and name to watch")
    selector = f"metadata.name={names[0]}" if names else args.field_selector
    seen: dict = {}
    rv = ""
    if not args.watch_only:
        tables = args.output in (None, "wide")
        if names:
            objs, table, failed = await get_named(rc, names, table=tables)
            if failed:
                return 1
            rv = objs[0].metadata.resourceVersion
        elif tables:
            objs, table, rv = await list_table(rc, args.selector, selector)
        else:
            listed = await rc.list_all(label_selector=args.selector, field_selector=selector)
            objs, rv, table = listed.items, listed.resource_version, None
        view.show(objs, single=bool(names), table=table)
        seen = {(o.metadata.namespace, o.metadata.name): o.metadata.resourceVersion for o in objs}
    await watch(rc, args, view, rv, selector, seen)
    return 0


async def watch(rc, args, view: View, rv: str, field_selector: str, seen: dict) -> None:
    """One row per change, until Ctrl-C. When the stream ends, resume from the last
    resourceVersion. When that version is unusable (Gone: compacted; Timeout: the server's
    cache has not caught up to it), watch from now: the server first replays the current
    objects as ADDED, and those already shown at the same resourceVersion are skipped."""
    delay, down_since = 0.5, 0.0
    while True:
        try:
            async for ev in rc.watch(resource_version=rv, label_selector=args.selector,
                                     field_selector=field_selector):
                delay, down_since = 0.5, 0.0
                m = ev.object.metadata
                rv = m.resourceVersion or rv
                if ev.type == "BOOKMARK":
                    continue
                key = (m.namespace, m.name)
                if ev.type == "DELETED":
                    seen.pop(key, None)
                elif seen.get(key) == m.resourceVersion:
                    continue
                else:
                    seen[key] = m.resourceVersion
                view.show([ev.object], single=True, stream=True)
        except (Gone, Timeout):
            rv = ""
            continue
        except ServiceUnavailable:
            # the API server restarts: keep watching once it is back, but not forever
            down_since = down_since or asyncio.get_running_loop().time()
            if asyncio.get_running_loop().time() - down_since > UNAVAILABLE_FOR:
                raise
            delay = min(delay * 2, 5)
            await asyncio.sleep(delay)
            continue
        down_since = 0.0
        await asyncio.sleep(delay)
