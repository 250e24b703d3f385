"""`kubelab controller-manager`: the controllers, behind leader election on the
kube-controller-manager Lease: namespace, nodeipam (pod CIDRs) and nodelifecycle.
"""
from __future__ import annotations

import asyncio
import sys

from kubelab.client.client import Client
from kubelab.daemon import add_leader_election_flags, leader_elected, leader_election_error, run_until_signalled

from .namespace import NamespaceController
from .nodeipam import InvalidIpamConfig, NodeIpamController, parse_cluster_cidr
from .nodelifecycle import NodeLifecycleController

CONTROLLERS = {
    "namespace": lambda client, args: NamespaceController(client),
    "nodeipam": lambda client, args: NodeIpamController(client, cluster_cidr=args.cluster_cidr,
                                                        node_mask=args.node_cidr_mask_size),
    "nodelifecycle": lambda client, args: NodeLifecycleController(
        client, grace_period=args.node_monitor_grace_period, monitor_period=args.node_monitor_period),
}


def register(sub, parents) -> None:
    p = sub.add_parser("controller-manager", parents=parents, help="Run the controller manager")
    p.add_argument("--controllers", default="*", help="comma-separated controllers to run, * for all")
    add_leader_election_flags(p)
    p.add_argument("--node-monitor-grace-period", type=float, default=50.0,
                   help="seconds without a lease renewal before a node is NotReady (Unknown)")
    p.add_argument("--node-monitor-period", type=float, default=5.0)
    p.add_argument("--cluster-cidr", default="10.244.0.0/16", help="the range node podCIDRs are cut from")
    p.add_argument("--node-cidr-mask-size", type=int, default=24, help="prefix length of each node's podCIDR")
    p.set_defaults(func=run, daemon=True)


async def run(args) -> int:
    names = list(CONTROLLERS) if args.controllers == "*" else args.controllers.split(",")
    unknown = [n for n in names if n not in CONTROLLERS]
    if unknown:
        print(f"error: unknown controllers: {', '.join(unknown)} (known: {', '.join(CONTROLLERS)})",
              file=sys.stderr)
        return 1
    err = leader_election_error(args) or cidr_error(args)
    if err:
        print(err, file=sys.stderr)
        return 1
    client = Client.connect(args.config)

    async def lead():
        controllers = [CONTROLLERS[n](client, args) for n in names]
        await asyncio.gather(*(c.run() for c in controllers))

    return await run_until_signalled(leader_elected(client, "kube-controller-manager", args, lead),
                                     cleanup=client.close)


def cidr_error(args) -> str | None:
    try:
        parse_cluster_cidr(args.cluster_cidr, args.node_cidr_mask_size,
                           names={"cluster_cidr": "--cluster-cidr", "node_mask": "--node-cidr-mask-size"})
    except InvalidIpamConfig as e:
        return f"error: invalid {e.field}: {e.detail}"
    return None
