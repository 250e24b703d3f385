"""`kubelab scheduler`: run the scheduler with leader election on the kube-scheduler Lease."""
from __future__ import annotations

import asyncio
import os
import signal
import socket

from kubelab.client.client import Client
from kubelab.client.leaderelection import LeaderElector

from .scheduler import Scheduler


def register(sub, parents) -> None:
    p = sub.add_parser("scheduler", parents=parents, help="Run the scheduler")
    p.add_argument("--leader-elect", default="true", choices=("true", "false"))
    p.add_argument("--identity", default=None, help="leader election identity (default host_pid)")
    p.add_argument("--lease-duration", type=float, default=15.0)
    p.add_argument("--renew-deadline", type=float, default=10.0)
    p.add_argument("--retry-period", type=float, default=2.0)
    p.add_argument("--percentage-of-nodes-to-score", type=int, default=0)
    p.set_defaults(func=run, daemon=True)


async def run(args) -> int:
    client = Client.connect(args.config)
    identity = args.identity or f"{socket.gethostname()}_{os.getpid()}"

    async def lead():
        await Scheduler(client, percentage_of_nodes=args.percentage_of_nodes_to_score).run()

    main = asyncio.create_task(
        LeaderElector(client, "kube-scheduler", identity, lease_duration=args.lease_duration,
                      renew_deadline=args.renew_deadline, retry_period=args.retry_period).run(lead)
        if args.leader_elect == "true" else lead())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, main.cancel)
    try:
        await main
    except asyncio.CancelledError:
        pass
    finally:
        await client.close()
    return 0
