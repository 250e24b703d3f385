"""The lab's private network on the host: the subnet plan, the lab bridge, one veth per VM into
its network namespace, the two FORWARD rules that keep lab traffic inside the lab, and the
host's routes to the cluster's pod and service ranges through the bridge. All through iproute2
and iptables, so what the lab made is what `ip` and `iptables -S` show."""
from __future__ import annotations

import ipaddress
import json
import os
import subprocess

from kubelab.lab.state import LabError

DEFAULT_SUBNET = "192.168.56.0/24"   # the Vagrant lab's private network, as VirtualBox host-only
DEFAULT_BRIDGE = "kubelab-lab0"
FIRST_VM = 10                        # master .10, workerN .10+N, as the Vagrant lab numbers them
# the pod and service ranges init will use: a lab subnet inside them would break routing
CLUSTER_RANGES = ("10.244.0.0/16", "10.96.0.0/12")
IFNAMSIZ = 15


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(list(cmd), capture_output=True, text=True, check=False)
    if check and p.returncode != 0:
        raise LabError(f"{' '.join(cmd)}: {p.stderr.strip() or p.stdout.strip() or f'exit {p.returncode}'}")
    return p


def plan(subnet: str, workers: int, cluster_ranges: tuple[str, ...] = CLUSTER_RANGES
         ) -> tuple[ipaddress.IPv4Network, str, list[str]]:
    """(network, bridge address, VM addresses) for a subnet; clear errors naming --subnet."""
    try:
        net = ipaddress.ip_network(subnet, strict=True)
    except ValueError as e:
        raise LabError(f'invalid --subnet "{subnet}": {e} (want an IPv4 network such as {DEFAULT_SUBNET})')
    if net.version != 4:
        raise LabError(f'invalid --subnet "{subnet}": the lab needs an IPv4 network')
    for r in cluster_ranges:
        if net.overlaps(ipaddress.ip_network(r)):
            raise LabError(f"invalid --subnet {subnet}: it overlaps the cluster's pod/service range {r}")
    if net.num_addresses < FIRST_VM + workers + 2:
        raise LabError(f"invalid --subnet {subnet}: too small for 1 master + {workers} workers "
                       f"(addresses .{FIRST_VM} to .{FIRST_VM + workers} are needed)")
    base = net.network_address
    return net, str(base + 1), [str(base + FIRST_VM + i) for i in range(workers + 1)]


def routed(net: ipaddress.IPv4Network) -> tuple[str, str] | None:
    """(dst, dev) of a route of the host's main table that overlaps net (not the default one)."""
    out = run("ip", "-j", "-4", "route", "show", "table", "main").stdout
    for r in json.loads(out or "[]"):
        dst = r.get("dst", "")
        if dst in ("", "default"):
            continue
        try:
            other = ipaddress.ip_network(dst, strict=False)
        except ValueError:
            continue
        if other.prefixlen and other.overlaps(net):
            return dst, r.get("dev", "?")
    return None


def check_unrouted(net: ipaddress.IPv4Network) -> None:
    """Refuse a subnet the host already routes, as VirtualBox refuses a clashing host-only net."""
    if clash := routed(net):
        raise LabError(f"subnet {net} is already routed on this host ({clash[0]} dev {clash[1]}): "
                       f"choose another with --subnet")


def check_cluster_unrouted(cidr: str, flag: str) -> ipaddress.IPv4Network:
    """The pod or service range the host is to reach through the lab: refused when the host
    already routes part of it (another lab is up, or a VPN): its routes would clash."""
    try:
        net = ipaddress.ip_network(cidr, strict=True)
    except ValueError as e:
        raise LabError(f'invalid {flag} "{cidr}": {e}')
    if net.version != 4:
        raise LabError(f'invalid {flag} "{cidr}": the lab needs an IPv4 network')
    if clash := routed(net):
        raise LabError(f"{flag} {cidr} is already routed on this host ({clash[0]} dev {clash[1]}; another lab "
                       f'up?): "kubelab lab down" that lab, or choose another {flag}')
    return net


