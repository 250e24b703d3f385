"""`kubelab scheduler`: run the scheduler with leader election on the kube-scheduler Lease."""
from __future__ import annotations

import sys

from kubelab.client.client import Client
from kubelab.daemon import (add_leader_election_flags, identity, leader_elected, leader_election_error,
                            run_until_signalled)

from .scheduler import Scheduler


def register(sub, parents) -> None:
    p = sub.add_parser("scheduler", parents=parents, help="Run the scheduler")
    add_leader_election_flags(p)
    p.add_argument("--percentage-of-nodes-to-score", type=int, default=0)
    p.set_defaults(func=run, daemon=True)


async def run(args) -> int:
    err = leader_election_error(args)
    if err:
        print(err, file=sys.stderr)
        return 1
    client = Client.connect(args.config)
    me = identity(args)

    async def lead():
        await Scheduler(client, percentage_of_nodes=args.percentage_of_nodes_to_score, identity=me).run()
    return await run_until_signalled(leader_elected(client, "kube-scheduler", args, lead), cleanup=client.close)
