"""Kubernetes YAML/JSON manifests to API messages and back, for `create -f`, `apply -f` and
`get -o yaml|json`.

The proto field names are Kubernetes' own, so a manifest maps one to one onto protobuf's JSON
mapping. This module adds what kubectl and the API server's decoder do around it: the
apiVersion/kind check, strict decoding that names every unknown field by its path
(`spec.containers[0].imagee`) and type errors worded as Go's JSON decoder words them, and the
YAML habits Kubernetes accepts (`cpu: 1` as a quantity, a label value YAML reads as a number).
On the way out, int64 fields become numbers again (protobuf's JSON writes them as strings).
"""
from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml
from google.protobuf.message import Message

from kubelab.api import kinds

# the codec lives with the API (the API server's HTTP face uses it too); re-exported here
from kubelab.api.codec import (  # noqa: F401
    QUANTITY_FIELDS,
    _json_type,
    _numbers,
    _repeated,
    decode,
    from_dict,
    to_dict,
)

from .common import CLIError


@dataclass
class Doc:
    source: str  # file name, or STDIN
    index: int  # 1-based position of the document in its file
    obj: Message

    @property
    def kind(self) -> kinds.Kind:
        return kinds.kind_of(self.obj)


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false, so `on`, `yes` and `no` stay strings."""


_Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in rs if tag != "tag:yaml.org,2002:bool"]
    for ch, rs in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def _compact(doc) -> str:
    return json.dumps(doc, separators=(",", ":"), default=str)[:200]


def parse_doc(doc, source: str, index: int, default_namespace: str = "",
              *, enforce_namespace: bool = False) -> Message:
    """One decoded document: kind and apiVersion checked, namespace defaulted for namespaced kinds."""
    if not isinstance(doc, dict):
        raise CLIError(f'unable to decode "{source}" (document {index}): a manifest is a mapping with '
                       f"apiVersion and kind, not {_json_type(doc)} {_compact(doc)}")
    api_version, kind_name = doc.get("apiVersion"), doc.get("kind")
    for key, label in (("kind", "Kind"), ("apiVersion", "apiVersion")):
        if not doc.get(key):
            raise CLIError(f"unable to decode \"{source}\" (document {index}): Object '{label}' is missing in "
                           f"'{_compact(doc)}'")
    kind = next((k for k in kinds.KINDS if k.kind == kind_name), None)
    if kind is None or kind.api_version != api_version:
        raise CLIError(f'unable to recognize "{source}": no matches for kind "{kind_name}" in version "{api_version}"')
    body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind")}
    try:
        obj = decode(body, kind)
    except ValueError as e:
        raise CLIError(f'error parsing {source} (document {index}): {kind_name} in version "{api_version}" '
                       f"cannot be handled as a {kind_name}: {e}") from None
    if not kind.namespaced:
        obj.metadata.ClearField("namespace")
    elif not obj.metadata.namespace:
        obj.metadata.namespace = default_namespace or "default"
    elif enforce_namespace and default_namespace and obj.metadata.namespace != default_namespace:
        raise CLIError(f'the namespace from the provided object "{obj.metadata.namespace}" does not match the '
                       f'namespace "{default_namespace}". You must pass \'--namespace={obj.metadata.namespace}\' '
                       "to perform this operation.")
    return obj


def read_sources(paths: list[str]) -> list[tuple[str, str]]:
    """(name, text) for each -f: a file, `-` for stdin, or a directory's .yaml/.yml/.json files sorted."""
    out = []
    for p in paths:
        try:
            if p == "-":
                out.append(("STDIN", sys.stdin.read()))
                continue
            path = Path(p)
            if path.is_dir():
                files = sorted(f for f in path.iterdir() if f.suffix in (".yaml", ".yml", ".json") and f.is_file())
                out += [(str(f), f.read_text()) for f in files]
            elif path.exists():
                out.append((p, path.read_text()))
            else:
                raise CLIError(f'the path "{p}" does not exist')
        except (OSError, UnicodeDecodeError) as e:
            raise CLIError(f'error reading "{p}": {e}') from None
    return out


def split_documents(source: str, text: str) -> list:
    """The documents of a file: one JSON object, or a multi-document YAML stream."""
    if text.lstrip().startswith(("{", "[")):
        try:
            return [json.loads(text)]
        except ValueError:
            pass  # YAML flow style, or broken JSON: let the YAML parser say where
    try:
        return list(yaml.load_all(text, Loader=_Loader))
    except yaml.YAMLError as e:
        mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None) or str(e)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise CLIError(f"error parsing {source}: error converting YAML to JSON: yaml: {where}{problem}") from None


def load(paths: list[str], default_namespace: str = "", *, enforce_namespace: bool = False,
         verb: str = "apply") -> list[Doc]:
    """Every object in the given files, in document order (`kind: List` items inline)."""
    docs: list[Doc] = []
    for source, text in read_sources(paths):
        for n, d in enumerate(split_documents(source, text), 1):
            if d is None:
                continue
            items = d["items"] if isinstance(d, dict) and str(d.get("kind", "")).endswith("List") and \
                isinstance(d.get("items"), list) else [d]
            for item in items:
                docs.append(Doc(source, n, parse_doc(item, source, n, default_namespace,
                                                     enforce_namespace=enforce_namespace)))
    if not docs:
        raise CLIError(f"no objects passed to {verb}")
    return docs


