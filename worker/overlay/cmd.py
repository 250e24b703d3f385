"""`kubelab overlay`: the overlay agent daemon (flanneld's role) for one node. It runs in the
node's network namespace (hostNetwork, privileged, as flannel's pod does)."""
from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

from kubelab.daemon import run_agent


def register(sub, parents) -> None:
    p = sub.add_parser("overlay", parents=parents, help="Run the VXLAN overlay agent (flannel's role) on this node")
    p.add_argument("--node-name", default=socket.gethostname())
    p.add_argument("--iface", default="", help="underlay interface (default: the one holding --node-ip, "
                                              "else the node's InternalIP, else the default route's)")
    p.add_argument("--node-ip", default="", help="underlay address published as public-ip (default: --iface's first)")
    p.add_argument("--cluster-cidr", default="10.244.0.0/16")
    p.add_argument("--vni", type=int, default=1)
    p.add_argument("--port", type=int, default=8472, help="VXLAN UDP port")
    p.add_argument("--device", default="flannel.1")
    p.add_argument("--resync-period", type=float, default=30.0, help="seconds between full reconciles")
    p.add_argument("--subnet-file", default="/run/flannel/subnet.env",
                   help='flannel\'s subnet file for CNI (FLANNEL_SUBNET, FLANNEL_MTU, ...); "" for none')
    p.set_defaults(func=run, daemon=True)


def flag_error(args) -> str | None:
    if not args.node_name:
        return "error: invalid --node-name: must not be empty"
    if args.node_ip:
        try:
            ipaddress.IPv4Address(args.node_ip)
        except ValueError:
            return f'error: invalid --node-ip "{args.node_ip}": must be an IPv4 address'
    try:
        ipaddress.IPv4Network(args.cluster_cidr)
    except ValueError:
        return f'error: invalid --cluster-cidr "{args.cluster_cidr}": must be an IPv4 CIDR'
    if not 0 < args.vni < 1 << 24:
        return f"error: invalid --vni {args.vni}: must be between 1 and 16777215"
    if not 0 < args.port < 65536:
        return f"error: invalid --port {args.port}: must be between 1 and 65535"
    if not 0 < len(args.device) <= 15 or "/" in args.device or " " in args.device:
        return f'error: invalid --device "{args.device}": must be 1-15 characters without "/" or spaces'
    if args.resync_period <= 0:
        return "error: invalid --resync-period: must be greater than 0"
    return None


async def run(args) -> int:
    from worker.overlay.netlink import Netlink
    netlink = Netlink()
    return await run_agent(args, lambda client: _start(client, args, netlink),
                           check=lambda a: _check(a, netlink))


async def _check(args, netlink) -> str | None:
    err = flag_error(args)
    if err or not (args.iface or args.node_ip):
        return err
    from worker.overlay.netlink import UnderlayError, pick_underlay
    try:  # a wrong flag is an error now, not a retry loop
        pick_underlay((await netlink.interfaces())[0], iface=args.iface, node_ip=args.node_ip)
    except UnderlayError as e:
        return f"error: {e}"
    return None


def _start(client, args, netlink):
    from worker.overlay.agent import OverlayAgent, OverlayConfig
    cfg = OverlayConfig(node_name=args.node_name, iface=args.iface, node_ip=args.node_ip, device=args.device,
                        vni=args.vni, port=args.port, cluster_cidr=args.cluster_cidr, resync=args.resync_period,
                        subnet_file=Path(args.subnet_file) if args.subnet_file else None)
    agent = OverlayAgent(client, cfg, netlink)
    print(f"overlay agent for node {cfg.node_name}: {cfg.device} VNI {cfg.vni} port {cfg.port}", flush=True)
    return agent.run()
