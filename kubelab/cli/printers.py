"""How the CLI shows objects the way kubectl does: `get`'s tables from the server's Table
(the columns themselves are kubelab.api.printers', computed by the API server; this picks the
ones to show and adds NAMESPACE and LABELS, as kubectl does), -o yaml|json|name, and the
column layout of Go's text/tabwriter that both `get` tables and `describe` pages use.

Pure functions over API messages: nothing here talks to the API server.
"""
from __future__ import annotations

import json

import yaml
from google.protobuf.message import Message

from kubelab import meta
from kubelab.api import kinds, printers
from kubelab.api.printers import (  # noqa: F401 - the helpers describe and the tests use
    age, csr_condition, csr_duration, endpoints_list, event_last_seen, event_object, format_labels,
    human_duration, node_ip, node_roles, node_status, pod_ready, pod_restarts, pod_status, pod_summary,
    service_cluster_ip, service_external_ip, service_ports, slice_endpoints, slice_ports)
from kubelab.api.v1 import api_pb2

from . import manifest


def describe_time(ts: str) -> str:
    """The long form `describe` uses (Go's RFC1123Z): `Mon, 24 Nov 2026 20:51:39 +0000`."""
    t = meta.parse_time(ts)
    return t.strftime("%a, %d %b %Y %H:%M:%S %z") if t else "<unset>"


# -- get tables ------------------------------------------------------------------------------


def cell_text(v) -> str:
    """A cell as kubectl prints it: nothing for null, a string up to its first line break
    (then `...`), anything else as itself."""
    if v is None:
        return ""
    if isinstance(v, str):
        cut = min((i for i in (v.find("\n"), v.find("\r"), v.find("\f")) if i >= 0), default=-1)
        return v[:cut] + "..." if cut >= 0 else v
    return str(v)


def render(table: api_pb2.Table, objs: list[Message], *, wide: bool = False, with_namespace: bool = False,
           headers: bool = True, show_labels: bool = False) -> list[list[str]]:
    """The rows kubectl prints from a server's Table: the priority-0 columns (all with -o wide),
    upper-cased headers, and what kubectl adds itself from each row's object: NAMESPACE with
    -A, LABELS with --show-labels (header row first unless headers=False)."""
    keep = [i for i, c in enumerate(table.columnDefinitions) if wide or c.priority == 0]
    out = [[table.columnDefinitions[i].name.upper() for i in keep]] if headers else []
    for row, o in zip(table.rows, objs):
        values = printers.cell_values(row)
        r = [cell_text(values[i]) if i < len(values) else "" for i in keep]
        if with_namespace:
            r.insert(0, o.metadata.namespace)
        if show_labels:
            r.append(format_labels(o.metadata.labels))
        out.append(r)
    if headers:
        out[0] = (["NAMESPACE"] if with_namespace else []) + out[0] + (["LABELS"] if show_labels else [])
    return out


def table_rows(objs: list[Message], *, wide: bool = False, with_namespace: bool = False,
               headers: bool = True, show_labels: bool = False) -> list[list[str]]:
    """The cells of `kubectl get`'s table for objects at hand (header row first unless
    headers=False): the server's printers, run here."""
    if not objs:
        return []
    t = printers.table(kinds.kind_of(objs[0]), objs)
    return render(t, objs, wide=wide, with_namespace=with_namespace, headers=headers, show_labels=show_labels)


def format_table(rows: list[list[str]], widths: list[int] | None = None, *, pad: int = 3,
                 minwidth: int = 6) -> str:
    """Columns as kubectl's tabwriter lays them out (cell + 3 spaces, at least 6 wide).

    Pass the same `widths` list for later rows (get -w): widths only grow, as with Go's
    tabwriter.RememberWidths, so a row printed later lines up with the header.
    """
    if not rows:
        return ""
    widths = widths if widths is not None else []
    for r in rows:
        for i, cell in enumerate(r[:-1]):
            w = max(len(cell) + pad, minwidth)
            if i >= len(widths):
                widths.append(w)
            elif w > widths[i]:
                widths[i] = w
    return "\n".join("".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + r[-1] for r in rows)


def tabwrite(lines: list[str], *, pad: int = 2) -> str:
    """Go's text/tabwriter over `\\t`-separated cells, as `kubectl describe` uses it.

    A column is aligned over a block of consecutive lines that all have a cell in it; a line
    with fewer cells ends the block. The last cell of a line is never padded.
    """
    rows = [line.split("\t") for line in lines]
    widths: list[list[int]] = [[] for _ in rows]

    def block(start: int, end: int, col: int) -> None:
        i = start
        while i < end:
            if col >= len(rows[i]) - 1:
                i += 1
                continue
            j = i
            while j < end and col < len(rows[j]) - 1:
                j += 1
            w = max(len(rows[k][col]) for k in range(i, j)) + pad
            for k in range(i, j):
                widths[k].append(w)
            block(i, j, col + 1)
            i = j

    block(0, len(rows), 0)
    return "\n".join("".join(c.ljust(w) for c, w in zip(r[:-1], ws)) + r[-1] for r, ws in zip(rows, widths))


# -- -o yaml|json|name ------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """YAML as kubectl (go-yaml) writes it: a string that would read back as another type
    ("22", "true", a timestamp) in double quotes, a multi-line one as a literal block."""


def _represent_str(dumper: yaml.SafeDumper, data: str):
    style = None
    if "\n" in data and not any(line != line.rstrip() for line in data.split("\n")):
        style = "|"
    elif dumper.resolve(yaml.ScalarNode, data, (True, False)) != "tag:yaml.org,2002:str":
        style = '"'
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _represent_str)


def qualified(kind: kinds.Kind) -> str:
    """How kubectl names a kind before `/name`: `pod`, `lease.coordination.k8s.io`."""
    group = kind.api_version.rpartition("/")[0]
    return f"{kind.singular}.{group}" if group else kind.singular


def to_list(objs: list[Message]) -> dict:
    return {"apiVersion": "v1", "items": [manifest.to_dict(o) for o in objs], "kind": "List",
            "metadata": {"resourceVersion": ""}}


def dump(objs: list[Message], fmt: str, *, single: bool) -> str:
    """-o name|json|yaml: one object as itself when single, otherwise a `kind: List`."""
    if fmt == "name":
        return "\n".join(f"{qualified(kinds.kind_of(o))}/{o.metadata.name}" for o in objs)
    doc = manifest.to_dict(objs[0]) if single and len(objs) == 1 else to_list(objs)
    if fmt == "json":
        return json.dumps(doc, indent=4)
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=True, default_flow_style=False, allow_unicode=True,
                     width=1 << 16).rstrip()
