"""`kubelab hollow-nodes --count N`: run N simulated nodes in the foreground."""
from __future__ import annotations

from kubelab.client.client import Client
from kubelab.daemon import run_until_signalled

from .hollownodes import HollowNodes


def register(sub, parents) -> None:
    p = sub.add_parser("hollow-nodes", parents=parents, help="Run simulated nodes (like kwok)")
    p.add_argument("--count", type=int, default=3)
    p.add_argument("--prefix", default="hollow-node-")
    p.add_argument("--cpu", default="4")
    p.add_argument("--memory", default="16Gi")
    p.add_argument("--pods", default="110")
    p.add_argument("--lease-duration", type=int, default=40)
    p.add_argument("--renew-interval", type=float, default=10.0)
    p.set_defaults(func=run, daemon=True)


async def run(args) -> int:
    if args.count < 1:
        print("error: --count must be at least 1")
        return 1
    client = Client.connect(args.config)
    hollow = HollowNodes(client, args.count, prefix=args.prefix,
                         capacity={"cpu": args.cpu, "memory": args.memory, "pods": args.pods},
                         lease_duration=args.lease_duration, renew_interval=args.renew_interval)
    print(f"running {args.count} hollow nodes ({args.prefix}0..{args.prefix}{args.count - 1})", flush=True)
    return await run_until_signalled(hollow.run(), cleanup=client.close)
