"""The network-experiment verbs: `kubelab net show NODE` and `kubelab net trace SRC DST`.

Where it sits: a client-side tool beside the CLI, for the lab's lessons and for debugging a
node. It reads the kernel of the nodes (routes, neighbours, FDB, links and their counters,
nat rules, conntrack) and the node's pod network state; the API only names things (which pod
is where, a service's ClusterIP). node.py says how a node is reached (a lab VM through
nsenter, or this machine), kernel.py reads and parses, iptables.py summarises kube-proxy's
chains, show.py and trace.py are the verbs, cmd.py their argparse face. docs/net.md tells
what each verb shows and where every line comes from.
"""
