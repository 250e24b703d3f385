"""`kubelab net trace SRC DST [-n NS]`: a real probe from inside the pod SRC, and each hop it
took as the kernels along the way show it. The API only names the ends (SRC's node and IP;
DST's IP and port, a service's ClusterIP); the path is read from the nodes:

1. every readable node's link counters (`ip -s link`) and the source node's nat counters,
   before and after the probe (probe.py: TCP connect, UDP datagram, or one ICMP echo);
2. SRC's eth0 and its veth on the node (worker/network's sandbox record), cni0;
3. for a ClusterIP: the DNAT kube-proxy applied, from conntrack (the reply's source is the
   endpoint chosen), else from which KUBE-SEP DNAT counter grew;
4. `ip route get` on the node for the (translated) destination: cni0 means the pod is local;
   flannel.1 gives the VTEP gateway, whose neighbour entry gives the peer's VTEP MAC and the FDB
   entry of that MAC the peer's underlay IP; the underlay route and eth0 follow;
5. on the peer (the lab VM holding that underlay IP): eth0, flannel.1, its route to the pod,
   cni0, the neighbour entry of the pod's IP and the bridge port the bridge learnt its MAC on,
   which is the destination pod's veth;
6. arrived (the probe's answer, with the destination veth's counters), or where it was lost:
   the last hop whose counters moved, and what the kernel says after it (no route, a failed
   neighbour).
build() reads and decides; render() prints (pure, unit-tested).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from kubelab.cli.printers import format_table
from kubelab.net import iptables, kernel, probe
from kubelab.net.kernel import BRIDGE, UNDERLAY, VXLAN_DEV, Link
from kubelab.net.node import NetError, Node, Nodes


@dataclass
class Hop:
    node: str
    where: str
    what: str
    delta: int | None = None   # packets counted during the probe (None: not measured here)
    direction: str = ""        # rx | tx


@dataclass
class Trace:
    title: str
    probe_line: str
    hops: list[Hop] = field(default_factory=list)
    arrived: bool = False
    verdict: str = ""


@dataclass
class End:
    label: str         # pod net/c, service net/web, 10.0.0.1
    ip: str
    port: int = 0
    protocol: str = "TCP"
    node: str = ""
    host_network: bool = False
    service: bool = False


def _is_ip(s: str) -> bool:
    try:
        ipaddress.IPv4Address(s)
        return True
    except ValueError:
        return False


async def resolve(client, ns: str, src: str, dst: str, port: int) -> tuple[End, End]:
    from kubelab.errors import NotFound
    try:
        sp = await client.pods(ns).get(src)
    except NotFound:
        raise NetError(f'pods "{src}" not found in namespace "{ns}" (SRC must be a pod)')
    if not sp.status.podIP or not sp.spec.nodeName:
        raise NetError(f'pod {ns}/{src} has no IP or node yet (phase {sp.status.phase or "Pending"}): wait until it runs')
    s = End(f"pod {ns}/{src}", sp.status.podIP, node=sp.spec.nodeName, host_network=sp.spec.hostNetwork)
    host, _, p = dst.partition(":")
    if _is_ip(host):
        return s, End(host, host, port or (int(p) if p.isdigit() else 0))
    try:
        dp = await client.pods(ns).get(dst)
        ports = [cp for c in dp.spec.containers for cp in c.ports]
        if not dp.status.podIP:
            raise NetError(f"pod {ns}/{dst} has no IP yet: wait until it runs")
        first = ports[0] if ports else None
        return s, End(f"pod {ns}/{dst}", dp.status.podIP, port or (first.containerPort if first else 0),
                      (first.protocol or "TCP") if first and not port else "TCP", node=dp.spec.nodeName)
    except NotFound:
        pass
    try:
        svc = await client.resource("services", ns).get(dst)
    except (NotFound, KeyError):
        raise NetError(f'neither pods "{dst}" nor services "{dst}" found in namespace "{ns}" '
                       "(DST is a pod, a service or an IP[:PORT])")
    ip = svc.spec.clusterIP
    if not ip or ip == "None":
        raise NetError(f"service {ns}/{dst} is headless (clusterIP: None): trace one of its pods instead")
    first = svc.spec.ports[0] if svc.spec.ports else None
    return s, End(f"service {ns}/{dst}", ip, port or (first.port if first else 0),
                  (first.protocol or "TCP") if first and not port else "TCP", service=True)


def _delta(before: dict[str, Link], after: dict[str, Link], dev: str, direction: str) -> int | None:
    a, b = after.get(dev), before.get(dev)
    if a is None or b is None:
        return None
    return (a.rx_packets - b.rx_packets) if direction == "rx" else (a.tx_packets - b.tx_packets)


async def run(args, nodes: Nodes, out) -> int:
    from kubelab.cli.common import connect
    ns = args.namespace or "default"
    async with connect(args) as client:
        src, dst = await resolve(client, ns, args.src, args.dst, args.port)
    t = build(nodes, src, dst)
    out.write(render(t))
    return 0 if t.arrived else 1


def build(nodes: Nodes, src: End, dst: End) -> Trace:
    sn = nodes.get(src.node)
    if not sn.readable:
        raise NetError(f"node {src.node} of {src.label} is not readable from here: run the trace on it "
                       "(or in its lab)")
    sp = None
    if not src.host_network:
        sp = kernel.pod_by_ip(sn, src.ip)
        if sp is None or not sp.netns:
            raise NetError(f"{src.label}: no pod network for {src.ip} in {sn.name}'s state "
                           f"({kernel.NETWORK_STATE}): is the pod running there?")
    netns = sp.netns if sp else ""
    mode = dst.protocol.lower() if dst.port else "icmp"
    readable = [n for n in nodes.nodes if n.readable]
    before = {n.name: kernel.links(n) for n in readable}
    pod_before = kernel.links(sn, netns) if netns else {}
    nat_before = kernel.nat(sn)

    res = probe.send(sn, netns, mode, dst.ip, dst.port)

    after = {n.name: kernel.links(n) for n in readable}
    pod_after = kernel.links(sn, netns) if netns else {}
    target = f"{dst.ip}:{dst.port}" if dst.port else dst.ip
    t = Trace(title=f"Trace from {src.label} ({src.ip} on {sn.name}) to {dst.label}"
                    + (f" ({target})" if dst.label != dst.ip else (f":{dst.port}" if dst.port else "")),
              probe_line=_probe_line(res, src, target))

    def hop(node: Node, where: str, what: str, dev: str = "", direction: str = "") -> Hop:
        d = _delta(before.get(node.name, {}), after.get(node.name, {}), dev, direction) if dev else None
        h = Hop(node.name, where, what, d, direction)
        t.hops.append(h)
        return h

    # 1-2: the pod's side
    if sp:
        eth0 = pod_after.get("eth0")
        r, why = kernel.route_get(sn, dst.ip, netns=netns)
        route = f"route {_fmt_route(r)}" if r else f"no route: {why}"
        t.hops.append(Hop(sn.name, f"{src.label.removeprefix('pod ')}:eth0",
                          f"{src.label}: {', '.join(eth0.addrs) if eth0 else '?'}; {route}",
                          _delta(pod_before, pod_after, "eth0", "tx"), "tx"))
        hop(sn, sp.host_veth, f"cni0 port: the host end of {src.label}'s eth0 pair", sp.host_veth, "rx")
        br = after[sn.name].get(BRIDGE)
        hop(sn, BRIDGE, f"bridge {', '.join(br.addrs) if br else '?'}, the pods' gateway", BRIDGE, "rx")

    # 3: the service's DNAT
    # (looked for whatever DST is: an IP:PORT may be a ClusterIP or a NodePort too)
    eff = _dnat_hop(t, sn, src, dst, res, mode, nat_before) or ("" if dst.service else dst.ip)
    if not eff:
        t.verdict = (f"did not arrive: no DNAT for {target} on {sn.name} (does kube-proxy run there, "
                     "with rules for this service? see kubelab net show)")
        return t

    # 4-5: the route, the overlay and the peer
    where = sn
    r, why = kernel.route_get(sn, eff, src=src.ip, iif=BRIDGE) if sp else kernel.route_get(sn, eff)
    if r is None:
        hop(sn, "route", f"ip route get {eff}: {why}")
        return _lost(t, res, f"{sn.name} has no route to {eff} ({why})")
    hop(sn, "route", f"ip route get {eff}: {_fmt_route(r)}")
    if r.get("type") == "local" or r.get("dev") == "lo":
        return _verdict(t, res, dst, f"{sn.name} itself ({eff} is its own address)")
    if r.get("dev") == VXLAN_DEV:
        peer = _overlay_hops(t, hop, nodes, sn, r)
        if peer is None:
            return _verdict(t, res, dst, "")
        where = peer
        r2, why = kernel.route_get(peer, eff, src=src.ip, iif=VXLAN_DEV)
        if r2 is None:
            hop(peer, "route", f"ip route get {eff}: {why}")
            return _lost(t, res, f"{peer.name} has no route to {eff} ({why})")
        hop(peer, "route", f"ip route get {eff}: {_fmt_route(r2)}")
        if r2.get("type") == "local" or r2.get("dev") == "lo":
            return _verdict(t, res, dst, f"node {peer.name} ({eff} is its own address)")
        r = r2
    if r.get("dev") != BRIDGE:
        dev = r.get("dev", "?")
        hop(where, f"{dev}", f"out of {where.name} towards {r.get('gateway') or eff}", dev, "tx")
        owner = nodes.by_ip(eff)
        return _verdict(t, res, dst, f"node {owner.name} ({eff})" if owner else "")
    # 5: the destination's bridge and veth
    return _bridge_hops(t, hop, where, eff, res, dst)


def _probe_line(res: probe.Result, src: End, target: str) -> str:
    what = {"tcp": "TCP connect", "udp": "UDP datagram", "icmp": "ICMP echo (busybox ping)"}[res.mode]
    frm = f"{src.ip}:{res.sport}" if res.sport else src.ip
    outcome = ("answered" if res.ok else (res.error or "no answer")) if res.mode != "tcp" else \
        ("connected" if res.ok else res.error or "failed")
    return f"Probe: {what} {frm} -> {target}, sent from inside {src.label}'s network namespace: {outcome}" + \
        (f" ({res.ms:g} ms)" if res.ok and res.ms else "")


def _fmt_route(r: dict) -> str:
    parts = [r.get("dst", "")]
    if r.get("gateway"):
        parts += ["via", r["gateway"]]
    if r.get("dev"):
        parts += ["dev", r["dev"]]
    if r.get("prefsrc"):
        parts += ["src", r["prefsrc"]]
    if r.get("type") and r.get("type") != "unicast":
        parts.insert(0, r["type"])
    return " ".join(p for p in parts if p)


def _dnat_hop(t: Trace, sn: Node, src: End, dst: End, res: probe.Result, mode: str,
              nat_before: iptables.NatTable | None) -> str:
    """The endpoint kube-proxy's DNAT chose for the probe, as the kernel recorded it ("" if
    the kernel translated nothing; for a service, a hop saying so)."""
    conns, source = kernel.conntrack(sn)
    c = kernel.find_conn(conns, src=src.ip, sport=res.sport, dst=dst.ip, dport=str(dst.port) if dst.port else "",
                         proto=mode)
    if c is not None and c.reply.get("src") and c.reply.get("src") != dst.ip:
        ep = f"{c.reply['src']}:{c.reply.get('sport', '')}"
        chain = ""
        nat_after = kernel.nat(sn)
        if nat_after:
            chain = next((k for k, (addr, _) in iptables.dnat_packets(nat_after).items() if addr == ep), "")
        t.hops.append(Hop(sn.name, "DNAT", f"kube-proxy: {dst.ip}:{dst.port} -> {ep}"
                          + (f" by {chain}" if chain else "") + f", the endpoint chosen (conntrack: {source}, "
                          f"{c.state or c.proto})"))
        return c.reply["src"]
    if c is not None and not dst.service:
        return ""  # the kernel tracked the probe untranslated
    nat_after = kernel.nat(sn)
    if not source and nat_before is not None and nat_after is not None:
        b, a = iptables.dnat_packets(nat_before), iptables.dnat_packets(nat_after)
        grew = [(k, addr, n - b.get(k, (addr, 0))[1]) for k, (addr, n) in a.items() if n > b.get(k, (addr, 0))[1]]
        if grew:
            chain, addr, n = max(grew, key=lambda g: g[2])
            t.hops.append(Hop(sn.name, "DNAT", f"kube-proxy: {dst.ip}:{dst.port} -> {addr} by {chain}, the "
                              "endpoint chosen (its DNAT rule's packet counter grew; no conntrack table here)", n))
            return addr.split(":")[0]
    if not dst.service:
        return ""
    why = (f"{source} shows the probe untranslated" if c else f"{source} has no entry for the probe") if source \
        else "no conntrack table here, and no KUBE-SEP DNAT counter grew"
    t.hops.append(Hop(sn.name, "DNAT", f"kube-proxy: no translation of {dst.ip}:{dst.port}: {why}"))
    return ""


def _overlay_hops(t: Trace, hop, nodes: Nodes, sn: Node, r: dict) -> Node | None:
    gw = r.get("gateway", "")
    neigh = next((n for n in kernel.neighbours(sn, VXLAN_DEV) if n.get("dst") == gw), None)
    mac = neigh.get("lladdr", "") if neigh else ""
    fdb = next((e for e in kernel.fdb(sn, dev=VXLAN_DEV) if e.get("mac") == mac), None) if mac else None
    under = fdb.get("dst", "") if fdb else ""
    vx = kernel.links(sn).get(VXLAN_DEV)
    info = vx.vxlan if vx else {}
    peer = nodes.by_ip(under) if under else None
    what = (f"VXLAN VNI {info.get('id', '?')} port {info.get('port', '?')}: neighbour {gw} -> "
            f"{mac or 'none'} ({kernel.neigh_state(neigh) if neigh else 'no entry'}); FDB {mac or '?'} -> "
            f"{under or 'no entry'}" + (f" ({peer.name})" if peer else ""))
    hop(sn, VXLAN_DEV, what, VXLAN_DEV, "tx")
    if not under:
        return None
    hop(sn, UNDERLAY, f"underlay: UDP {info.get('local', sn.ip)} -> {under}:{info.get('port', 8472)}, "
        "the encapsulated packet", UNDERLAY, "tx")
    if peer is None or not peer.readable:
        t.hops.append(Hop(peer.name if peer else under, "peer",
                          f"{under} is not a node readable from here: the rest of the path is not shown"))
        return None
    hop(peer, UNDERLAY, f"underlay: from {info.get('local', sn.ip)}, UDP port {info.get('port', 8472)}",
        UNDERLAY, "rx")
    pvx = kernel.links(peer).get(VXLAN_DEV)
    hop(peer, VXLAN_DEV, f"decapsulated (VNI {pvx.vxlan.get('id', '?') if pvx else '?'}, "
        f"MAC {pvx.mac if pvx else '?'})", VXLAN_DEV, "rx")
    return peer


def _bridge_hops(t: Trace, hop, node: Node, ip: str, res: probe.Result, dst: End) -> Trace:
    neigh = next((n for n in kernel.neighbours(node, BRIDGE) if n.get("dst") == ip), None)
    mac = neigh.get("lladdr", "") if neigh else ""
    state = kernel.neigh_state(neigh) if neigh else "no entry"
    port = kernel.bridge_ports(node).get(mac, "") if mac else ""
    hop(node, BRIDGE, f"neighbour {ip} -> {mac or 'none'} ({state})"
        + (f"; the bridge learnt {mac} on port {port}" if port else ""), BRIDGE, "tx")
    pn = kernel.pod_by_ip(node, ip)
    veth = port or (pn.host_veth if pn else "")
    if not veth:
        why = f"no pod has {ip} on {node.name}" if pn is None else f"no port for {ip}"
        return _lost(t, res, f"{why}; the neighbour entry of {ip} on {node.name}'s {BRIDGE} is {state}")
    owner = f"pod {pn.namespace}/{pn.pod}" if pn and pn.pod else "an unknown pod"
    h = hop(node, veth, f"cni0 port: into {owner}'s eth0 ({ip})", veth, "tx")
    if pn and veth != pn.host_veth:
        h.what += f" (but its sandbox record names {pn.host_veth})"
    return _verdict(t, res, dst, owner)


def _verdict(t: Trace, res: probe.Result, dst: End, at: str) -> Trace:
    last = t.hops[-1] if t.hops else None
    if res.ok:
        t.arrived = True
        how = {"tcp": "accepted the TCP connection", "udp": "answered the datagram", "icmp": "answered the echo"}
        t.verdict = f"arrived: {at or dst.ip} {how[res.mode]}"
        return t
    if res.refused:
        t.arrived = True
        t.verdict = f"arrived at {at or dst.ip}, but nothing listens on port {dst.port} (connection refused)"
        return t
    if res.ok is None and last and last.delta:
        t.arrived = True
        t.verdict = f"arrived at {at or dst.ip} (its counters moved; UDP has no answer to wait for)"
        return t
    return _lost(t, res, f"{at or dst.ip} did not answer")


def _lost(t: Trace, res: probe.Result, why: str) -> Trace:
    t.arrived = False
    seen = [h for h in t.hops if h.delta]
    after = f"; last seen at {seen[-1].node} {seen[-1].where}" if seen else ""
    t.verdict = f"did not arrive ({res.error or 'no answer'}): {why}{after}"
    return t


def render(t: Trace) -> str:
    rows = [["HOP", "NODE", "WHERE", "PACKETS", "WHAT THE KERNEL SHOWS"]]
    for i, h in enumerate(t.hops, 1):
        pk = "-" if h.delta is None else f"{h.direction} +{h.delta}"
        rows.append([str(i), h.node, h.where, pk, h.what])
    lines = [t.title, t.probe_line, ""] + format_table(rows).splitlines()
    lines += ["", ("Arrived" + t.verdict[len("arrived"):]) if t.arrived else ("Lost: the probe " + t.verdict)]
    return "\n".join(lines) + "\n"
