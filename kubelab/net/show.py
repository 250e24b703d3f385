"""`kubelab net show NODE`: one node's pod network as readable tables, every row read from the
node's kernel (and its pod network state for pod names): the IPv4 routes, flannel.1 (VNI,
port, local address, MTU) with its FDB and neighbour entries, cni0 with the pod behind each
veth port, and kube-proxy's nat chains summarised per service. gather() reads, render() is a
pure function of what was read (unit-tested with hand-made input).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from kubelab.cli.printers import format_table
from kubelab.net import iptables, kernel
from kubelab.net.kernel import BRIDGE, VXLAN_DEV, Link, PodNet
from kubelab.net.node import Node, Nodes


@dataclass
class NodeNet:
    node: str
    ip: str
    routes: list[dict]
    links: dict[str, Link]
    fdb: list[dict] = field(default_factory=list)          # of flannel.1
    neigh: list[dict] = field(default_factory=list)        # of flannel.1
    pods: list[PodNet] = field(default_factory=list)
    nat: iptables.NatTable | None = None
    node_names: dict[str, str] = field(default_factory=dict)  # underlay IP -> node name


def gather(node: Node, nodes: Nodes) -> NodeNet:
    links = kernel.links(node)
    data = NodeNet(node=node.name, ip=node.ip, routes=kernel.routes(node), links=links,
                   node_names={n.ip: n.name for n in nodes.nodes if n.ip})
    if VXLAN_DEV in links:
        data.fdb = kernel.fdb(node, dev=VXLAN_DEV)
        data.neigh = kernel.neighbours(node, VXLAN_DEV)
    data.pods = kernel.pod_networks(node)
    data.nat = kernel.nat(node)
    return data


def _vtep_owner(data: NodeNet) -> dict[str, str]:
    """VTEP address (a peer's podCIDR network address) -> the node behind it, through the
    kernel's own chain: neighbour (address -> MAC) then FDB (MAC -> underlay IP)."""
    mac_dst = {e.get("mac"): e.get("dst", "") for e in data.fdb}
    out = {}
    for n in data.neigh:
        dst = mac_dst.get(n.get("lladdr"), "")
        if dst:
            out[n.get("dst", "")] = data.node_names.get(dst, dst)
    return out


def render(data: NodeNet) -> str:
    out: list[str] = [f"Node {data.node}" + (f" ({data.ip})" if data.ip else ""), ""]
    vteps = _vtep_owner(data)
    pods_by_veth = {p.host_veth: p for p in data.pods if p.host_veth}

    out.append("Routes (ip -4 route):")
    rows = [["DESTINATION", "GATEWAY", "DEV", "WHAT"]]
    for r in data.routes:
        dev, gw = r.get("dev", ""), r.get("gateway", "")
        if dev == VXLAN_DEV:
            what = f"pods of {vteps.get(gw, 'an unknown node')} over VXLAN" + (" (onlink)" if "onlink" in r.get("flags", []) else "")
        elif dev == BRIDGE:
            what = "this node's pods (bridge)"
        elif r.get("dst") == "default":
            what = "default route"
        else:
            what = "directly connected" if not gw else ""
        rows.append([r.get("dst", ""), gw or "-", dev, what])
    out += _indent(format_table(rows)) + [""]

    vx = data.links.get(VXLAN_DEV)
    if vx is None:
        out += [f"VXLAN: no {VXLAN_DEV} on this node (is the overlay agent running?)", ""]
    else:
        info = vx.vxlan
        out.append(f"VXLAN {VXLAN_DEV}: VNI {info.get('id', '?')}, port {info.get('port', '?')}, "
                   f"local {info.get('local', '?')} (underlay {info.get('link', '?')}), MTU {vx.mtu}, "
                   f"MAC {vx.mac}, {vx.state}, rx {vx.rx_packets} tx {vx.tx_packets} packets")
        out.append(f"  FDB (bridge fdb show dev {VXLAN_DEV}): VTEP MAC -> underlay IP")
        rows = [["MAC", "DST", "NODE", "STATE"]]
        rows += [[e.get("mac", ""), e.get("dst", "-"), data.node_names.get(e.get("dst", ""), "-"),
                  e.get("state", "") or "-"] for e in data.fdb]
        out += _indent(format_table(rows) if data.fdb else "(no entries)", 4)
        out.append(f"  Neighbours (ip neigh show dev {VXLAN_DEV}): VTEP address -> VTEP MAC")
        rows = [["ADDRESS", "MAC", "NODE", "STATE"]]
        rows += [[n.get("dst", ""), n.get("lladdr", "-"), vteps.get(n.get("dst", ""), "-"), kernel.neigh_state(n)]
                 for n in data.neigh]
        out += _indent(format_table(rows) if data.neigh else "(no entries)", 4) + [""]

    br = data.links.get(BRIDGE)
    if br is None:
        out += [f"Bridge: no {BRIDGE} on this node (no pod has been started here yet)", ""]
    else:
        out.append(f"Bridge {BRIDGE}: {', '.join(br.addrs) or 'no address'}, MTU {br.mtu}, {br.state}; its ports:")
        ports = sorted((l for l in data.links.values() if l.master == BRIDGE), key=lambda l: l.name)
        rows = [["PORT", "POD", "POD IP", "STATE", "RX", "TX"]]
        for l in ports:
            p = pods_by_veth.get(l.name)
            rows.append([l.name, f"{p.namespace}/{p.pod}" if p and p.pod else "-", p.ip if p else "-",
                         l.state, str(l.rx_packets), str(l.tx_packets)])
        out += _indent(format_table(rows) if ports else "(no ports)", 4) + [""]

    out += render_services(data.nat)
    return "\n".join(out).rstrip() + "\n"


def render_services(table: iptables.NatTable | None) -> list[str]:
    if table is None:
        return ["Services: iptables-save failed on this node (is iptables installed?)"]
    if not table.has_proxy:
        return ["Services: no kube-proxy rules (no KUBE-SERVICES chain in the nat table)"]
    counts = iptables.chain_counts(table)
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    out = [f"Services (iptables-save -t nat: {summary or 'KUBE-SERVICES only'}):"]
    svcs = iptables.services(table)
    rows = [["SERVICE", "CLUSTER-IP", "PORT", "NODEPORT", "CHAIN", "ENDPOINTS (share, packets)"]]
    for s in svcs:
        eps = ", ".join(f"{e.address} ({iptables.fmt_share(e.share)}, {e.packets})" for e in s.endpoints)
        if s.affinity:
            eps += " (ClientIP affinity)"
        rows.append([s.name, s.cluster_ip or "-", f"{s.port}/{s.protocol}" if s.port else s.protocol or "-",
                     s.node_port or "-", s.chain or "-", eps or "none: REJECTed (filter KUBE-SERVICES)"])
    out += _indent(format_table(rows) if svcs else "(no service rules)")
    return out


def _indent(text: str, n: int = 2) -> list[str]:
    return [" " * n + line for line in text.splitlines()]
