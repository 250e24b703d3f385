"""Kubernetes JSON <-> API messages: the one codec of both faces' JSON (kubectl's manifests in
the CLI, request and response bodies in the API server's HTTP face, master/apiserver/rest).

The proto field names are Kubernetes' own, so an object maps one to one onto protobuf's JSON
mapping. This module adds what the API server's decoder does around it: strict decoding that
names every unknown field by its path (`spec.containers[0].imagee`), type errors worded as
Go's JSON decoder words them, and the YAML habits Kubernetes accepts (`cpu: 1` as a quantity,
a label value YAML reads as a number). On the way out, int64 fields become numbers again
(protobuf's JSON writes them as strings).
"""
from __future__ import annotations

import base64
import binascii
import re

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from kubelab.api import kinds

F = FieldDescriptor
_INTS = {F.TYPE_INT32: "int32", F.TYPE_INT64: "int64", F.TYPE_UINT32: "uint32", F.TYPE_UINT64: "uint64",
         F.TYPE_SINT32: "int32", F.TYPE_SINT64: "int64", F.TYPE_FIXED32: "uint32", F.TYPE_FIXED64: "uint64",
         F.TYPE_SFIXED32: "int32", F.TYPE_SFIXED64: "int64"}
_INT64S = {F.TYPE_INT64, F.TYPE_UINT64, F.TYPE_SINT64, F.TYPE_FIXED64, F.TYPE_SFIXED64}
_RANGE = {"int32": (-2**31, 2**31 - 1), "int64": (-2**63, 2**63 - 1), "uint32": (0, 2**32 - 1),
          "uint64": (0, 2**64 - 1)}
QUANTITY_FIELDS = {"sizeLimit"}  # quantity strings outside the string maps (requests, limits, ...)


def _repeated(f: FieldDescriptor) -> bool:
    rep = getattr(f, "is_repeated", None)  # protobuf >= 6; older ones only have .label
    return rep if rep is not None else f.label == F.LABEL_REPEATED


# -- decoding ------------------------------------------------------------------------------


class _TypeError(Exception):
    """The first type mismatch, worded as the API server's JSON decoder reports it."""


def _json_type(v) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(v), type(v).__name__)


def _go_type(f: FieldDescriptor, *, element: bool = False) -> str:
    if f.message_type is not None and f.message_type.GetOptions().map_entry:
        return "map[string]string"
    if f.message_type is not None:
        base = "v1." + f.message_type.name if f.message_type.full_name.startswith("kubelab.") else "interface {}"
    elif f.type == F.TYPE_STRING:
        base = "string"
    elif f.type == F.TYPE_BOOL:
        base = "bool"
    elif f.type == F.TYPE_BYTES:
        base = "[]uint8"
    elif f.type in _INTS:
        base = _INTS[f.type]
    else:
        base = "float64"
    return base if element or not _repeated(f) else "[]" + base


def _mismatch(v, f: FieldDescriptor, owner: Descriptor, path: str, element: bool = False) -> _TypeError:
    go_path = re.sub(r"\[\d+\]", "", path)
    what = _json_type(v)
    if what == "number" and f.type in _INTS and f.message_type is None:
        what = f"number {v}"
    return _TypeError(f"json: cannot unmarshal {what} into Go struct field {owner.name}.{go_path} "
                      f"of type {_go_type(f, element=element)}")


def _scalar(v, f: FieldDescriptor, owner: Descriptor, path: str):
    if f.type == F.TYPE_STRING:
        if f.name in QUANTITY_FIELDS and isinstance(v, (int, float)) and not isinstance(v, bool):
            return str(v)
        if isinstance(v, str):
            return v
    elif f.type == F.TYPE_BOOL:
        if isinstance(v, bool):
            return v
    elif f.type == F.TYPE_BYTES:  # Secret.data, ConfigMap.binaryData: base64 strings
        if isinstance(v, str):
            return v
    elif f.type in _INTS:
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        lo, hi = _RANGE[_INTS[f.type]]
        if isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi:
            return v
    elif isinstance(v, (int, float)) and not isinstance(v, bool):
        return v
    raise _mismatch(v, f, owner, path, element=True)


