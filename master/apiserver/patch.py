"""PATCH bodies applied to the current object, as JSON dicts: the three patch types Kubernetes
serves (server-side apply is not one of them here).

The HTTP face (master/apiserver/rest/handlers.py) reads the object, calls apply() and sends
the result through the same Update as a PUT, so validation, admission and the resourceVersion
check are the Update's. This module is pure: no I/O, no messages, only the kind's descriptor
for strategic merge patch's per-field metadata (kubelab.api.patchmeta).

- application/merge-patch+json: RFC 7386 (objects merge, null deletes, anything else replaces);
- application/json-patch+json: RFC 6902 (add/remove/replace/move/copy/test on JSON pointers
  with ~0 and ~1 escapes), all operations or none, an error naming the operation;
- application/strategic-merge-patch+json: Kubernetes' strategic merge patch
  (master/apiserver/strategicmerge.py), what `kubectl apply` and `kubectl patch` send.

Interface: apply(content_type, current: dict, patch: bytes | parsed JSON, kind) -> dict,
raising UnsupportedMediaType (415) for another content type, BadRequest for a patch that is
not well-formed, Invalid (422) for a JSON patch operation that does not apply.
"""
from __future__ import annotations

import copy
import json

from kubelab.errors import BadRequest, Invalid, UnsupportedMediaType

from .strategicmerge import Schema, json_equal, strategic_merge

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
TYPES = (JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH)



def apply(content_type: str, current: dict, patch, kind) -> dict:
    """The object `current` with `patch` applied (current itself is left unchanged)."""
    ctype = content_type.split(";")[0].strip().lower()
    if ctype not in TYPES:
        raise UnsupportedMediaType(f'the body of the request was in an unknown format "{content_type}" - '
                                   "accepted media types include: " + ", ".join(TYPES))
    if isinstance(patch, (bytes, bytearray)):
        try:
            patch = json.loads(patch or b"null")
        except ValueError as e:
            raise BadRequest(f"the patch is not valid JSON: {e}") from None
    try:
        out = _apply(ctype, copy.deepcopy(current), patch, kind)
    except RecursionError:
        raise BadRequest("the patch is nested too deeply") from None
    if not isinstance(out, dict):
        raise BadRequest(f"the patched object is {_type(out)}, not a JSON object")
    return out


apply_patch = apply  # the name the HTTP handlers call


def _apply(ctype: str, doc: dict, patch, kind):
    if ctype == MERGE_PATCH:
        return merge_patch(doc, patch)
    if ctype == JSON_PATCH:
        return json_patch(doc, patch)
    if not isinstance(patch, dict):
        raise BadRequest(f"strategic merge patch: a JSON object was expected, not {_type(patch)}")
    desc = getattr(getattr(kind, "message", None), "DESCRIPTOR", kind)
    return strategic_merge(doc, copy.deepcopy(patch), Schema(desc))


