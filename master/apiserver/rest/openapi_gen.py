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
    types: dict[str, dict] = {}
    pod = _fields(models.V1Pod)
    types["kind"] = {"apiVersion": pod["apiVersion"].description, "kind": pod["kind"].description}
    for desc in openapi_schema.all_messages():
        name = openapi_schema.definition_name(desc)
        cls = _model(models, name)
        if cls is not None:
            types[name] = _entry(cls, {f.name for f in desc.fields}, go.get(name, {}))
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
