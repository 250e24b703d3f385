"""The kinds' schemas for OpenAPI (master/apiserver/rest/openapi.py), built from the protobuf
descriptors of kubelab/api/v1 — the same messages the stores keep and the codec decodes, so
what `kubectl explain` shows and what the server accepts cannot drift apart.

Names are Kubernetes' own (io.k8s.api.core.v1.Pod, io.k8s.apimachinery.pkg.apis.meta.v1.
ObjectMeta, ...), types follow Kubernetes' JSON (int64 -> integer/int64, bytes -> string/byte,
maps -> additionalProperties, IntOrString, Quantity, Time), the patch extensions come from
kubelab/api/patchmeta.py and the descriptions and required fields are Kubernetes' (facts taken
by openapi_gen.py into openapi_descriptions.py). One builder serves both documents: `ref` is
the prefix of a reference ("#/definitions/" for v2, "#/components/schemas/" for v3).
"""
from __future__ import annotations

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from kubelab.api import kinds, patchmeta
from kubelab.api.v1 import objects_pb2

from .openapi_descriptions import TYPES as _DOCS
from .openapi_names import META, all_messages, definition_name, gvk, list_name  # noqa: F401

F = FieldDescriptor
INTSTR = "io.k8s.apimachinery.pkg.util.intstr.IntOrString"
QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"
TIME = META + "Time"
MICROTIME = META + "MicroTime"

# string fields that are Kubernetes Times (RFC 3339) or MicroTimes, and quantity strings
_MICROTIMES = {("LeaseSpec", "acquireTime"), ("LeaseSpec", "renewTime"), ("Event", "eventTime")}
_QUANTITIES = {("ResourceRequirements", "limits"), ("ResourceRequirements", "requests"),
               ("NodeStatus", "capacity"), ("NodeStatus", "allocatable"),
               ("EmptyDirVolumeSource", "sizeLimit")}
_INTS = {F.TYPE_INT32: "int32", F.TYPE_SINT32: "int32", F.TYPE_SFIXED32: "int32", F.TYPE_UINT32: "int32",
         F.TYPE_FIXED32: "int32", F.TYPE_INT64: "int64", F.TYPE_SINT64: "int64", F.TYPE_SFIXED64: "int64",
         F.TYPE_UINT64: "int64", F.TYPE_FIXED64: "int64"}

# the scalar types Kubernetes names (our protos carry them as strings or google.protobuf.Value)
_SCALARS = {
    INTSTR: {"type": "string", "format": "int-or-string",
             "description": "IntOrString is a type that can hold an int32 or a string.  When used in JSON or "
                            "YAML marshalling and unmarshalling, it produces or consumes the inner type.  This "
                            "allows you to have, for example, a JSON field that can accept a name or number."},
    QUANTITY: {"type": "string",
               "description": "Quantity is a fixed-point representation of a number. It provides convenient "
                              "marshaling/unmarshaling in JSON and YAML, in addition to String() and AsInt64() "
                              "accessors.\n\nThe serialization format is:\n\n<quantity> ::= <signedNumber>"
                              "<suffix>\n\n(Note that <suffix> may be empty, from the \"\" case in "
                              "<decimalSI>.)\n\n<suffix> ::= <binarySI> | <decimalExponent> | <decimalSI>\n\n"
                              "<binarySI> ::= Ki | Mi | Gi | Ti | Pi | Ei\n\n<decimalSI> ::= m | \"\" | k | M | "
                              "G | T | P | E"},
    TIME: {"type": "string", "format": "date-time",
           "description": "Time is a wrapper around time.Time which supports correct marshaling to YAML and "
                          "JSON.  Wrappers are provided for many of the factory methods that the time package "
                          "offers."},
    MICROTIME: {"type": "string", "format": "date-time",
                "description": "MicroTime is version of Time with microsecond level precision."},
}

# in v3 these scalars say which JSON types they take (v2 calls both strings)
_V3_ONE_OF = {INTSTR: ("integer", "string"), QUANTITY: ("string", "number")}


def _is_map(f: FieldDescriptor) -> bool:
    return f.message_type is not None and f.message_type.GetOptions().map_entry


def _ref(ref: str, name: str) -> dict:
    return {"$ref": ref + name}


def _value(desc: Descriptor, f: FieldDescriptor, ref: str, times: set) -> dict:
    """The schema of one value of field f (an element, for a list or a map)."""
    if f.message_type is not None:
        if f.message_type.full_name == "google.protobuf.Value":
            return _ref(ref, INTSTR)
        return _ref(ref, definition_name(f.message_type))
    if (desc.name, f.name) in _QUANTITIES:
        return _ref(ref, QUANTITY)
    if f.type == F.TYPE_STRING and (desc.name, f.name) in _MICROTIMES:
        return _ref(ref, MICROTIME)
    if f.type == F.TYPE_STRING and f.name in times:
        return _ref(ref, TIME)
    if f.type == F.TYPE_BOOL:
        return {"type": "boolean"}
    if f.type in _INTS:
        return {"type": "integer", "format": _INTS[f.type]}
    if f.type in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        return {"type": "number", "format": "double"}
    if f.type == F.TYPE_BYTES:
        return {"type": "string", "format": "byte"}
    return {"type": "string"}


