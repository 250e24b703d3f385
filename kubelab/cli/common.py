"""What every CLI verb shares: connecting with the user's config, resolving resource names,
and turning failures into kubectl's wording with exit code 1 (never a traceback)."""
from __future__ import annotations

import functools
import sys

from kubelab.api import kinds
from kubelab.client.client import Client
from kubelab.client.config import ConfigError, load_default
from kubelab.errors import ApiError, ServiceUnavailable


class CLIError(Exception):
    """A user error the CLI reports as `error: ...`."""


def connect(args) -> Client:
    cfg = load_default(getattr(args, "config", None))
    client = Client.from_config(cfg, timeout=30)
    client.server = cfg.server
    return client


def resolve_kind(name: str) -> kinds.Kind:
    try:
        k = kinds.lookup(name)
    except KeyError:
        raise CLIError(f'the server doesn\'t have a resource type "{name}"') from None
    if not k.stored:
        raise CLIError(f'the server doesn\'t have a resource type "{name}"')
    return k


def namespace_of(args) -> str:
    return getattr(args, "namespace", None) or "default"


def err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cli_command(fn):
    """Wrap an async verb: kubectl-style errors on stderr and exit code 1."""
    @functools.wraps(fn)
    async def wrapper(args):
        try:
            return await fn(args) or 0
        except ConfigError as e:
            err(f"error: {e}")
        except CLIError as e:
            err(f"error: {e}")
        except ServiceUnavailable as e:
            server = getattr(args, "_server", "") or "the API server"
            err(f"error: the server at {server} is unavailable: {e.message}")
        except ApiError as e:
            err(e.kubectl())
        return 1
    return wrapper


def add_namespace_flags(p, *, all_namespaces: bool = False) -> None:
    p.add_argument("-n", "--namespace", default=None, help="namespace (default: default)")
    if all_namespaces:
        p.add_argument("-A", "--all-namespaces", action="store_true", help="list across all namespaces")
