"""`kubelab net show NODE` and `kubelab net trace SRC DST [-n NS]`: the argparse face of
kubelab/net and the `error: ...` wording. A lab (--lab-dir, $KUBELAB_LAB_DIR, or the default
lab dir) gives the nodes; without one the node is this machine."""
from __future__ import annotations

import sys

from kubelab.net.node import NetError, discover, is_root


def register(sub, parents) -> None:
    from kubelab.cli.common import add_namespace_flags
    p = sub.add_parser("net", parents=parents, help="Network experiments: show a node's network, trace a probe")
    verbs = p.add_subparsers(dest="net_command", required=True, metavar="VERB")
    sh = verbs.add_parser("show", parents=parents, help="A node's routes, VXLAN FDB/neighbours, bridge ports, service rules")
    sh.add_argument("node", nargs="?", default="", metavar="NODE",
                    help="a lab VM (kubelab-worker1 or worker1); without a lab, this machine")
    sh.add_argument("--lab-dir", default=None, help="the lab's state (default: $KUBELAB_LAB_DIR, then the default lab dir)")
    sh.set_defaults(func=run_show)
    tr = verbs.add_parser("trace", parents=parents, help="Send a probe from a pod and show every hop it took")
    tr.add_argument("src", metavar="SRC", help="the pod that sends the probe")
    tr.add_argument("dst", metavar="DST", help="a pod, a service (its first port) or an IP[:PORT]")
    tr.add_argument("--port", type=int, default=0, help="TCP port to connect to (default: the pod's first "
                    "container port or the service's first port; none: ICMP echo)")
    tr.add_argument("--lab-dir", default=None, help="the lab's state (default: $KUBELAB_LAB_DIR, then the default lab dir)")
    add_namespace_flags(tr)
    tr.set_defaults(func=run_trace)


def run_show(args) -> int:
    from kubelab.net import show
    if not is_root():
        print("error: net show needs root (it enters the node's network namespace)", file=sys.stderr)
        return 1
    try:
        nodes = discover(args.lab_dir)
        if not args.node and nodes.lab:
            raise NetError("which node? give one of the lab's VMs: " + ", ".join(n.name for n in nodes.nodes))
        node = nodes.get(args.node) if args.node else nodes.nodes[0]
        if not node.readable:
            raise NetError(f'node "{node.name}" is not readable from here: run "kubelab net show" on it '
                           "(or start its lab VM)")
        sys.stdout.write(show.render(show.gather(node, nodes)))
    except NetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


async def run_trace(args) -> int:
    from kubelab.cli.common import CLIError, cli_command
    from kubelab.net import trace

    @cli_command
    async def go(args) -> int:
        if not is_root():
            raise CLIError("net trace needs root (it enters the pods' network namespaces)")
        try:
            nodes = discover(args.lab_dir)
            return await trace.run(args, nodes, out=sys.stdout)
        except NetError as e:
            raise CLIError(str(e))
    return await go(args)