def field_schema(desc: Descriptor, f: FieldDescriptor, ref: str, *, v3: bool) -> dict:
    """One property of a definition, with its description and patch extensions."""
    doc = _DOCS.get(definition_name(desc), {})
    times = set(doc.get("times", ()))
    if _is_map(f):
        s = {"type": "object", "additionalProperties": _value(desc, f.message_type.fields_by_name["value"], ref,
                                                              set())}
        if (desc.name, f.name) in _QUANTITIES:
            s["additionalProperties"] = _ref(ref, QUANTITY)
    elif f.is_repeated:
        s = {"type": "array", "items": _value(desc, f, ref, times)}
    else:
        s = _value(desc, f, ref, times)
        if "$ref" in s and v3:
            # a $ref's siblings are ignored in OpenAPI 3.0: Kubernetes wraps it in allOf
            s = {"allOf": [s]}
    description = doc.get("properties", {}).get(f.name)
    if description:
        s["description"] = description
    if f.name in doc.get("enums", {}):
        s["enum"] = list(doc["enums"][f.name])
    strategy, key = patchmeta.tags(desc, f.name)
    if key:
        s["x-kubernetes-patch-merge-key"] = key
    if strategy:
        s["x-kubernetes-patch-strategy"] = strategy
    return s


def required_fields(desc: Descriptor) -> tuple[str, ...]:
    """The fields of a message that Kubernetes' OpenAPI marks required (Go fields without
    omitempty). The HTTP face's encoder writes the zero values of such fields that proto3's
    JSON drops (kubelab.api.codec.GO_ALWAYS, checked against this list by test_openapi)."""
    return tuple(_DOCS.get(definition_name(desc), {}).get("required", ()))


def message_schema(desc: Descriptor, ref: str, *, v3: bool, kind: kinds.Kind | None = None) -> dict:
    """The definition of one message; a kind's also has apiVersion, kind and its GVK."""
    doc = _DOCS.get(definition_name(desc), {})
    props = {}
    if kind is not None:
        common = _DOCS.get("kind", {})
        props["apiVersion"] = {"type": "string", "description": common.get("apiVersion", "")}
        props["kind"] = {"type": "string", "description": common.get("kind", "")}
    for f in desc.fields:
        props[f.name] = field_schema(desc, f, ref, v3=v3)
    s = {"type": "object", "properties": dict(sorted(props.items()))}
    if doc.get("description"):
        s["description"] = doc["description"]
    required = [n for n in doc.get("required", ()) if n in props]
    if required:
        s["required"] = required
    if kind is not None:
        s["x-kubernetes-group-version-kind"] = [gvk(kind)]
    return s


def _reachable(desc: Descriptor, seen: dict) -> None:
    if desc.full_name == "google.protobuf.Value" or definition_name(desc) in seen:
        return
    seen[definition_name(desc)] = desc
    for f in desc.fields:
        m = f.message_type
        if m is None:
            continue
        if _is_map(f):
            m = m.fields_by_name["value"].message_type
            if m is None:
                continue
        _reachable(m, seen)


def _refs(schema, out: set) -> None:
    if isinstance(schema, dict):
        r = schema.get("$ref")
        if r:
            out.add(r.rpartition("/")[2])
        for v in schema.values():
            _refs(v, out)
    elif isinstance(schema, list):
        for v in schema:
            _refs(v, out)


def definitions(kind_list, ref: str, *, v3: bool) -> dict:
    """Every definition the kinds need: their messages and everything those reference, their
    lists, and the meta types the operations name (ListMeta, Status, DeleteOptions, Patch)."""
    from .openapi_meta import json_kind_definitions, list_definition, meta_definitions
    seen: dict[str, Descriptor] = {}
    with_messages = [k for k in kind_list if k.message is not None]
    for k in with_messages:
        _reachable(k.message.DESCRIPTOR, seen)
    if len(with_messages) < len(kind_list):  # a JSON-only kind still has an ObjectMeta
        _reachable(objects_pb2.ObjectMeta.DESCRIPTOR, seen)
    by_desc = {k.message.DESCRIPTOR: k for k in with_messages}
    out = {name: message_schema(d, ref, v3=v3, kind=by_desc.get(d)) for name, d in seen.items()}
    for k in kind_list:
        if k.stored:
            out[list_name(k)] = list_definition(k, ref)
    out.update(meta_definitions(ref, v3=v3))
    if len(with_messages) < len(kind_list):
        out.update(json_kind_definitions(ref, v3=v3))
    used: set = set()
    _refs(out, used)
    for name in used:
        if name in _SCALARS:
            out[name] = dict(_SCALARS[name])
            if v3 and name in _V3_ONE_OF:
                # v3 says what the JSON may hold (kubectl explain then names the type: <IntOrString>)
                del out[name]["type"]
                out[name]["oneOf"] = [{"type": t} for t in _V3_ONE_OF[name]]
    return dict(sorted(out.items()))
