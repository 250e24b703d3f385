"""Readers of one node's network state, each one command (or one state file) and a parser:
links with their counters and VXLAN details (`ip -j -s -d link`), addresses, routes and the
route the kernel would take (`ip -j route get`), neighbours, FDB entries (`bridge -j fdb`),
the nat table (`iptables-save -c -t nat`), conntrack entries (/proc/net/nf_conntrack, else the
`conntrack` tool) and the node's pods (worker/network's IPAM files and sandbox records: pod IP
-> sandbox -> pod name, netns and host veth). The parsers are pure, for unit tests; the
readers take a node.Node, so a lab VM and this machine read the same way.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from kubelab.net import iptables
from kubelab.net.node import NETWORK_STATE, NetError, Node

VXLAN_DEV = "flannel.1"
BRIDGE = "cni0"
UNDERLAY = "eth0"


@dataclass
class Link:
    name: str
    ifindex: int
    mtu: int = 0
    mac: str = ""
    state: str = ""
    master: str = ""
    kind: str = ""                    # veth, vxlan, bridge, ...
    vxlan: dict = field(default_factory=dict)
    rx_packets: int = 0
    tx_packets: int = 0
    rx_dropped: int = 0
    tx_dropped: int = 0
    addrs: list[str] = field(default_factory=list)


def parse_links(text: str) -> dict[str, Link]:
    out = {}
    for d in json.loads(text or "[]"):
        stats = d.get("stats64") or d.get("stats") or {}
        rx, tx = stats.get("rx", {}), stats.get("tx", {})
        info = d.get("linkinfo", {})
        out[d["ifname"]] = Link(
            name=d["ifname"], ifindex=d.get("ifindex", 0), mtu=d.get("mtu", 0), mac=d.get("address", ""),
            state=d.get("operstate", ""), master=d.get("master", ""), kind=info.get("info_kind", ""),
            vxlan=info.get("info_data", {}) if info.get("info_kind") == "vxlan" else {},
            rx_packets=rx.get("packets", 0), tx_packets=tx.get("packets", 0),
            rx_dropped=rx.get("dropped", 0), tx_dropped=tx.get("dropped", 0),
            addrs=[f"{a['local']}/{a['prefixlen']}" for a in d.get("addr_info", []) if a.get("family") == "inet"])
    return out


def links(node: Node, netns: str = "") -> dict[str, Link]:
    got = parse_links(node.out(["ip", "-j", "-s", "-d", "link", "show"], netns))
    for d in json.loads(node.out(["ip", "-j", "-4", "addr", "show"], netns) or "[]"):
        if d.get("ifname") in got:
            got[d["ifname"]].addrs = [f"{a['local']}/{a['prefixlen']}" for a in d.get("addr_info", [])
                                      if a.get("family") == "inet"]
    return got


def routes(node: Node, netns: str = "") -> list[dict]:
    return json.loads(node.out(["ip", "-j", "-4", "route", "show"], netns) or "[]")


def route_get(node: Node, dst: str, *, src: str = "", iif: str = "", netns: str = "") -> tuple[dict | None, str]:
    """The route the kernel picks (as `ip route get` answers), or None and the kernel's refusal."""
    cmd = ["ip", "-j", "route", "get", dst]
    if src:
        cmd += ["from", src]
    if iif:
        cmd += ["iif", iif]
    p = node.run(cmd, netns)
    if p.returncode != 0:
        return None, (p.stderr or p.stdout).strip().removeprefix("RTNETLINK answers: ")
    got = json.loads(p.stdout or "[]")
    return (got[0] if got else None), ""


def neighbours(node: Node, dev: str, netns: str = "") -> list[dict]:
    return json.loads(node.out(["ip", "-j", "neigh", "show", "dev", dev], netns) or "[]")


def neigh_state(entry: dict) -> str:
    st = entry.get("state", [])
    return ",".join(st) if isinstance(st, list) else str(st)


def fdb(node: Node, *, dev: str = "", br: str = "") -> list[dict]:
    cmd = ["bridge", "-j", "fdb", "show"] + (["dev", dev] if dev else ["br", br])
    return json.loads(node.out(cmd) or "[]")


