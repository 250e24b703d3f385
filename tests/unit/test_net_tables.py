"""kubelab/net: the parsers of ip/bridge/conntrack output and the tables `net show` and `net
trace` print, fed by hand with what the kernel answers on a lab worker."""
from __future__ import annotations

import json

from kubelab.net import iptables, kernel, probe, show, trace
from kubelab.net.kernel import PodNet

LINKS = json.dumps([
    {"ifindex": 2, "ifname": "eth0", "mtu": 1500, "operstate": "UP", "address": "aa:aa:aa:aa:aa:01",
     "stats64": {"rx": {"packets": 100, "dropped": 0}, "tx": {"packets": 90, "dropped": 0}}},
    {"ifindex": 3, "ifname": "cni0", "mtu": 1450, "operstate": "UP", "address": "02:08:ad:b9:67:55",
     "linkinfo": {"info_kind": "bridge"}, "stats64": {"rx": {"packets": 7}, "tx": {"packets": 8}},
     "addr_info": [{"family": "inet", "local": "10.244.1.1", "prefixlen": 24}]},
    {"ifindex": 4, "ifname": "flannel.1", "mtu": 1450, "operstate": "UNKNOWN", "address": "02:1d:90:24:3c:56",
     "linkinfo": {"info_kind": "vxlan", "info_data": {"id": 1, "local": "192.168.56.11", "link": "eth0",
                                                      "port": 8472}},
     "stats64": {"rx": {"packets": 5}, "tx": {"packets": 3}}},
    {"ifindex": 5, "ifname": "veth07e9ac4e", "mtu": 1450, "operstate": "UP", "master": "cni0",
     "linkinfo": {"info_kind": "veth"}, "stats64": {"rx": {"packets": 15}, "tx": {"packets": 28}}},
    {"ifindex": 6, "ifname": "vethdeadbeef", "mtu": 1450, "operstate": "UP", "master": "cni0",
     "stats64": {"rx": {"packets": 1}, "tx": {"packets": 2}}},
])
ROUTES = [
    {"dst": "10.244.0.0/24", "gateway": "10.244.0.0", "dev": "flannel.1", "flags": ["onlink"]},
    {"dst": "10.244.1.0/24", "dev": "cni0", "prefsrc": "10.244.1.1", "flags": []},
    {"dst": "10.244.2.0/24", "gateway": "10.244.2.0", "dev": "flannel.1", "flags": ["onlink"]},
    {"dst": "192.168.56.0/24", "dev": "eth0", "prefsrc": "192.168.56.11", "flags": []},
]
FDB = [{"mac": "02:eb:3c:55:eb:a1", "dst": "192.168.56.12", "flags": ["self"], "state": "permanent"},
       {"mac": "02:f9:45:03:06:d0", "dst": "192.168.56.10", "flags": ["self"], "state": "permanent"}]
NEIGH = [{"dst": "10.244.0.0", "lladdr": "02:f9:45:03:06:d0", "state": ["PERMANENT"]},
         {"dst": "10.244.2.0", "lladdr": "02:eb:3c:55:eb:a1", "state": ["PERMANENT"]}]
NAMES = {"192.168.56.10": "kubelab-master", "192.168.56.11": "kubelab-worker1", "192.168.56.12": "kubelab-worker2"}


def test_parse_links():
    links = kernel.parse_links(LINKS)
    vx = links["flannel.1"]
    assert (vx.kind, vx.vxlan["id"], vx.vxlan["port"], vx.mtu, vx.rx_packets, vx.tx_packets) == ("vxlan", 1, 8472, 1450, 5, 3)
    assert links["veth07e9ac4e"].master == "cni0" and links["cni0"].addrs == ["10.244.1.1/24"]
    assert links["eth0"].vxlan == {}


def test_parse_conntrack_orig_and_reply():
    text = ("ipv4     2 tcp      6 119 TIME_WAIT src=10.244.2.3 dst=10.96.0.20 sport=47684 dport=80 "
            "src=10.244.1.2 dst=10.244.2.3 sport=8080 dport=47684 [ASSURED] mark=0 zone=0 use=2\n"
            "ipv4     2 udp      17 26 src=192.168.56.11 dst=192.168.56.12 sport=38810 dport=8472 [UNREPLIED] "
            "src=192.168.56.12 dst=192.168.56.11 sport=8472 dport=38810 mark=0 zone=0 use=2\n"
            "ipv4     2 unknown  2 526 src=10.244.2.1 dst=224.0.0.22 [UNREPLIED] src=224.0.0.22 dst=10.244.2.1\n")
    conns = kernel.parse_conntrack(text)
    assert len(conns) == 2  # the protocol the tool does not name is skipped
    c = kernel.find_conn(conns, src="10.244.2.3", sport="47684", dst="10.96.0.20", dport="80", proto="tcp")
    assert c is not None and c.state == "TIME_WAIT"
    assert (c.reply["src"], c.reply["sport"]) == ("10.244.1.2", "8080")
    assert kernel.find_conn(conns, src="10.244.2.3", sport="1") is None
    # the tool's format (no ipv4 column) reads the same
    tool = kernel.parse_conntrack("tcp      6 119 TIME_WAIT src=10.244.2.3 dst=10.96.0.20 sport=1 dport=80 "
                                  "src=10.244.2.2 dst=10.244.2.3 sport=8080 dport=1 [ASSURED] mark=0 use=1")
    assert tool[0].reply["src"] == "10.244.2.2" and tool[0].orig["dst"] == "10.96.0.20"


