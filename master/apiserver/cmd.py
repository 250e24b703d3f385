"""`kubelab apiserver`: run the API server in the foreground."""
from __future__ import annotations

import asyncio
from pathlib import Path

from kubelab.daemon import run_until_signalled

from .server import APIServer, Options


def register(sub, parents) -> None:
    p = sub.add_parser("apiserver", parents=parents, help="Run the API server")
    p.add_argument("--etcd-servers", required=True, help="comma-separated etcd URLs")
    p.add_argument("--listen", default="127.0.0.1:6443", help="address to serve on (host:port)")
    p.add_argument("--pki-dir", required=True, help="directory with ca.crt, apiserver.crt, apiserver.key")
    p.add_argument("--bookmark-interval", type=float, default=30.0)
    p.add_argument("--compaction-interval", type=float, default=300.0)
    p.add_argument("--watch-cache-size", type=int, default=10000)
    p.add_argument("--list-page-bytes", type=int, default=16 << 20,
                   help="most bytes of objects in one List response; the rest comes with a continue token")
    p.add_argument("--default-toleration-seconds", type=int, default=300,
                   help="tolerationSeconds of the not-ready/unreachable tolerations added to every pod")
    p.set_defaults(func=run, daemon=True)


async def run(args) -> int:
    srv = APIServer(Options(etcd_servers=args.etcd_servers, listen=args.listen, pki_dir=Path(args.pki_dir),
                            bookmark_interval=args.bookmark_interval,
                            compaction_interval=args.compaction_interval,
                            cache_capacity=args.watch_cache_size, list_page_bytes=args.list_page_bytes,
                            default_toleration_seconds=args.default_toleration_seconds))
    await srv.start()
    return await run_until_signalled(asyncio.Event().wait(), cleanup=srv.stop)