def _type(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    return {str: "a string", list: "a list", dict: "an object"}.get(type(v), type(v).__name__)


# -- RFC 7386 ------------------------------------------------------------------------------

def merge_patch(target, patch):
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = target if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


# -- RFC 6902 ------------------------------------------------------------------------------

def _pointer(ptr, where: str) -> list[str]:
    if not isinstance(ptr, str):
        raise BadRequest(f"{where}: a JSON pointer string was expected, not {_type(ptr)}")
    if ptr == "":
        return []
    if not ptr.startswith("/"):
        raise BadRequest(f'{where}: JSON pointer "{ptr}" must be empty or start with "/"')
    return [t.replace("~1", "/").replace("~0", "~") for t in ptr[1:].split("/")]


def _index(container: list, token: str, *, append_ok: bool) -> int | None:
    """The list index a token names; None when it is not an index of this list."""
    if append_ok and token == "-":
        return len(container)
    if not token.isdigit() or (len(token) > 1 and token[0] == "0"):
        return None
    i = int(token)
    return i if i < len(container) + (1 if append_ok else 0) else None


def _parent(doc, tokens: list[str]):
    cur = doc
    for t in tokens[:-1]:
        if isinstance(cur, dict) and t in cur:
            cur = cur[t]
        elif isinstance(cur, list) and (i := _index(cur, t, append_ok=False)) is not None:
            cur = cur[i]
        else:
            return None
    return cur


def _get(doc, tokens: list[str]):
    """(found, value) at tokens."""
    if not tokens:
        return True, doc
    parent = _parent(doc, tokens)
    t = tokens[-1]
    if isinstance(parent, dict) and t in parent:
        return True, parent[t]
    if isinstance(parent, list) and (i := _index(parent, t, append_ok=False)) is not None:
        return True, parent[i]
    return False, None


class _OpFailed(Exception):
    pass


def _add(doc, tokens, value):
    if not tokens:
        return value
    parent, t = _parent(doc, tokens), tokens[-1]
    if isinstance(parent, dict):
        parent[t] = value
    elif isinstance(parent, list):
        i = _index(parent, t, append_ok=True)
        if i is None:
            raise _OpFailed(f"index {t} is out of bounds of a list of {len(parent)}")
        parent.insert(i, value)
    else:
        raise _OpFailed("the parent of the path does not exist")
    return doc


def _set(doc, tokens, value):
    """Replace the existing value at tokens."""
    if not tokens:
        return value
    parent, t = _parent(doc, tokens), tokens[-1]
    parent[t if isinstance(parent, dict) else _index(parent, t, append_ok=False)] = value
    return doc


def _remove(doc, tokens):
    if not tokens:
        raise _OpFailed("the whole document cannot be removed")
    parent, t = _parent(doc, tokens), tokens[-1]
    if isinstance(parent, dict) and t in parent:
        return parent.pop(t)
    if isinstance(parent, list) and (i := _index(parent, t, append_ok=False)) is not None:
        return parent.pop(i)
    raise _OpFailed("the path does not exist")


def json_patch(doc, ops):
    if not isinstance(ops, list):
        raise BadRequest(f"json patch: a list of operations was expected, not {_type(ops)}")
    for n, op in enumerate(ops):
        where = f"json patch operation {n}"
        if not isinstance(op, dict):
            raise BadRequest(f"{where}: an object was expected, not {_type(op)}")
        name = op.get("op")
        if name not in ("add", "remove", "replace", "move", "copy", "test"):
            raise BadRequest(f"{where}: unknown op {json.dumps(name)}: one of add, remove, replace, move, "
                             "copy, test was expected")
        if "path" not in op:
            raise BadRequest(f'{where} ({name}): "path" is missing')
        where = f'json patch operation {n} ({name} "{op["path"]}")'
        tokens = _pointer(op["path"], where)
        if name in ("add", "replace", "test") and "value" not in op:
            raise BadRequest(f'{where}: "value" is missing')
        if name in ("move", "copy"):
            if "from" not in op:
                raise BadRequest(f'{where}: "from" is missing')
            src = _pointer(op["from"], where)
        try:
            if name == "add":
                doc = _add(doc, tokens, copy.deepcopy(op["value"]))
            elif name == "remove":
                _remove(doc, tokens)
            elif name == "replace":
                if not _get(doc, tokens)[0]:
                    raise _OpFailed("the path does not exist")
                doc = _set(doc, tokens, copy.deepcopy(op["value"]))
            elif name == "test":
                found, value = _get(doc, tokens)
                if not found:
                    raise _OpFailed("the path does not exist")
                if not json_equal(value, op["value"]):
                    raise _OpFailed(f"the value is {json.dumps(value)}, not {json.dumps(op['value'])}")
            else:
                found, value = _get(doc, src)
                if not found:
                    raise _OpFailed(f'the from path "{op["from"]}" does not exist')
                if name == "move":
                    if tokens[:len(src)] == src and len(tokens) > len(src):
                        raise _OpFailed("a value cannot be moved into one of its own children")
                    if tokens == src:
                        continue
                    _remove(doc, src)
                doc = _add(doc, tokens, copy.deepcopy(value))
        except _OpFailed as e:
            raise Invalid(f"{where} does not apply: {e}") from None
    return doc
