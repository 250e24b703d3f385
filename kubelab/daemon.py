"""What every long-running kubelab command shares: run until SIGTERM/SIGINT, then clean up; the
start-up of the node agents that talk to the API (kube-proxy, the overlay agent, cluster DNS):
flags checked, the client connected from --config, run until stopped; and, for the scheduler
and controller manager, leader election on a Lease (flags included)."""
from __future__ import annotations

import asyncio
import inspect
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from typing import Any

FLAG_NAMES = {"lease_duration": "--lease-duration", "renew_deadline": "--renew-deadline",
              "retry_period": "--retry-period"}


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


async def run_agent(args, start: Callable[[Any], Awaitable | None], *,
                    check: Callable[[Any], str | None | Awaitable[str | None]] | None = None) -> int:
    """An API client's daemon: `check(args)` (sync or async) may return an error line, printed with
    exit 1 before anything connects; then a client from --config (a bad config is printed, exit
    1); `start(client)` prints the agent's banner and returns what to run (None: nothing, exit 1)
    until the process is stopped; the client is closed at the end, whatever happened."""
    if check is not None:
        err = check(args)
        if inspect.isawaitable(err):
            err = await err
        if err:
            print(err, flush=True)
            return 1
    from kubelab.client.client import Client
    from kubelab.client.config import ConfigError, load_default
    try:
        client = Client.from_config(load_default(args.config))
    except (ConfigError, OSError) as e:
        print(f"error: {e}", flush=True)
        return 1
    try:
        main = start(client)
    except BaseException:
        await client.close()
        raise
    if main is None:
        await client.close()
        return 1
    return await run_until_signalled(main, cleanup=client.close)


def add_leader_election_flags(p) -> None:
    p.add_argument("--leader-elect", default="true", choices=("true", "false"))
    p.add_argument("--identity", default=None, help="leader election identity (default host_pid)")
    p.add_argument("--lease-duration", type=float, default=15.0,
                   help="seconds a candidate waits, after it last saw the lease change, before taking it")
    p.add_argument("--renew-deadline", type=float, default=10.0,
                   help="seconds the leader keeps acting after its last renewal (< --lease-duration)")
    p.add_argument("--retry-period", type=float, default=2.0)


def leader_election_error(args) -> str | None:
    """The error to print for leader election flags that cannot work (checked before connecting)."""
    if args.leader_elect != "true":
        return None
    from kubelab.client.leaderelection import InvalidLeaderElectionConfig, validate
    try:
        validate(args.lease_duration, args.renew_deadline, args.retry_period, names=FLAG_NAMES)
    except InvalidLeaderElectionConfig as e:
        return f"error: invalid {e.field}: {e.detail}"
    if args.identity == "":
        return "error: invalid --identity: must not be empty"
    return None


def identity(args) -> str:
    """This process's leader election identity: --identity, else host_pid as kube components do."""
    return args.identity or f"{socket.gethostname()}_{os.getpid()}"


def leader_elected(client, lease_name: str, args, lead: Callable[[], Awaitable[None]]) -> Awaitable[None]:
    """`lead()` while this process holds kube-system/<lease_name>, or at once with --leader-elect=false."""
    if args.leader_elect != "true":
        return lead()
    from kubelab.client.leaderelection import LeaderElector
    return LeaderElector(client.leases("kube-system"), lease_name, identity(args),
                         lease_duration=args.lease_duration, renew_deadline=args.renew_deadline,
                         retry_period=args.retry_period).run(lead)
