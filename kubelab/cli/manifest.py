"""Kubernetes YAML/JSON manifests to API messages and back, for `create -f` and `apply -f`.

The proto field names are Kubernetes' own, so a manifest maps through protobuf's JSON mapping;
this module adds what kubectl's decoder does around it: apiVersion/kind checks, strict
unknown-field errors that name the field, and quantities written as YAML numbers.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml
from google.protobuf import json_format
from google.protobuf.message import Message

from kubelab.api import kinds

from .common import CLIError

QUANTITY_MAPS = {"requests", "limits", "capacity", "allocatable"}


@dataclass
class Doc:
    source: str
    index: int  # 1-based document number within its file
    obj: Message

    @property
    def kind(self) -> kinds.Kind:
        return kinds.kind_of(self.obj)


def read_sources(paths: list[str]) -> list[tuple[str, str]]:
    """(name, text) for each file; a directory means its .yaml/.yml/.json files, sorted."""
    out = []
    for p in paths:
        if p == "-":
            out.append(("STDIN", sys.stdin.read()))
            continue
        path = Path(p)
        if path.is_dir():
            files = sorted(f for f in path.iterdir() if f.suffix in (".yaml", ".yml", ".json"))
            if not files:
                raise CLIError(f'error reading "{p}": no .yaml, .yml or .json files in it')
            out += [(str(f), f.read_text()) for f in files]
        elif path.exists():
            out.append((p, path.read_text()))
        else:
            raise CLIError(f'the path "{p}" does not exist')
    return out


def _clean(x):
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items() if v is not None}
    if isinstance(x, list):
        return [_clean(v) for v in x if v is not None]
    return x


def _quantities_to_strings(x, key: str = ""):
    """YAML reads `cpu: 1` and `memory: 128974848` as numbers; the API wants quantity strings."""
    if isinstance(x, dict):
        if key in QUANTITY_MAPS:
            return {k: (str(v).lower() if isinstance(v, bool) else str(v)) if isinstance(v, (int, float)) else v
                    for k, v in x.items()}
        return {k: _quantities_to_strings(v, k) for k, v in x.items()}
    if isinstance(x, list):
        return [_quantities_to_strings(v, key) for v in x]
    return x


_UNKNOWN = re.compile(r'has no field named "([^"]+)" at "([^"]*)"')


def _strict_error(e: json_format.ParseError) -> str:
    msg = str(e).split("\n")[0]
    m = _UNKNOWN.search(msg)
    if m:
        field, at = m.groups()
        path = at.split(".", 1)[1] if "." in at else ""
        return f'strict decoding error: unknown field "{path + "." if path else ""}{field}"'
    return f"strict decoding error: {msg}"


def parse_doc(doc: dict, source: str, index: int, default_namespace: str = "") -> Message:
    where = f'error parsing {source}' + (f" (document {index})" if index > 1 or source != "STDIN" else "")
    if not isinstance(doc, dict):
        raise CLIError(f"{where}: a manifest must be a YAML mapping with apiVersion and kind")
    api_version, kind_name = doc.get("apiVersion"), doc.get("kind")
    if not kind_name:
        raise CLIError(f"{where}: Object 'Kind' is missing in '{_short(doc)}'")
    if not api_version:
        raise CLIError(f"{where}: Object 'apiVersion' is missing in '{_short(doc)}'")
    kind = next((k for k in kinds.KINDS if k.kind == kind_name and k.stored), None)
    if kind is None or kind.api_version != api_version:
        raise CLIError(f'unable to recognize "{source}": no matches for kind "{kind_name}" in version "{api_version}"')
    body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind")}
    body = _quantities_to_strings(_clean(body))
    obj = kind.message()
    try:
        json_format.ParseDict(body, obj, ignore_unknown_fields=False)
    except json_format.ParseError as e:
        raise CLIError(f'{where}: {kind_name} in version "{api_version}" cannot be handled as a {kind_name}: '
                       f"{_strict_error(e)}") from None
    if kind.namespaced and not obj.metadata.namespace and default_namespace:
        obj.metadata.namespace = default_namespace
    return obj


def _short(doc) -> str:
    return str(doc)[:80]


def load(paths: list[str], default_namespace: str = "") -> list[Doc]:
    docs: list[Doc] = []
    for source, text in read_sources(paths):
        try:
            raw = [d for d in yaml.safe_load_all(text)]
        except yaml.YAMLError as e:
            raise CLIError(f"error parsing {source}: {e}") from None
        n = 0
        for d in raw:
            if d is None:
                continue
            n += 1
            if isinstance(d, dict) and d.get("kind") == "List" and isinstance(d.get("items"), list):
                for item in d["items"]:
                    docs.append(Doc(source, n, parse_doc(item, source, n, default_namespace)))
            else:
                docs.append(Doc(source, n, parse_doc(d, source, n, default_namespace)))
    if not docs:
        raise CLIError("no objects passed to apply")
    return docs
