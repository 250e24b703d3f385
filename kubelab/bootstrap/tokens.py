"""Bootstrap tokens as kubeadm makes them: `<id>.<secret>` ([a-z0-9]{6}.[a-z0-9]{16}), stored
as the Secret kube-system/bootstrap-token-<id> of type bootstrap.kubernetes.io/token. The API
server's authenticator (master/apiserver/auth.py) checks them; the tokencleaner controller
deletes them once expired; `kubelab token` creates, lists and deletes them.
"""
from __future__ import annotations

import datetime as dt
import re
import secrets
from dataclasses import dataclass

from kubelab import meta
from kubelab.api.v1 import objects_pb2 as v1

TOKEN_RE = re.compile(r"^([a-z0-9]{6})\.([a-z0-9]{16})$")
SECRET_TYPE = "bootstrap.kubernetes.io/token"
NAMESPACE = "kube-system"
PREFIX = "bootstrap-token-"
DEFAULT_GROUPS = "system:bootstrappers:kubeadm:default-node-token"
DEFAULT_DESCRIPTION = "Bootstrap token for joining nodes"
_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"


class TokenError(ValueError):
    pass


@dataclass(frozen=True)
class Token:
    id: str
    secret: str
    expiration: str = ""  # RFC3339, "" for never
    usages: tuple[str, ...] = ("authentication", "signing")
    groups: tuple[str, ...] = ()
    description: str = ""

    def __str__(self) -> str:
        return f"{self.id}.{self.secret}"


def generate() -> str:
    return "".join(secrets.choice(_CHARS) for _ in range(6)) + "." + \
        "".join(secrets.choice(_CHARS) for _ in range(16))


def parse(token: str) -> tuple[str, str]:
    m = TOKEN_RE.match(token or "")
    if not m:
        raise TokenError(f'the token "{token}" is not of the form "[a-z0-9]{{6}}.[a-z0-9]{{16}}"')
    return m.group(1), m.group(2)


def parse_ttl(s: str) -> dt.timedelta:
    """A Go-style duration (24h, 1h30m, 90s, 0 for never)."""
    if s.strip() == "0":
        return dt.timedelta(0)
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|m|s)", s.strip())
    if not parts or "".join(n + u for n, u in parts) != s.strip():
        raise TokenError(f'invalid --ttl "{s}": use a duration such as 24h, 30m or 1h30m (0 for never)')
    unit = {"h": 3600, "m": 60, "s": 1}
    return dt.timedelta(seconds=sum(float(n) * unit[u] for n, u in parts))


def new_token(token: str = "", *, ttl: dt.timedelta = dt.timedelta(hours=24), groups=(DEFAULT_GROUPS,),
              description: str = "", usages=("authentication", "signing"), now: dt.datetime | None = None) -> Token:
    tid, sec = parse(token or generate())
    for g in groups:
        if not re.match(r"^system:bootstrappers:[a-z0-9:-]{0,255}[a-z0-9]$", g):
            raise TokenError(f'invalid extra group "{g}": must start with "system:bootstrappers:"')
    exp = meta.rfc3339((now or meta.now()) + ttl) if ttl else ""
    return Token(tid, sec, exp, tuple(usages), tuple(groups), description)


def to_secret(t: Token) -> v1.Secret:
    s = v1.Secret(type=SECRET_TYPE)
    s.metadata.name, s.metadata.namespace = PREFIX + t.id, NAMESPACE
    data = {"token-id": t.id, "token-secret": t.secret}
    if t.description:
        data["description"] = t.description
    if t.expiration:
        data["expiration"] = t.expiration
    for u in t.usages:
        data[f"usage-bootstrap-{u}"] = "true"
    if t.groups:
        data["auth-extra-groups"] = ",".join(t.groups)
    for k, v in data.items():
        s.data[k] = v.encode()
    return s


def from_secret(s: v1.Secret) -> Token | None:
    """The token a Secret holds, or None when it is not a well-formed bootstrap token Secret."""
    if s.type != SECRET_TYPE:
        return None
    d = {k: v.decode(errors="replace") for k, v in s.data.items()}
    if not TOKEN_RE.match(f"{d.get('token-id', '')}.{d.get('token-secret', '')}"):
        return None
    usages = tuple(k[len("usage-bootstrap-"):] for k, v in sorted(d.items())
                   if k.startswith("usage-bootstrap-") and v == "true")
    groups = tuple(g for g in d.get("auth-extra-groups", "").split(",") if g)
    return Token(d["token-id"], d["token-secret"], d.get("expiration", ""), usages, groups, d.get("description", ""))


def is_expired(t: Token, now: dt.datetime | None = None) -> bool:
    if not t.expiration:
        return False
    exp = meta.parse_time(t.expiration)
    return exp is None or exp <= (now or meta.now())
