"""The overlay agent (flannel's VXLAN backend, as an agent of its own): on every node it keeps
the VXLAN device `flannel.1` and, for every other node, one route, one permanent neighbour
entry and one FDB entry, equal to the Node list it watches through an informer.

- `peers.py`  pure logic: the flannel annotations, what a Node says about its VTEP, the
               entries wanted for a Node list, the difference from what the kernel holds.
- `netlink.py` the kernel side, with pyroute2 (netlink messages, no process per entry).
- `agent.py`  the level-triggered reconcile loop over the Node informer.
- `cmd.py`    `kubelab overlay`, the daemon's entry point.
"""