def _map_value(v):
    """Maps of strings (labels, annotations, nodeSelector, requests, limits, capacity...): YAML
    reads `cpu: 1`, `memory: 128974848` or `version: 2` as numbers; the API wants strings."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    return v


def _field(v, f: FieldDescriptor, owner: Descriptor, path: str, unknown: list[str]):
    if f.message_type is not None and f.message_type.GetOptions().map_entry:
        if not isinstance(v, dict):
            raise _mismatch(v, f, owner, path)
        val_f = f.message_type.fields_by_name["value"]
        out = {}
        for k, mv in v.items():
            if mv is None:
                continue
            if val_f.message_type is not None:
                out[str(k)] = _field(mv, val_f, f.message_type, f"{path}.{k}", unknown)
            else:
                out[str(k)] = _scalar(_map_value(mv) if val_f.type == F.TYPE_STRING else mv, val_f, owner, path)
        return out
    if _repeated(f):
        if not isinstance(v, list):
            raise _mismatch(v, f, owner, path)
        return [_element(e, f, owner, f"{path}[{i}]", unknown) for i, e in enumerate(v) if e is not None]
    return _element(v, f, owner, path, unknown)


def _element(v, f: FieldDescriptor, owner: Descriptor, path: str, unknown: list[str]):
    if f.message_type is None:
        return _scalar(v, f, owner, path)
    if f.message_type.full_name == "google.protobuf.Value":  # IntOrString (probe ports)
        if isinstance(v, (int, float, str)) and not isinstance(v, bool):
            return v
        raise _mismatch(v, f, owner, path, element=True)
    if not isinstance(v, dict):
        raise _mismatch(v, f, owner, path, element=True)
    return _message(v, f.message_type, path, unknown)


def _message(d: dict, desc: Descriptor, path: str, unknown: list[str]) -> dict:
    out = {}
    for k, v in d.items():
        p = f"{path}.{k}" if path else str(k)
        f = desc.fields_by_name.get(k) if isinstance(k, str) else None
        if f is None:
            unknown.append(p)
        elif v is not None:
            out[k] = _field(v, f, desc, p, unknown)
    return out


def decode(body: dict, kind: kinds.Kind) -> Message:
    """A manifest body (without apiVersion/kind) as the kind's message, strictly.

    Raises ValueError with the decoder's wording (`strict decoding error: unknown field ...`).
    """
    obj, unknown = decode_lenient(body, kind)
    if unknown:
        raise ValueError("strict decoding error: " + ", ".join(f'unknown field "{p}"' for p in unknown))
    return obj


def decode_lenient(body: dict, kind: kinds.Kind) -> tuple[Message, list[str]]:
    """The body as the kind's message with unknown fields dropped, and their paths (for the
    API server's fieldValidation=Warn|Ignore). Type errors still raise ValueError."""
    unknown: list[str] = []
    try:
        clean = _message(body, kind.message.DESCRIPTOR, "", unknown)
    except _TypeError as e:
        raise ValueError(str(e)) from None
    obj = kind.message()
    try:
        _build(clean, obj)
    except (TypeError, ValueError) as e:  # what the walk does not check: base64
        raise ValueError(str(e).split("\n")[0]) from None
    return obj, unknown


