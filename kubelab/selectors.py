"""Label and field selectors, parsed and matched the same way in the API server (List,
Watch, watch cache) and in clients (informer indexes, the CLI's `-l`).

Label selectors take Kubernetes' syntax: `a=b`, `a==b`, `a!=b`, `a in (x,y)`,
`a notin (x)`, `a`, `!a`, comma-separated (all must hold). Field selectors take
`path=value`, `path==value`, `path!=value` over the fields a kind declares.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from kubelab.errors import BadRequest

_KEY = r"[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?"
_REQ = re.compile(
    rf"^\s*(?:(?P<not>!)\s*(?P<nkey>{_KEY})"
    rf"|(?P<key>{_KEY})\s*(?:(?P<op>==|=|!=)\s*(?P<val>[-A-Za-z0-9_.]*)"
    rf"|\s+(?P<setop>in|notin)\s*\((?P<set>[^)]*)\))?)\s*$")


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!"
    values: tuple[str, ...] = ()

    def matches(self, labels) -> bool:
        has = self.key in labels
        if self.op == "exists":
            return has
        if self.op == "!":
            return not has
        v = labels.get(self.key)
        if self.op == "=":
            return has and v == self.values[0]
        if self.op == "!=":
            return not has or v != self.values[0]
        if self.op == "in":
            return has and v in self.values
        return not has or v not in self.values  # notin


def _split(selector: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts, depth, cur = [], 0, []
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p for p in (s.strip() for s in parts) if p]


class LabelSelector:
    def __init__(self, requirements: tuple[Requirement, ...] = ()):
        self.requirements = requirements

    @classmethod
    def parse(cls, selector: str | None) -> "LabelSelector":
        reqs = []
        for part in _split(selector or ""):
            m = _REQ.match(part)
            if not m:
                raise BadRequest(f'unable to parse requirement: invalid label selector "{part}"')
            if m["not"]:
                reqs.append(Requirement(m["nkey"], "!"))
            elif m["op"]:
                reqs.append(Requirement(m["key"], "!=" if m["op"] == "!=" else "=", (m["val"],)))
            elif m["setop"]:
                vals = tuple(v.strip() for v in m["set"].split(",") if v.strip())
                reqs.append(Requirement(m["key"], m["setop"], vals))
            else:
                reqs.append(Requirement(m["key"], "exists"))
        return cls(tuple(reqs))

    @classmethod
    def from_dict(cls, labels: dict[str, str]) -> "LabelSelector":
        return cls(tuple(Requirement(k, "=", (v,)) for k, v in sorted(labels.items())))

    def empty(self) -> bool:
        return not self.requirements

    def matches(self, labels) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def __str__(self) -> str:
        out = []
        for r in self.requirements:
            if r.op in ("=", "!="):
                out.append(f"{r.key}{r.op}{r.values[0]}")
            elif r.op == "exists":
                out.append(r.key)
            elif r.op == "!":
                out.append("!" + r.key)
            else:
                out.append(f"{r.key} {r.op} ({','.join(r.values)})")
        return ",".join(out)


class FieldSelector:
    def __init__(self, terms: tuple[tuple[str, bool, str], ...] = ()):
        self.terms = terms  # (path, equal, value)

    @classmethod
    def parse(cls, selector: str | None, allowed: tuple[str, ...] | None = None,
              kind: str = "") -> "FieldSelector":
        terms = []
        for part in _split(selector or ""):
            m = re.match(r"^\s*([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*?)\s*$", part)
            if not m:
                raise BadRequest(f'invalid field selector: "{part}"')
            path, op, val = m.groups()
            if allowed is not None and path not in allowed:
                raise BadRequest(f'field label not supported: {path}' + (f" (for {kind})" if kind else ""))
            terms.append((path, op != "!=", val))
        return cls(tuple(terms))

    def empty(self) -> bool:
        return not self.terms

    def paths(self) -> tuple[str, ...]:
        return tuple(t[0] for t in self.terms)

    def matches(self, fields: dict[str, str]) -> bool:
        return all((fields.get(p, "") == v) == eq for p, eq, v in self.terms)


def field_value(obj, path: str) -> str:
    """Read a dotted field path off a message as the string a field selector compares."""
    cur = obj
    for part in path.split("."):
        cur = getattr(cur, part)
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur)


def field_set(obj, paths: tuple[str, ...]) -> dict[str, str]:
    return {p: field_value(obj, p) for p in paths}
