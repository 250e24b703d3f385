"""Image references as the kubelet and the image store speak them: the Docker reference
grammar, normalized the way `docker pull` and containerd do (`nginx` is
`docker.io/library/nginx:latest`). Pure functions; the image store keys its OCI layout by the
normalized form, so `busybox`, `busybox:latest` and `docker.io/library/busybox` are one image.
"""
from __future__ import annotations

import re
from typing import NamedTuple

DEFAULT_DOMAIN = "docker.io"
_LEGACY_DOMAINS = {"index.docker.io", "registry-1.docker.io"}

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DOMAIN = re.compile(r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
                     r"(?::[0-9]+)?|\[[0-9a-fA-F:]+\](?::[0-9]+)?")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-fA-F0-9]{32,}")


class InvalidReference(ValueError):
    """A reference that the Docker grammar rejects; the message says which and why."""


class Reference(NamedTuple):
    domain: str
    path: str       # "library/nginx"
    tag: str        # "" when pinned by digest only
    digest: str     # "" unless given

    @property
    def repository(self) -> str:
        return f"{self.domain}/{self.path}"

    def __str__(self) -> str:
        s = self.repository
        if self.tag:
            s += ":" + self.tag
        if self.digest:
            s += "@" + self.digest
        return s


def parse(ref: str) -> Reference:
    """Parse and normalize; raises InvalidReference with the reason."""
    original = ref
    ref = ref.strip()
    if not ref:
        raise InvalidReference("invalid reference format: empty image name")
    name, _, digest = ref.partition("@")
    if digest and not _DIGEST.fullmatch(digest):
        raise InvalidReference(f'invalid reference format: bad digest in "{original}"')
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        domain, remainder = first, rest
    else:
        domain, remainder = DEFAULT_DOMAIN, name
    if domain in _LEGACY_DOMAINS:
        domain = DEFAULT_DOMAIN
    if not _DOMAIN.fullmatch(domain):
        raise InvalidReference(f'invalid reference format: bad registry "{domain}" in "{original}"')
    path, tag = remainder, ""
    last = remainder.rsplit("/", 1)[-1]
    if ":" in last:
        path, tag = remainder.rsplit(":", 1)
        if not _TAG.fullmatch(tag):
            raise InvalidReference(f'invalid reference format: bad tag "{tag}" in "{original}"')
    if path != path.lower():
        raise InvalidReference(f'invalid reference format: repository name must be lowercase: "{original}"')
    parts = path.split("/")
    if not all(_COMPONENT.fullmatch(p) for p in parts):
        raise InvalidReference(f'invalid reference format: "{original}"')
    if domain == DEFAULT_DOMAIN and len(parts) == 1:
        path = "library/" + path
    if not tag and not digest:
        tag = "latest"
    return Reference(domain, path, tag, digest)


def normalize(ref: str) -> str:
    """`nginx` -> `docker.io/library/nginx:latest`; digests are kept."""
    return str(parse(ref))


def split(ref: str) -> tuple[str, str]:
    """(repository, tag-or-digest) of a normalized reference, for `image ls` columns."""
    r = parse(ref)
    return r.repository, (r.tag or r.digest)


def is_loopback_registry(domain: str) -> bool:
    host = domain.rsplit(":", 1)[0] if not domain.startswith("[") else domain.split("]")[0] + "]"
    return host in ("localhost", "[::1]") or host.startswith("127.")