def _bytes(v: str, path: str) -> bytes:
    """JSON bytes: base64, standard or URL-safe, padding optional (as protobuf's JSON reads it)."""
    try:
        return base64.b64decode(v.replace("-", "+").replace("_", "/") + "=" * (-len(v) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{path}: illegal base64 data") from None


def _set_value(target, v) -> None:
    if isinstance(v, str):
        target.string_value = v
    else:
        target.number_value = v


def _build(d: dict, msg: Message, path: str = "") -> None:
    """Fill msg from a dict the walk above has checked (types and names right): one pass,
    instead of json_format.ParseDict's second walk (the HTTP face decodes every write)."""
    desc = msg.DESCRIPTOR
    for k, v in d.items():
        f = desc.fields_by_name[k]
        mt = f.message_type
        p = f"{path}.{k}" if path else k
        if mt is not None and mt.GetOptions().map_entry:
            target, val_f = getattr(msg, k), mt.fields_by_name["value"]
            if val_f.message_type is not None:
                for mk, mv in v.items():
                    _build(mv, target[mk], f"{p}.{mk}")
            elif val_f.type == F.TYPE_BYTES:
                target.update({mk: _bytes(mv, f"{p}.{mk}") for mk, mv in v.items()})
            else:
                target.update(v)
        elif _repeated(f):
            target = getattr(msg, k)
            if mt is None:
                target.extend([_bytes(x, f"{p}[{i}]") for i, x in enumerate(v)] if f.type == F.TYPE_BYTES else v)
            elif mt.full_name == "google.protobuf.Value":
                for x in v:
                    _set_value(target.add(), x)
            else:
                for i, x in enumerate(v):
                    _build(x, target.add(), f"{p}[{i}]")
        elif mt is None:
            setattr(msg, k, _bytes(v, p) if f.type == F.TYPE_BYTES else v)
        elif mt.full_name == "google.protobuf.Value":
            _set_value(getattr(msg, k), v)
        else:
            sub = getattr(msg, k)
            sub.SetInParent()  # `resources: {}` is set, if empty
            _build(v, sub, p)


# Fields Go's types write even at their zero value (no omitempty), by message: Kubernetes' JSON
# always has them, and clients built from its OpenAPI (the official Python client) refuse an
# object without them (a restartCount of 0, a node's empty bootID). Protobuf's JSON drops zero
# values, so the API server's HTTP face puts them back (to_dict(..., go_defaults=True)).
GO_ALWAYS: dict[str, tuple[str, ...]] = {
    "OwnerReference": ("apiVersion", "kind", "name", "uid"), "NamespaceCondition": ("status", "type"),
    "Taint": ("effect", "key"), "NodeCondition": ("status", "type"), "NodeAddress": ("address", "type"),
    "NodeSystemInfo": ("architecture", "bootID", "containerRuntimeVersion", "kernelVersion", "kubeProxyVersion",
                       "kubeletVersion", "machineID", "operatingSystem", "osImage", "systemUUID"),
    "DaemonEndpoint": ("Port",), "PodSpec": ("containers",), "Volume": ("name",),
    "HostPathVolumeSource": ("path",), "Container": ("name",), "ContainerPort": ("containerPort",),
    "EnvVar": ("name",), "VolumeMount": ("mountPath", "name"), "HTTPHeader": ("name", "value"),
    "PodCondition": ("status", "type"), "PodIP": ("ip",),
    "ContainerStatus": ("image", "imageID", "name", "ready", "restartCount"),
    "ContainerStateTerminated": ("exitCode",), "CertificateSigningRequestSpec": ("request", "signerName"),
    "CertificateSigningRequestCondition": ("status", "type"), "ServicePort": ("port",),
    "EndpointAddress": ("ip",), "EndpointSlice": ("addressType",), "Endpoint": ("addresses",),
    "EndpointPort": ("port",), "Event": ("involvedObject", "metadata"),
}


def _zero(f: FieldDescriptor):
    if _repeated(f):
        return {} if f.message_type is not None and f.message_type.GetOptions().map_entry else []
    if f.message_type is not None:
        return {}
    if f.type == F.TYPE_BOOL:
        return False
    if f.type in _INTS or f.type in (F.TYPE_FLOAT, F.TYPE_DOUBLE):
        return 0
    return ""


def _numbers(d: dict, desc: Descriptor, defaults: bool = False) -> dict:
    """Undo protobuf's JSON quirks in place: int64 as "30" and IntOrString 80 as 80.0; with
    defaults, also the zero values of GO_ALWAYS's fields."""
    if defaults:
        for name in GO_ALWAYS.get(desc.name, ()):
            if name not in d and name in desc.fields_by_name:
                d[name] = _zero(desc.fields_by_name[name])
    for k, v in d.items():
        f = desc.fields_by_name.get(k)
        if f is None:
            continue
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            val_f = f.message_type.fields_by_name["value"]
            if val_f.message_type is not None:
                for mv in v.values():
                    _numbers(mv, val_f.message_type, defaults)
            continue
        items = v if _repeated(f) else [v]
        if f.type in _INT64S:
            items = [int(x) for x in items]
        elif f.message_type is not None and f.message_type.full_name == "google.protobuf.Value":
            items = [int(x) if isinstance(x, float) and x.is_integer() else x for x in items]
        elif f.message_type is not None:
            for x in items:
                _numbers(x, f.message_type, defaults)
            continue
        else:
            continue
        d[k] = items if _repeated(f) else items[0]
    return d


def _encode(msg: Message, defaults: bool) -> dict:
    """The message as JSON data in one pass over its set fields (what MessageToDict and then
    _numbers give, int64 as numbers and IntOrString as written, at a third of their cost)."""
    out = {}
    for f, v in msg.ListFields():
        mt = f.message_type
        if mt is not None and mt.GetOptions().map_entry:
            val_f = mt.fields_by_name["value"]
            if val_f.message_type is not None:
                out[f.name] = {k: _encode(x, defaults) for k, x in v.items()}
            elif val_f.type == F.TYPE_BYTES:
                out[f.name] = {k: base64.b64encode(x).decode() for k, x in v.items()}
            else:
                out[f.name] = dict(v)
        elif mt is None:
            if f.type == F.TYPE_BYTES:
                v = [base64.b64encode(x).decode() for x in v] if _repeated(f) else base64.b64encode(v).decode()
            out[f.name] = list(v) if _repeated(f) else v
        elif mt.full_name == "google.protobuf.Value":
            out[f.name] = [_value(x) for x in v] if _repeated(f) else _value(v)
        else:
            out[f.name] = [_encode(x, defaults) for x in v] if _repeated(f) else _encode(v, defaults)
    if defaults:
        desc = msg.DESCRIPTOR
        for name in GO_ALWAYS.get(desc.name, ()):
            if name not in out and name in desc.fields_by_name:
                out[name] = _zero(desc.fields_by_name[name])
    return out


def _value(v):
    which = v.WhichOneof("kind")
    if which == "number_value":
        n = v.number_value
        return int(n) if n.is_integer() else n
    if which == "string_value":
        return v.string_value
    return json_format.MessageToDict(v)


def to_dict(obj: Message, *, go_defaults: bool = False) -> dict:
    """An object in Kubernetes' shape: apiVersion and kind first, then metadata, spec, status.
    go_defaults: with the zero-valued fields Kubernetes' JSON always carries (GO_ALWAYS)."""
    k = kinds.kind_of(obj)
    body = _encode(obj, go_defaults)
    for part in ("spec", "status"):
        if part in obj.DESCRIPTOR.fields_by_name and k.kind in ("Pod", "Node"):
            body.setdefault(part, {})
    return {"apiVersion": k.api_version, "kind": k.kind, **body}


def from_dict(doc: dict) -> Message:
    """The inverse of to_dict (for objects this program wrote, so not strict)."""
    kind = next(k for k in kinds.KINDS if k.kind == doc["kind"])
    body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind")}
    return json_format.ParseDict(body, kind.message())
