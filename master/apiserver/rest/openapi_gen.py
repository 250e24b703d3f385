"""Developer tool: regenerate openapi_descriptions.py, Kubernetes' descriptions and required
fields of the types and query parameters our OpenAPI documents publish.

The descriptions are facts of Kubernetes' API: its OpenAPI takes them from the Go types'
comments, which k8s.io/api and k8s.io/apimachinery also keep as SwaggerDoc maps
(types_swagger_doc_generated.go: `var map_Pod = map[string]string{"": ..., "spec": ...}`).
This reads those maps from checkouts of the two repositories, and the required fields and
Time-typed fields from the official Python client's models (`kubernetes`, a test dependency,
generated from the same OpenAPI), only for the messages and fields objects.proto has, and
writes them as a Python literal the API server imports (no runtime dependency, no package
data file). Without checkouts, descriptions come from the client alone, which drops them
for fields that reference another type.

The values of Kubernetes' enum fields (string types marked +enum in types.go, with their
constants) are read from the same k8s.io/api checkout, and appended to the description as
openapi-gen does ("Possible enum values: ...").

    .venv/bin/python -m master.apiserver.rest.openapi_gen [--k8s-api DIR --apimachinery DIR]
"""
from __future__ import annotations

import argparse
import inspect
import json
import re
from pathlib import Path

from kubelab.api import kinds

from . import openapi_names as openapi_schema

OUT = Path(__file__).with_name("openapi_descriptions.py")
_META_TYPES = ("ListMeta", "Status", "StatusDetails", "StatusCause", "DeleteOptions", "Preconditions",
               "WatchEvent")
# the client methods whose parameters are the ones our operations publish
_METHODS = ("list_namespaced_pod", "create_namespaced_pod", "replace_namespaced_pod", "patch_namespaced_pod",
            "delete_namespaced_pod", "read_namespaced_pod_log")


def _model(models, name: str):
    """The client's model class for a definition name (it prefixes a clashing name by group)."""
    pkg, _, short = name.rpartition(".")
    group = pkg.split(".")[-2]  # io.k8s.api.core.v1 -> core; ...apis.meta.v1 -> meta
    for cand in (group.capitalize() + "V1" + short, "V1" + short):
        cls = getattr(models, cand, None)
        if cls is not None and hasattr(cls, "model_fields"):
            return cls
    return None


_GO_MAP = re.compile(r'^var map_(\w+) = map\[string\]string\{\n(.*?)^\}', re.M | re.S)
_GO_ENTRY = re.compile(r'^\s*"((?:[^"\\]|\\.)*)":\s*"((?:[^"\\]|\\.)*)",\s*$', re.M)


def swagger_docs(api_dir: Path | None, machinery_dir: Path | None) -> dict[str, dict[str, str]]:
    """definition name -> {"": type description, field: description} from the Go SwaggerDoc maps."""
    files = {}
    if api_dir is not None:
        for group in ("core", "coordination", "certificates", "discovery", "authorization"):
            files[f"io.k8s.api.{group}.v1."] = Path(api_dir) / group / "v1" / "types_swagger_doc_generated.go"
    if machinery_dir is not None:
        files[openapi_schema.META] = Path(machinery_dir) / "pkg/apis/meta/v1/types_swagger_doc_generated.go"
    out: dict[str, dict[str, str]] = {}
    for prefix, path in files.items():
        for m in _GO_MAP.finditer(path.read_text()):
            # Go's string escapes here (\" \\ \n \t \u....) read the same as JSON's
            out[prefix + m.group(1)] = {json.loads(f'"{k}"'): json.loads(f'"{v}"')
                                        for k, v in _GO_ENTRY.findall(m.group(2))}
    # Go structs embedded inline: their fields are the outer type's in JSON
    for outer, inner in (("io.k8s.api.core.v1.Probe", "ProbeHandler"), ("io.k8s.api.core.v1.Volume", "VolumeSource")):
        if outer in out:
            out[outer] = {**{k: v for k, v in out.get("io.k8s.api.core.v1." + inner, {}).items() if k}, **out[outer]}
    return out


_GO_TYPE = re.compile(r"^type (\w+) (string|struct)\b")
_GO_FIELD = re.compile(r'^\t(\w+)\s+\*?(\w+)\s+`json:"(\w+)')
_GO_CONST = re.compile(r'^\s*(?:const\s+)?(\w+)\s+(\w+)\s*=\s*"([^"]*)"')


