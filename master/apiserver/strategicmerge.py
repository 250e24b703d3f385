"""Kubernetes' strategic merge patch, applied to JSON dicts: the third patch type of
master/apiserver/patch.py (which calls strategic_merge()), and what `kubectl apply` (its
three-way patch is computed client-side), `label`, `annotate`, `edit`, `set image` and `patch`
send.

Per field, kubelab.api.patchmeta says how a list merges (Kubernetes' patchStrategy and
patchMergeKey tags): lists with strategy merge are merged by their merge key (lists of
primitives as sets, deduplicated), other lists are replaced whole. Directives: `$patch:
replace|delete` on a map or a list element, `$deleteFromPrimitiveList/<field>`,
`$setElementOrder/<field>`, `$retainKeys`; null deletes a key. A merged list is in Kubernetes'
order: $setElementOrder first, then the patch's order, with live-only items kept where the live
order puts them. Errors are BadRequest with apimachinery's wording.
"""
from __future__ import annotations

import json

from google.protobuf.descriptor import Descriptor

from kubelab.api import patchmeta
from kubelab.errors import BadRequest

DIRECTIVE = "$patch"
RETAIN_KEYS = "$retainKeys"
DELETE_PRIMITIVES = "$deleteFromPrimitiveList"
SET_ORDER = "$setElementOrder"


def json_equal(a, b) -> bool:
    """JSON equality: 1 == 1.0, but true is not 1 (Python's == says it is)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b



class Schema:
    """Where a JSON value sits in a kind's messages: what strategic merge needs to know."""

    def __init__(self, desc: Descriptor | None, map_value: Schema | None = None):
        self.desc = desc if desc is not None and desc.full_name.startswith("kubelab.") else None
        self.map_value = map_value  # a map field: every key has this schema

    def child(self, key: str) -> tuple[Schema, str, str | None]:
        """(schema of the value, patch strategy, merge key) of `key` in this object."""
        if self.map_value is not None:
            return self.map_value, patchmeta.MERGE, None
        f = None
        if self.desc is not None:
            f = self.desc.fields_by_name.get(key) or next(
                (x for x in self.desc.fields if x.json_name == key), None)
        if f is None:  # apiVersion, kind, or a field the decoder will name later: objects
            return Schema(None), None, None  # merge, lists are replaced
        entry = f.message_type
        if entry is not None and entry.GetOptions().map_entry:
            return Schema(None, Schema(entry.fields_by_name["value"].message_type)), patchmeta.MERGE, None
        strategy, merge_key = patchmeta.merge_info(self.desc, f.name)
        return Schema(entry), strategy, merge_key


def strategic_merge(original: dict, patch: dict, schema: Schema) -> dict:
    if DIRECTIVE in patch:
        d = patch[DIRECTIVE]
        if d == "replace":
            del patch[DIRECTIVE]
            return patch
        if d == "delete":
            return {}
        raise BadRequest(f"unknown patch type: {d} in map: {_show(patch)}")
    if original is None:
        original = {}
    _retain_keys(original, patch)
    _set_element_orders(original, patch, schema)
    for k, pv in patch.items():
        delete_list = False
        if k.startswith(DELETE_PRIMITIVES):
            k = _directive_key(k, DELETE_PRIMITIVES, "invalid patch format of primitive list")
            if not isinstance(pv, list):
                raise BadRequest("invalid patch format of primitive list")
            delete_list = True
        if pv is None:
            original.pop(k, None)
            continue
        if k not in original:
            if delete_list:  # nothing to delete from a list that is not there
                continue
            # merged into nothing rather than copied, so that directives inside are applied
            ov = {} if isinstance(pv, dict) else [] if isinstance(pv, list) else None
        else:
            ov = original[k]
        if type(ov) is not type(pv) or not isinstance(pv, (dict, list)):
            original[k] = pv
            continue
        child, strategy, merge_key = schema.child(k)
        if isinstance(pv, dict):
            original[k] = pv if strategy == patchmeta.REPLACE else strategic_merge(ov, pv, child)
        else:
            original[k] = _merge_list(ov, pv, child, strategy, merge_key, delete_list)
    return original


def _show(v) -> str:
    return json.dumps(v, sort_keys=True, separators=(",", ":"))


def _directive_key(k: str, prefix: str, err: str) -> str:
    head, sep, rest = k.partition("/")
    if head != prefix or not sep or not rest:
        raise BadRequest(err)
    return rest


def _retain_keys(original: dict, patch: dict) -> None:
    if RETAIN_KEYS not in patch:
        return
    keep = patch.pop(RETAIN_KEYS)
    if not isinstance(keep, list):
        raise BadRequest("invalid patch format of retainKeys")
    for k, v in patch.items():
        if v is None or k.startswith((DELETE_PRIMITIVES, SET_ORDER)):
            continue
        if k not in keep:
            raise BadRequest("invalid patch format of retainKeys")
    for k in list(original):
        if k not in keep:
            del original[k]


