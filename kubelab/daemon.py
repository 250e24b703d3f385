"""What every long-running kubelab command shares: run until SIGTERM/SIGINT, then clean up;
and, for the scheduler and controller manager, leader election on a Lease (flags included)."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
from typing import Awaitable, Callable


async def run_until_signalled(main: Awaitable, *, cleanup: Callable[[], Awaitable] | None = None) -> int:
    """Run `main` until it ends or the process is asked to stop; always run `cleanup`."""
    task = asyncio.ensure_future(main)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        pass
    finally:
        if cleanup is not None:
            await cleanup()
    return 0


def add_leader_election_flags(p) -> None:
    p.add_argument("--leader-elect", default="true", choices=("true", "false"))
    p.add_argument("--identity", default=None, help="leader election identity (default host_pid)")
    p.add_argument("--lease-duration", type=float, default=15.0)
    p.add_argument("--renew-deadline", type=float, default=10.0)
    p.add_argument("--retry-period", type=float, default=2.0)


def leader_elected(client, lease_name: str, args, lead: Callable[[], Awaitable[None]]) -> Awaitable[None]:
    """`lead()` while this process holds kube-system/<lease_name>, or at once with --leader-elect=false."""
    if args.leader_elect != "true":
        return lead()
    from kubelab.client.leaderelection import LeaderElector
    identity = args.identity or f"{socket.gethostname()}_{os.getpid()}"
    return LeaderElector(client, lease_name, identity, lease_duration=args.lease_duration,
                         renew_deadline=args.renew_deadline, retry_period=args.retry_period).run(lead)