def bridge_ports(node: Node, br: str = BRIDGE) -> dict[str, str]:
    """MAC -> the bridge port the bridge learnt it on (the veth a pod's address lives behind)."""
    return {e["mac"]: e["ifname"] for e in fdb(node, br=br)
            if e.get("ifname") and e.get("ifname") != br and "self" not in e.get("flags", [])}


def nat(node: Node) -> iptables.NatTable | None:
    p = node.run(["iptables-save", "-c"])  # nat, and filter for services without endpoints
    if p.returncode != 0:
        return None
    return iptables.parse(p.stdout)


# ---- conntrack

_KV = re.compile(r"(\w+)=(\S+)")
_TUPLE = ("src", "dst", "sport", "dport", "type", "code", "id")


@dataclass
class Conn:
    proto: str
    state: str
    orig: dict[str, str]
    reply: dict[str, str]


def parse_conntrack(text: str) -> list[Conn]:
    """/proc/net/nf_conntrack or `conntrack -L` lines: the first src/dst/sport/dport are the
    original direction, the second the reply (whose source is where a DNAT really went)."""
    out = []
    for line in text.splitlines():
        words = line.split()
        proto = next((w for w in words if w in ("tcp", "udp", "icmp", "sctp")), "")
        if not proto:
            continue
        state = next((w for w in words if re.fullmatch(r"[A-Z_]{3,}", w)), "")
        orig: dict[str, str] = {}
        reply: dict[str, str] = {}
        for k, v in _KV.findall(line):
            if k not in _TUPLE:
                continue
            if k not in orig:
                orig[k] = v
            elif k not in reply:
                reply[k] = v
        out.append(Conn(proto, state, orig, reply))
    return out


def conntrack(node: Node) -> tuple[list[Conn], str]:
    """The node's connection tracking table and where it was read from ("" if nowhere)."""
    p = node.run(["cat", "/proc/net/nf_conntrack"])
    if p.returncode == 0:
        return parse_conntrack(p.stdout), "/proc/net/nf_conntrack"
    p = node.run(["conntrack", "-L"])
    if p.returncode == 0:
        return parse_conntrack(p.stdout), "conntrack -L"
    return [], ""


def find_conn(conns: list[Conn], *, src: str, sport: str = "", dst: str = "", dport: str = "",
              proto: str = "") -> Conn | None:
    for c in conns:
        o = c.orig
        if o.get("src") != src or (proto and c.proto != proto):
            continue
        if (sport and o.get("sport") != sport) or (dst and o.get("dst") != dst) or (dport and o.get("dport") != dport):
            continue
        return c
    return None


# ---- the node's pods (worker/network's state)

@dataclass
class PodNet:
    ip: str
    sandbox: str
    pod: str = ""
    namespace: str = ""
    netns: str = ""
    host_veth: str = ""


def pod_networks(node: Node, state_dir: str = NETWORK_STATE) -> list[PodNet]:
    """Every pod address the node's IPAM handed out, with its sandbox record."""
    ipam, records = node.path(state_dir + "/ipam"), node.path(state_dir + "/sandboxes")
    if not node.readable:
        raise NetError(f"node {node.name} is not readable from here")
    out = []
    try:
        entries = sorted(ipam.iterdir())
    except FileNotFoundError:
        return out
    for entry in entries:
        if not re.fullmatch(r"\d+\.\d+\.\d+\.\d+", entry.name):
            continue
        try:
            owner = entry.read_text().strip()
        except OSError:
            continue
        pn = PodNet(ip=entry.name, sandbox=owner)
        try:
            rec = json.loads((records / owner).read_text())
            pn.pod, pn.namespace = rec.get("pod", ""), rec.get("namespace", "")
            pn.netns, pn.host_veth = rec.get("netns", ""), rec.get("hostVeth", "")
        except (OSError, ValueError):
            pass
        out.append(pn)
    return out


def pod_by_ip(node: Node, ip: str) -> PodNet | None:
    return next((p for p in pod_networks(node) if p.ip == ip), None)
