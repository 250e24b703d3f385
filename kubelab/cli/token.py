"""`kubelab token create|list|delete`: bootstrap tokens, as `kubeadm token` manages them.

A token is the Secret kube-system/bootstrap-token-<id> (kubelab/bootstrap/tokens.py); the
API server accepts it as a bearer token for joining nodes (authentication and the signing
request of TLS bootstrap), and the tokencleaner controller deletes it once expired.
`create --print-join-command` prints the whole `kubelab join` line, with the CA pin.
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt

from kubelab import meta, pki
from kubelab.bootstrap import tokens
from kubelab.client.config import load_default
from kubelab.errors import AlreadyExists, NotFound

from .common import CLIError, cli_command, connect
from .printers import format_table, human_duration


def without_defaults(parents: list[argparse.ArgumentParser]) -> list[argparse.ArgumentParser]:
    """The common flags (--config, -v) once more for `token VERB`, with no defaults: argparse
    copies a nested parser's defaults over what the outer one parsed, so a default there would
    undo `kubelab token --config X list`."""
    out = copy.deepcopy(parents)
    for parser in out:
        for action in parser._actions:
            action.default = argparse.SUPPRESS
    return out


def register(sub, parents) -> None:
    p = sub.add_parser("token", parents=parents, help="Manage bootstrap tokens for joining nodes")
    tsub = p.add_subparsers(dest="token_command", required=True)
    parents = without_defaults(parents)
    c = tsub.add_parser("create", parents=parents, help="Create a bootstrap token (printed on stdout)")
    c.add_argument("token", nargs="?", default="", help="the token to create ([a-z0-9]{6}.[a-z0-9]{16}); "
                   "default: a random one")
    c.add_argument("--ttl", default="24h", help="how long until the token expires (0: never)")
    c.add_argument("--description", default="", help="a human-friendly description of its use")
    c.add_argument("--usages", default="signing,authentication",
                   help="comma-separated: signing, authentication")
    c.add_argument("--groups", default=tokens.DEFAULT_GROUPS,
                   help="extra groups the token authenticates as (system:bootstrappers:*)")
    c.add_argument("--print-join-command", action="store_true",
                   help="print the whole `kubelab join` command instead of the token")
    c.set_defaults(func=create)
    ls = tsub.add_parser("list", parents=parents, help="List the bootstrap tokens")
    ls.set_defaults(func=list_tokens)
    d = tsub.add_parser("delete", parents=parents, help="Delete bootstrap tokens (by ID or whole token)")
    d.add_argument("ids", nargs="+", metavar="TOKEN_ID")
    d.set_defaults(func=delete)


def join_command(server: str, token: str, ca_pem: bytes) -> str:
    return f"kubelab join {server} --token {token} --discovery-token-ca-cert-hash {pki.ca_cert_hash(ca_pem)}"


@cli_command
async def create(args) -> int:
    usages = [u.strip() for u in args.usages.split(",") if u.strip()]
    bad = [u for u in usages if u not in ("signing", "authentication")]
    if bad:
        raise CLIError(f'invalid --usages "{",".join(bad)}": valid usages are signing, authentication')
    try:
        t = tokens.new_token(args.token, ttl=tokens.parse_ttl(args.ttl), description=args.description,
                             usages=sorted(usages), groups=[g for g in args.groups.split(",") if g])
    except tokens.TokenError as e:
        raise CLIError(str(e)) from None
    cfg = load_default(args.config)
    async with connect(args) as c:
        try:
            await c.resource("secrets", tokens.NAMESPACE).create(tokens.to_secret(t))
        except AlreadyExists:
            raise CLIError(f'a token with id "{t.id}" already exists') from None
    print(join_command(cfg.server, str(t), cfg.ca_pem) if args.print_join_command else str(t))
    return 0


def ttl_cell(t: tokens.Token, now: dt.datetime) -> tuple[str, str]:
    if not t.expiration:
        return "<forever>", "<never>"
    exp = meta.parse_time(t.expiration)
    if exp is None:
        return "<invalid>", t.expiration
    left = (exp - now).total_seconds()
    return (human_duration(left) if left > 0 else "<invalid>"), t.expiration


@cli_command
async def list_tokens(args) -> int:
    async with connect(args) as c:
        secrets = (await c.resource("secrets", tokens.NAMESPACE).list(
            field_selector=f"type={tokens.SECRET_TYPE}")).items
    now = meta.now()
    rows = [["TOKEN", "TTL", "EXPIRES", "USAGES", "DESCRIPTION", "EXTRA GROUPS"]]
    for s in secrets:
        t = tokens.from_secret(s)
        if t is None:
            continue
        ttl, expires = ttl_cell(t, now)
        rows.append([str(t), ttl, expires, ",".join(t.usages) or "<none>", t.description or "<none>",
                     ",".join(t.groups) or "<none>"])
    if len(rows) > 1:
        print(format_table(rows), end="")
    return 0


@cli_command
async def delete(args) -> int:
    ids = []
    for raw in args.ids:
        tid = raw.split(".", 1)[0]
        if not tokens.TOKEN_RE.match(f"{tid}.{'0' * 16}"):
            raise CLIError(f'invalid token ID "{raw}": expected [a-z0-9]{{6}} or a whole token')
        ids.append(tid)
    async with connect(args) as c:
        rc = c.resource("secrets", tokens.NAMESPACE)
        for tid in ids:
            try:
                await rc.delete(tokens.PREFIX + tid)
            except NotFound:
                raise CLIError(f'bootstrap token "{tid}" not found') from None
            print(f'bootstrap token "{tid}" deleted')
    return 0
