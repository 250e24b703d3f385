"""`kubelab apply -f FILE|DIR|-`: make the cluster match the manifests, as `kubectl apply`
(client-side) does: create what is missing; otherwise merge the manifest into the live object
and update it, or say `unchanged` when the merge changes nothing.

The merge is three-way, like kubectl's: the manifest last applied is kept in the annotation
kubectl.kubernetes.io/last-applied-configuration, so a field removed from the manifest is
removed from the object, while fields set by others (the scheduler's spec.nodeName, the API
server's defaults) stay. Lists of named things (containers, env, volumes, ports) merge by key,
as Kubernetes' strategic merge does; other lists are replaced.

Namespaces are applied first (later documents may live in them); the rest are written
concurrently with a bounded number in flight, and the output keeps the documents' order.
"""
from __future__ import annotations

import copy
import json

from kubelab.errors import AlreadyExists, Conflict, NotFound

from . import manifest
from .common import CLIError, add_namespace_flags, cli_command, connect, err, report, write_all

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
# strategic-merge keys of the lists in this API (a Service's ports merge by port, so the
# node port and the defaults the API server filled in stay when the manifest omits them)
MERGE_KEYS = ("name", "containerPort", "port")
RETRIES = 5


def register(sub, parents) -> None:
    p = sub.add_parser("apply", parents=parents, help="Apply a configuration to a resource by file name or stdin")
    p.add_argument("-f", "--filename", action="append", required=True, help="file, directory or - for stdin")
    add_namespace_flags(p)
    p.set_defaults(func=run)


def _merge_key(*lists) -> str | None:
    items = [e for lst in lists if isinstance(lst, list) for e in lst]
    if not items or not all(isinstance(e, dict) for e in items):
        return None
    return next((k for k in MERGE_KEYS if all(k in e for e in items)), None)


def merge(live, new, last):
    """Three-way merge: `new` wins where it says something; what `last` had and `new` dropped
    goes; everything else in `live` stays. Inputs are not modified."""
    if isinstance(new, dict) and isinstance(live, dict):
        last = last if isinstance(last, dict) else {}
        out = copy.deepcopy(live)
        for k, v in new.items():
            out[k] = merge(live.get(k), v, last.get(k))
        for k in last:
            if k not in new:
                out.pop(k, None)
        return out
    if isinstance(new, list) and isinstance(live, list) and (key := _merge_key(new, live)):
        last_keys = {e.get(key) for e in last if isinstance(e, dict)} if isinstance(last, list) else set()
        last_by = {e.get(key): e for e in last} if isinstance(last, list) and _merge_key(last) == key else {}
        live_by = {e[key]: e for e in live}
        new_keys = {e[key] for e in new}
        out = [merge(live_by.get(e[key]), e, last_by.get(e[key])) if e[key] in live_by else copy.deepcopy(e)
               for e in new]
        return out + [copy.deepcopy(e) for e in live if e[key] not in new_keys and e[key] not in last_keys]
    return copy.deepcopy(new)


def applied_config(d: manifest.Doc) -> str:
    """The annotation's value: the manifest as JSON (kubectl's compact form and newline)."""
    doc = manifest.to_dict(d.obj)
    if not doc.get("status"):
        doc.pop("status", None)
    doc.get("metadata", {}).get("annotations", {}).pop(LAST_APPLIED, None)
    if not doc.get("metadata", {}).get("annotations", True):
        del doc["metadata"]["annotations"]
    return json.dumps(doc, separators=(",", ":"), sort_keys=True) + "\n"


def desired(live_doc: dict, d: manifest.Doc, applied: str) -> dict:
    """The object to send: the manifest merged into the live object (status is not ours)."""
    try:
        last = json.loads(live_doc.get("metadata", {}).get("annotations", {}).get(LAST_APPLIED, "{}"))
    except ValueError:
        last = {}
    new = manifest.to_dict(d.obj)
    new.pop("status", None)
    new.setdefault("metadata", {}).setdefault("annotations", {})[LAST_APPLIED] = applied
    last.pop("status", None)
    return merge(live_doc, new, last)


async def apply_one(client, d: manifest.Doc) -> str:
    """Create or update one object; returns kubectl's line (`pod/x created`)."""
    kind, name = d.kind, d.obj.metadata.name
    if not name:
        raise CLIError(f'error when retrieving current configuration from "{d.source}": resource name may not be empty')
    rc = client.resource(kind, d.obj.metadata.namespace)
    ref = f"{kind.singular}/{name}"
    applied = applied_config(d)
    for _ in range(RETRIES):
        try:
            live = await rc.get(name)
        except NotFound:
            obj = type(d.obj)()
            obj.CopyFrom(d.obj)
            obj.metadata.annotations[LAST_APPLIED] = applied
            try:
                await rc.create(obj)
                return f"{ref} created"
            except AlreadyExists:
                continue  # someone else created it meanwhile: merge into theirs
        live_doc = manifest.to_dict(live)
        if LAST_APPLIED not in live.metadata.annotations:
            err(f"Warning: resource {kind.resource}/{name} is missing the {LAST_APPLIED} annotation which is "
                "required by kubelab apply. It will be patched automatically.")
        want = desired(live_doc, d, applied)
        if want == live_doc:
            return f"{ref} unchanged"
        try:
            await rc.update(manifest.from_dict(want))
            return f"{ref} configured"
        except Conflict:
            continue  # changed under us (the kubelet's status, the scheduler's binding): merge again
    raise Conflict(f'Operation cannot be fulfilled on {kind.resource} "{name}": the object kept changing')


@cli_command
async def run(args) -> int:
    docs = manifest.load(args.filename, args.namespace or "", enforce_namespace=bool(args.namespace))
    if any(d.kind.kind == "Binding" for d in docs):
        raise CLIError("a Binding can only be created: use kubelab create -f")
    async with connect(args) as client:
        results = await write_all(docs, lambda d: apply_one(client, d))
    return report(docs, results, args, "applying")