def add_route(dst: str, via: str, bridge: str) -> None:
    run("ip", "route", "replace", dst, "via", via, "dev", bridge)


def delete_route(dst: str, via: str, bridge: str) -> None:
    p = run("ip", "route", "del", dst, "via", via, "dev", bridge, check=False)
    # gone already (its bridge went first, or by hand): nothing left to take back
    if p.returncode != 0 and not any(m in p.stderr for m in ("No such process", "Cannot find device")):
        raise LabError(f"ip route del {dst} via {via}: {p.stderr.strip()}")


def check_ifname(name: str, what: str) -> None:
    if not name or len(name) > IFNAMSIZ or any(c in name for c in "/ \t:"):
        raise LabError(f'invalid {what} "{name}": an interface name of 1-{IFNAMSIZ} characters without "/", ":" or spaces')


def link_exists(name: str) -> bool:
    return run("ip", "link", "show", "dev", name, check=False).returncode == 0


def make_bridge(name: str, address: str, prefixlen: int) -> None:
    if link_exists(name):
        raise LabError(f"link {name} already exists on this host: choose another bridge name with --bridge")
    run("ip", "link", "add", name, "type", "bridge")
    run("ip", "addr", "add", f"{address}/{prefixlen}", "dev", name)  # the host's route into the lab
    run("ip", "link", "set", name, "up")


def make_vm_link(netns: str, veth: str, bridge: str, address: str, prefixlen: int,
                 service_cidr: str = "") -> None:
    """netns with lo and eth0 (address on the lab subnet, no default route) plugged into bridge.
    The service range gets a route on eth0: a node's own connection to a ClusterIP needs some
    route before kube-proxy's OUTPUT DNAT rewrites it (a real VM's default route does that);
    an address no Service holds then dies unanswered on the lab bridge, never leaving the lab."""
    run("ip", "netns", "add", netns)
    run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
    run("ip", "link", "set", veth, "master", bridge, "up")
    cmds = [["link", "set", "lo", "up"], ["addr", "add", f"{address}/{prefixlen}", "dev", "eth0"],
            ["link", "set", "eth0", "up"]]
    if service_cidr:
        cmds.append(["route", "add", service_cidr, "dev", "eth0"])
    for cmd in cmds:
        run("ip", "-n", netns, *cmd)


def set_link(veth: str, up: bool) -> None:
    run("ip", "link", "set", veth, "up" if up else "down")


def delete_link(name: str) -> None:
    p = run("ip", "link", "del", name, check=False)
    if p.returncode != 0 and "Cannot find device" not in p.stderr:
        raise LabError(f"ip link del {name}: {p.stderr.strip()}")


def delete_netns(name: str) -> None:
    """`ip netns del`, also when the file has more than one nsfs mount stacked on it."""
    path = f"/run/netns/{name}"
    while True:
        with open("/proc/self/mountinfo") as f:
            if not any(line.split()[4] == path for line in f):
                break
        if run("umount", "--lazy", path, check=False).returncode != 0:
            break
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise LabError(f"cannot remove network namespace {name}: {e.strerror} (is a process still in it?)")


def forward_rules(bridge: str) -> list[list[str]]:
    tag = ["-m", "comment", "--comment", f"kubelab lab {bridge}"]
    return [["FORWARD", "-i", bridge, "-o", bridge, *tag, "-j", "ACCEPT"],
            ["FORWARD", "-i", bridge, "!", "-o", bridge, *tag, "-j", "DROP"]]


def add_rule(rule: list[str]) -> None:
    # inserted first: other chains (a kubelet's KUBELAB-FORWARD) must not decide lab traffic
    if run("iptables", "-w", "-C", *rule, check=False).returncode != 0:
        run("iptables", "-w", "-I", rule[0], "1", *rule[1:])


def delete_rule(rule: list[str]) -> None:
    while run("iptables", "-w", "-C", *rule, check=False).returncode == 0:
        run("iptables", "-w", "-D", *rule)