def _merge_list(original: list, patch: list, schema: Schema, strategy: str, merge_key: str | None,
                delete_list: bool = False) -> list:
    if not (strategy or "").startswith(patchmeta.MERGE):
        # atomic: the patch's list, its $patch elements dropped
        return [v for v in patch if not (isinstance(v, dict) and DIRECTIVE in v)]
    if not original and not patch:
        return original
    maps = _element_kind(original, patch)
    if not maps:
        if delete_list:
            return [v for v in original if not any(json_equal(v, d) for d in patch)]
        merged = _dedupe(original + patch)
        return _order(merged, patch, original, None)
    if not merge_key:
        raise BadRequest("cannot merge lists without merge key")
    original, patch = _special_elements(original, patch, merge_key)
    merged = list(original)
    for item in patch:
        if merge_key not in item:
            raise BadRequest(f"map: {_show(item)} does not contain declared merge key: {merge_key}")
        i = _find(merged, merge_key, item[merge_key])
        if i is None:
            merged.append(strategic_merge({}, item, schema))  # its own directives applied
        else:
            merged[i] = strategic_merge(merged[i], item, schema)
    return _order(merged, patch, original, merge_key)


def _element_kind(*lists: list) -> bool:
    """True for lists of objects, False for lists of primitives; BadRequest for a mixture."""
    kinds = {("map" if isinstance(v, dict) else "list" if isinstance(v, list) else "scalar")
             for lst in lists for v in lst}
    if "list" in kinds:
        raise BadRequest("lists of lists are not supported")
    if len(kinds) > 1:
        raise BadRequest(f"list element types are not identical: {_show(list(lists))}")
    return kinds == {"map"}


def _dedupe(items: list) -> list:
    out: list = []
    for v in items:
        if not any(json_equal(v, o) for o in out):
            out.append(v)
    return out


def _find(items: list, merge_key: str, value) -> int | None:
    for i, v in enumerate(items):
        if not isinstance(v, dict):
            raise BadRequest(f"value for key {i} is not a map.")
        if merge_key in v and json_equal(v[merge_key], value):
            return i
    return None


def _special_elements(original: list, patch: list, merge_key: str) -> tuple[list, list]:
    """Apply the patch's `$patch` elements: delete (by merge key) and replace (the list is
    the patch's other elements); the rest of the patch is merged by the caller."""
    rest, replace = [], False
    for item in patch:
        if DIRECTIVE not in item:
            rest.append(item)
            continue
        d = item[DIRECTIVE]
        if d == "delete":
            if merge_key not in item:
                raise BadRequest(f"map: {_show(item)} does not contain declared merge key: {merge_key}")
            original = [v for v in original if not (merge_key in v and json_equal(v[merge_key], item[merge_key]))]
        elif d == "replace":
            replace = True
        elif d == "merge":
            raise BadRequest("merging lists cannot yet be specified in the patch")
        else:
            raise BadRequest(f"unknown patch type: {d} in map: {_show(item)}")
    if replace:
        return rest, []
    return original, rest


def _ident(v, merge_key):
    return v.get(merge_key) if merge_key and isinstance(v, dict) else v


def _position(order: list, v, merge_key) -> int:
    key = _ident(v, merge_key)
    for i, o in enumerate(order):
        if json_equal(_ident(o, merge_key), key):
            return i
    return -1


def _order(merged: list, patch_order: list, server_order: list, merge_key: str | None) -> list:
    """Kubernetes' order of a merged list: the items the patch names in the patch's order,
    the others in the live order, interleaved where the live order places both."""
    in_patch = [v for v in merged if _position(patch_order, v, merge_key) >= 0]
    server_only = [v for v in merged if _position(patch_order, v, merge_key) < 0]
    in_patch.sort(key=lambda v: _position(patch_order, v, merge_key))
    server_only.sort(key=lambda v: _position(server_order, v, merge_key))
    out, i, j = [], 0, 0
    while i < len(server_only) or j < len(in_patch):
        if j >= len(in_patch):
            out.append(server_only[i])
            i += 1
        elif i >= len(server_only):
            out.append(in_patch[j])
            j += 1
        else:
            li = _position(server_order, server_only[i], merge_key)
            ri = _position(server_order, in_patch[j], merge_key)
            if li >= 0 and ri >= 0 and li < ri:
                out.append(server_only[i])
                i += 1
            else:
                out.append(in_patch[j])
                j += 1
    return out


def _set_element_orders(original: dict, patch: dict, schema: Schema) -> None:
    """`$setElementOrder/<field>`: merge that field's list now and put it in the given order."""
    for key in [k for k in patch if k.startswith(SET_ORDER)]:
        order = patch.pop(key)
        field = _directive_key(key, SET_ORDER, "invalid patch format of setElementOrder list")
        if not isinstance(order, list):
            raise BadRequest("invalid patch format of setElementOrder list")
        has_orig, has_patch = isinstance(original.get(field), list), field in patch
        if has_patch and not isinstance(patch[field], list):
            raise BadRequest("invalid patch format of setElementOrder list")
        if not has_orig and not has_patch:
            continue
        child, strategy, merge_key = schema.child(field)
        orig_list = original.get(field) if has_orig else []
        patch_list = patch.pop(field) if has_patch else []
        if has_orig and has_patch:
            merged = _merge_list(list(orig_list), patch_list, child, strategy, merge_key)
        else:
            merged = list(orig_list) if has_orig else [v for v in patch_list if not (
                isinstance(v, dict) and DIRECTIVE in v)]
        if merge_key:
            for v in merged + order:
                if not isinstance(v, dict) or merge_key not in v:
                    raise BadRequest(f"map: {_show(v)} does not contain declared merge key: {merge_key}")
        original[field] = _order(merged, order, orig_list, merge_key)