def go_enums(api_dir: Path | None) -> dict[str, dict[str, list[tuple[str, str]]]]:
    """definition name -> {field: [(value, comment)]} for the fields whose Go type is a string
    type marked +enum in k8s.io/api's types.go, as openapi-gen lists them."""
    if api_dir is None:
        return {}
    out: dict[str, dict[str, list[tuple[str, str]]]] = {}
    for group in ("core", "coordination", "certificates", "discovery", "authorization"):
        path = Path(api_dir) / group / "v1" / "types.go"
        if not path.exists():
            continue
        enum_types, values, fields = set(), {}, {}
        comment: list[str] = []
        struct = None
        for line in path.read_text().splitlines():
            if line.strip().startswith("//"):
                comment.append(line.strip()[2:].strip())
                continue
            m = _GO_TYPE.match(line)
            if m:
                if m.group(2) == "string" and any(c == "+enum" for c in comment):
                    enum_types.add(m.group(1))
                struct = m.group(1) if m.group(2) == "struct" else None
            elif line.startswith("}"):
                struct = None
            elif struct and _GO_FIELD.match(line):
                f = _GO_FIELD.match(line)
                fields.setdefault(struct, {})[f.group(3)] = f.group(2)
            elif _GO_CONST.match(line):
                c = _GO_CONST.match(line)
                text = " ".join(x for x in comment if x and not x.startswith("+"))
                if text.startswith(c.group(1) + " "):
                    text = text[len(c.group(1)) + 1:]
                values.setdefault(c.group(2), []).append((c.group(3), text))
            comment = []
        for struct, fs in fields.items():
            for json_name, go_type in fs.items():
                if go_type in enum_types and values.get(go_type):
                    out.setdefault(f"io.k8s.api.{group}.v1.{struct}", {})[json_name] = sorted(values[go_type])
    return out


def _with_enum(description: str, values: list[tuple[str, str]]) -> str:
    lines = ["Possible enum values:"] + [f' - `"{v}"`' + (f" {c}" if c else "") for v, c in values]
    return (description + "\n\n" if description else "") + "\n".join(lines)


def _type_doc(cls) -> str:
    doc = inspect.cleandoc(cls.__doc__ or "")
    return doc.split("\n\nAttributes:")[0].strip()


def _fields(cls) -> dict:
    return {(f.serialization_alias or f.alias or n): f for n, f in cls.model_fields.items()}


def _entry(cls, ours: set | None, go: dict[str, str]) -> dict:
    fields = _fields(cls)
    keep = [k for k in fields if ours is None or k in ours]
    entry = {"description": go.get("") or _type_doc(cls),
             "properties": {k: go.get(k) or fields[k].description or "" for k in keep},
             "required": [k for k in keep if fields[k].is_required()]}
    times = [k for k in keep if "datetime" in str(fields[k].annotation)]
    if times:
        entry["times"] = times
    return entry


def _params(client) -> dict:
    out = {}
    for m in _METHODS:
        for n, p in inspect.signature(getattr(client.CoreV1Api, m)).parameters.items():
            info = next((a for a in getattr(p.annotation, "__metadata__", ()) if hasattr(a, "description")), None)
            if info is None or not info.description or (n.startswith("_") and n != "_continue"):
                continue
            camel = re.sub(r"_([a-z])", lambda g: g.group(1).upper(), n.removeprefix("var_").lstrip("_"))
            out.setdefault(camel, info.description)
    return out


def generate(api_dir: Path | None = None, machinery_dir: Path | None = None) -> str:
    import kubernetes.client as client
    from kubernetes.client import models

    go = swagger_docs(api_dir, machinery_dir)
    enums = go_enums(api_dir)
    types: dict[str, dict] = {}
    pod = _fields(models.V1Pod)
    types["kind"] = {"apiVersion": pod["apiVersion"].description, "kind": pod["kind"].description}
    for desc in openapi_schema.all_messages():
        name = openapi_schema.definition_name(desc)
        cls = _model(models, name)
        if cls is not None:
            types[name] = _entry(cls, {f.name for f in desc.fields}, go.get(name, {}))
            for field, values in enums.get(name, {}).items():
                if field in types[name]["properties"]:
                    types[name]["properties"][field] = _with_enum(types[name]["properties"][field], values)
                    types[name].setdefault("enums", {})[field] = [v for v, _ in values]
    for k in kinds.KINDS:
        cls = _model(models, openapi_schema.list_name(k))
        if cls is not None:
            types[openapi_schema.list_name(k)] = _entry(cls, {"items", "metadata"},
                                                        go.get(openapi_schema.list_name(k), {}))
    for t in _META_TYPES:
        full = openapi_schema.META + t
        types[full] = _entry(getattr(models, "V1" + t), None, go.get(full, {}))
    from .openapi_meta import REVIEW_TYPES
    for name, fields in REVIEW_TYPES.items():
        types[name] = _entry(_model(models, name), set(fields), go.get(name, {}))
    for name in ("io.k8s.apimachinery.pkg.apis.meta.v1.Patch", "io.k8s.api.core.v1.ExtraValue"):
        if go.get(name, {}).get(""):
            types[name] = {"description": go[name][""], "properties": {}, "required": []}
    version = getattr(client, "__version__", "?")
    return ('"""Kubernetes\' descriptions and required fields of the types and query parameters kubelab\'s\n'
            f'OpenAPI publishes, as the official client {version} carries them. Generated by openapi_gen.py:\n'
            'do not edit by hand."""\n'
            "# flake8: noqa\n"
            f"TYPES = {_literal(types)}\n\n"
            f"PARAMETERS = {_literal(_params(client))}\n")


def _literal(data) -> str:
    # only dicts, lists and strings: their JSON is also a Python literal
    return json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--k8s-api", type=Path, help="a checkout of k8s.io/api (github.com/kubernetes/api)")
    p.add_argument("--apimachinery", type=Path, help="a checkout of k8s.io/apimachinery")
    a = p.parse_args()
    OUT.write_text(generate(a.k8s_api, a.apimachinery))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
