"""What every kubectl-like verb of the CLI shares: connecting with the user's client config,
resolving what the user typed to a kind, running many writes with a bounded number in flight,
and turning failures into kubectl's wording with exit code 1 (never a traceback).
"""
from __future__ import annotations

import asyncio
import functools
import sys
from typing import Awaitable, Callable, Iterable, TypeVar

from kubelab.api import kinds
from kubelab.client.client import Client
from kubelab.client.config import ConfigError, load_default
from kubelab.errors import ApiError, ServiceUnavailable

T = TypeVar("T")
R = TypeVar("R")
IN_FLIGHT = 48  # concurrent writes for -f with many objects: enough to keep etcd busy


class CLIError(Exception):
    """A user error the CLI reports as `error: ...`."""


def connect(args) -> Client:
    """A client from --config, $KUBELAB_CONFIG or ~/.kubelab/config (use as `async with`)."""
    cfg = load_default(getattr(args, "config", None))
    args._server = cfg.server  # for the "server is unavailable" message
    return Client.from_config(cfg, timeout=30)


def resolve_kind(name: str) -> kinds.Kind:
    """pods, pod, po, Pod -> the Pod kind; kubectl's error for anything the server lacks."""
    try:
        k = kinds.lookup(name)
    except KeyError:
        k = None
    if k is None or not k.stored:
        raise CLIError(f'the server doesn\'t have a resource type "{name}"')
    return k


def err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def unavailable(server: str, e: ServiceUnavailable) -> str:
    detail = e.message.removeprefix("the server is unavailable: ")
    return f"error: the server at {server or 'the configured address'} is unavailable: {detail}"


def cli_command(fn):
    """Wrap an async verb: kubectl-style errors on stderr and exit code 1."""
    @functools.wraps(fn)
    async def wrapper(args):
        try:
            return await fn(args) or 0
        except (ConfigError, CLIError) as e:
            err(f"error: {e}")
        except ServiceUnavailable as e:
            err(unavailable(getattr(args, "_server", ""), e))
        except ApiError as e:
            err(e.kubectl())
        return 1
    return wrapper


async def bounded_gather(fn: Callable[[T], Awaitable[R]], items: Iterable[T], limit: int = IN_FLIGHT) -> list[R]:
    """fn over items with at most `limit` calls in flight; results in the order of items."""
    sem = asyncio.Semaphore(limit)

    async def one(item: T) -> R:
        async with sem:
            return await fn(item)

    return list(await asyncio.gather(*(one(i) for i in items)))


async def write_all(docs, fn) -> dict:
    """fn(doc) for every manifest document, many at once but in phases: Namespaces first (the
    rest may live in them), Bindings last (their pods may be in the same file). Returns
    id(doc) -> fn's result, or the ApiError/CLIError it raised."""
    async def one(d):
        try:
            return await fn(d)
        except (ApiError, CLIError) as e:
            return e

    results: dict = {}
    for phase in (("Namespace",), None, ("Binding",)):
        batch = [d for d in docs if (d.kind.kind in phase if phase else
                                     d.kind.kind not in ("Namespace", "Binding"))]
        results.update(zip(map(id, batch), await bounded_gather(one, batch)))
    return results


def add_namespace_flags(p, *, all_namespaces: bool = False) -> None:
    """-n (and -A); also lets flags and names mix in any order, as kubectl does
    (`get po -n dev nginx`), which argparse only does in its intermixed mode."""
    _intermixed(p)
    p.add_argument("-n", "--namespace", default=None, help="namespace (default: default)")
    if all_namespaces:
        p.add_argument("-A", "--all-namespaces", action="store_true", help="list across all namespaces")


def split_type_names(resource: str, names: list[str]) -> list[tuple[kinds.Kind, str]]:
    """`pod a b`, `pod/a pod/b` or `pods/a node/n1` -> [(kind, name)], as kubectl accepts them."""
    args = [resource, *names]
    if all("/" in a for a in args):
        return [(resolve_kind(a.split("/", 1)[0]), a.split("/", 1)[1]) for a in args]
    if any("/" in a for a in args):
        raise CLIError("there is no need to specify a resource type as a separate argument when passing "
                       "arguments in resource/name form")
    kind = resolve_kind(resource)
    return [(kind, n) for n in names]


def report(docs, results: dict, args, action: str) -> int:
    """Print each document's outcome (a line, or the error) in document order; 1 if any failed.

    results maps id(doc) to kubectl's line for it, or the ApiError/CLIError it ended with.
    """
    failed, said_unavailable = 0, False
    for d in docs:
        r = results[id(d)]
        if isinstance(r, str):
            print(r, flush=True)
            continue
        failed = 1
        if isinstance(r, ServiceUnavailable):
            if not said_unavailable:
                err(unavailable(getattr(args, "_server", ""), r))
            said_unavailable = True
        elif isinstance(r, ApiError):
            err(f'Error from server ({r.reason}): error when {action} "{d.source}": {r.message}')
        else:
            err(f"error: {r}")
    return failed


def _intermixed(p) -> None:
    def parse_known_args(args=None, namespace=None):
        del p.parse_known_args  # the class's own method while the intermixed parse calls it
        try:
            return p.parse_known_intermixed_args(args, namespace)
        finally:
            p.parse_known_args = parse_known_args
    p.parse_known_args = parse_known_args