def test_show_render():
    data = show.NodeNet(node="kubelab-worker1", ip="192.168.56.11", routes=ROUTES, links=kernel.parse_links(LINKS),
                        fdb=FDB, neigh=NEIGH, node_names=NAMES,
                        pods=[PodNet("10.244.1.2", "sb1", "a1", "net", "kl-sb1", "veth07e9ac4e")],
                        nat=iptables.parse("*nat\n:KUBE-SERVICES - [0:0]\nCOMMIT\n"))
    text = show.render(data)
    lines = text.splitlines()
    route = next(line for line in lines if line.strip().startswith("10.244.2.0/24"))
    assert "flannel.1" in route and "kubelab-worker2" in route  # via the neighbour then the FDB
    assert "VNI 1, port 8472, local 192.168.56.11" in text and "MTU 1450" in text
    fdb = next(line for line in lines if line.strip().startswith("02:eb:3c:55:eb:a1") and "192.168.56.12" in line)
    assert "kubelab-worker2" in fdb
    port = next(line for line in lines if line.strip().startswith("veth07e9ac4e"))
    assert "net/a1" in port and "10.244.1.2" in port
    other = next(line for line in lines if line.strip().startswith("vethdeadbeef"))
    assert "net/" not in other
    assert "(no service rules)" in text


def test_show_without_proxy_or_overlay():
    data = show.NodeNet(node="n", ip="", routes=[], links={}, nat=iptables.parse("*nat\nCOMMIT\n"))
    text = show.render(data)
    assert "no kube-proxy rules" in text and "no flannel.1" in text and "no cni0" in text
    assert "iptables-save failed" in show.render(show.NodeNet(node="n", ip="", routes=[], links={}, nat=None))


def test_show_services_table():
    from tests.unit.test_net_iptables import SAVE
    text = "\n".join(show.render_services(iptables.parse(SAVE)))
    row = next(line for line in text.splitlines() if "net/web:http" in line)
    assert "10.96.0.20" in row and "80/TCP" in row and "30080" in row and "KUBE-SVC-ABCDEFGHIJKLMNOP" in row
    assert "10.244.1.2:8080 (50.0%, 7)" in row and "10.244.2.2:8080 (50.0%, 3)" in row


def _trace(ok, error="", mode="tcp"):
    t = trace.Trace("Trace from pod net/c", "Probe: ...")
    t.hops = [trace.Hop("w2", "pod net/c eth0", "", 3, "tx"), trace.Hop("w2", "flannel.1", "", 3, "tx"),
              trace.Hop("w1", "flannel.1", "", 0, "rx"), trace.Hop("w1", "route", "")]
    return t, probe.Result(mode, ok, "4000", error)


def test_trace_verdicts():
    dst = trace.End("pod net/a1", "10.244.1.2", 8080)
    t, res = _trace(True)
    assert trace._verdict(t, res, dst, "pod net/a1").arrived
    assert "Arrived: pod net/a1 accepted the TCP connection" in trace.render(t)
    t, res = _trace(False, "connection refused")
    v = trace._verdict(t, res, dst, "pod net/a1")
    assert v.arrived and "nothing listens on port 8080" in v.verdict
    t, res = _trace(False, "timed out after 3s")
    v = trace._verdict(t, res, dst, "pod net/a1")
    assert not v.arrived
    text = trace.render(v)
    # lost after the last hop whose counters moved: the sending node's flannel.1
    assert "Lost: the probe did not arrive (timed out after 3s)" in text and "last seen at w2 flannel.1" in text
    assert "arrived:" not in text.lower()


def test_trace_render_rows():
    t, res = _trace(True)
    trace._verdict(t, res, trace.End("x", "10.244.1.2", 80), "")
    rows = trace.render(t).splitlines()
    head = next(r for r in rows if r.startswith("HOP"))
    assert head.split() == ["HOP", "NODE", "WHERE", "PACKETS", "WHAT", "THE", "KERNEL", "SHOWS"]
    assert any(r.startswith("2") and "flannel.1" in r and "tx +3" in r for r in rows)
    assert any(r.startswith("4") and "route" in r and " - " in r for r in rows)


def test_fmt_route():
    assert trace._fmt_route({"dst": "10.244.1.2", "gateway": "10.244.1.0", "dev": "flannel.1"}) == \
        "10.244.1.2 via 10.244.1.0 dev flannel.1"
    assert trace._fmt_route({"type": "local", "dst": "10.244.1.1", "dev": "lo"}) == "local 10.244.1.1 dev lo"
