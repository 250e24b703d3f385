"""`kubelab proxy`: kube-proxy in iptables mode for one node. It runs in the node's network
namespace (the static pod kube-proxy-<node>: hostNetwork, privileged, the node's kubelet.conf)."""
from __future__ import annotations

import ipaddress
import socket

from kubelab.daemon import run_agent


def register(sub, parents) -> None:
    p = sub.add_parser("proxy", parents=parents, help="Run kube-proxy (iptables mode) on this node")
    p.add_argument("--node-name", default=socket.gethostname())
    p.add_argument("--cluster-cidr", default="",
                   help="the pod network (e.g. 10.244.0.0/16): traffic to a service from outside it is masqueraded")
    p.add_argument("--min-sync-period", type=float, default=1.0,
                   help="seconds at least between two syncs of the rules (changes in between are merged)")
    p.add_argument("--sync-period", type=float, default=30.0, help="seconds at most between two full syncs")
    p.set_defaults(func=run, daemon=True)


def flag_error(args) -> str | None:
    if not args.node_name:
        return "error: invalid --node-name: must not be empty"
    if args.cluster_cidr:
        try:
            ipaddress.IPv4Network(args.cluster_cidr)
        except ValueError:
            return f'error: invalid --cluster-cidr "{args.cluster_cidr}": must be an IPv4 CIDR such as 10.244.0.0/16'
    if args.sync_period <= 0:
        return "error: invalid --sync-period: must be greater than 0"
    if not 0 <= args.min_sync_period <= args.sync_period:
        return (f"error: invalid --min-sync-period {args.min_sync_period}: must be between 0 and "
                f"--sync-period ({args.sync_period})")
    return None


async def run(args) -> int:
    return await run_agent(args, lambda client: _start(client, args), check=flag_error)


def _start(client, args):
    from worker.proxy.proxier import Proxier, ProxyConfig
    cfg = ProxyConfig(node_name=args.node_name, cluster_cidr=args.cluster_cidr,
                      min_sync_period=args.min_sync_period, sync_period=args.sync_period)
    cidr = cfg.cluster_cidr or "(none: off-cluster clients are not masqueraded)"
    print(f"kube-proxy (iptables) for node {cfg.node_name}: cluster CIDR {cidr}, "
          f"syncs {cfg.min_sync_period:g}-{cfg.sync_period:g}s apart", flush=True)
    return Proxier(client, cfg).run_forever()
