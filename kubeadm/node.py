"""The node half that init and join share: choose the node's address, write the overlay's
static pod and the node daemons' flags files, start the daemons (kubeadm's kubelet-start
phase), and wait for the Node to be Ready.

The node IP is what the kubelet reports as InternalIP and what the overlay carries VXLAN over:
--node-ip, else the IPv4 address of --iface, else the default route's source, else the only
global IPv4 address. Lab VMs have no default route (eth0 is their only link) and Vagrant VMs
have a NAT interface with the same address on every VM, so the guess is kept simple and any
ambiguity is an error that names the flag to give.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from kubeadm import manifests, services

RUNTIME_ENDPOINT = "unix:///run/kubelab/runtime.sock"


class NodeIPError(Exception):
    pass


# ---- the node IP

def choose_node_ip(addrs: list[tuple[str, str]], default: tuple[str, str] | None, *, iface: str = "",
                   node_ip: str = "") -> tuple[str, str]:
    """(iface, ip) from the host's global IPv4 addresses [(iface, ip)] and its default route
    (dev, prefsrc or ""); pure, so the rules are tested without touching a network."""
    if node_ip:
        try:
            ipaddress.IPv4Address(node_ip)
        except ValueError:
            raise NodeIPError(f'invalid --node-ip "{node_ip}": want an IPv4 address such as 192.168.56.10') from None
        holders = [i for i, a in addrs if a == node_ip]
        if iface and iface not in holders:
            raise NodeIPError(f"--node-ip {node_ip} is not an address of --iface {iface}: "
                              f"{iface} has {', '.join(a for i, a in addrs if i == iface) or 'no IPv4 address'}")
        if not holders:
            raise NodeIPError(f"--node-ip {node_ip}: no interface of this host has that address "
                              f"(it has {', '.join(a for _, a in addrs) or 'none'})")
        return iface or holders[0], node_ip
    if iface:
        mine = [a for i, a in addrs if i == iface]
        if not mine:
            raise NodeIPError(f"--iface {iface}: no such interface with an IPv4 address on this host "
                              f"(interfaces with one: {', '.join(sorted({i for i, _ in addrs})) or 'none'})")
        return iface, mine[0]
    if default is not None:
        dev, src = default
        mine = [a for i, a in addrs if i == dev]
        if src and src in mine:
            return dev, src
        if mine:
            return dev, mine[0]
    if len(addrs) == 1:
        return addrs[0]
    if not addrs:
        raise NodeIPError("this host has no global IPv4 address: give the node's address with --node-ip")
    raise NodeIPError("no default route and several IPv4 addresses ("
                      + ", ".join(f"{a} on {i}" for i, a in addrs)
                      + "): choose the node's with --node-ip or --iface")


def _ip_json(*args: str) -> list:
    p = subprocess.run(["ip", "-j", *args], capture_output=True, text=True)
    if p.returncode != 0:
        raise NodeIPError(f"ip {' '.join(args)}: {p.stderr.strip()}")
    return json.loads(p.stdout or "[]")


def host_addresses() -> list[tuple[str, str]]:
    """[(iface, ip)] of every global-scope IPv4 address, in the kernel's order."""
    out = []
    for link in _ip_json("-4", "addr", "show"):
        for a in link.get("addr_info", []):
            if a.get("family") == "inet" and a.get("scope") == "global":
                out.append((link["ifname"], a["local"]))
    return out


def default_route() -> tuple[str, str] | None:
    routes = _ip_json("-4", "route", "show", "default")
    return (routes[0].get("dev", ""), routes[0].get("prefsrc", "")) if routes else None


def pick_node_ip(iface: str = "", node_ip: str = "") -> tuple[str, str]:
    return choose_node_ip(host_addresses(), default_route(), iface=iface, node_ip=node_ip)


# ---- the node daemons

@dataclass
class NodeSpec:
    node_name: str
    node_ip: str
    iface: str
    kubelet_conf: Path
    etc_dir: Path = Path("/etc/kubelab")
    var_dir: Path = Path("/var/lib/kubelab")
    cluster_cidr: str = "10.244.0.0/16"
    labels: dict[str, str] = field(default_factory=dict)
    taints: list[str] = field(default_factory=list)
    # the kube-dns Service's address, the pods' nameserver (kubeadm's clusterDNS); None: read
    # from kube-system/kubeadm-config when the node starts (join), "": no cluster DNS
    cluster_dns: str | None = None
    cluster_domain: str = "cluster.local"

    @property
    def manifest_dir(self) -> Path:
        return Path(self.etc_dir) / "manifests"


def dns_service_ip(service_cidr: str) -> str:
    """kube-dns's ClusterIP: the tenth address of the service CIDR, as kubeadm picks it (10.96.0.10)."""
    return str(ipaddress.ip_network(service_cidr)[10])


def runtime_flags(spec: NodeSpec) -> dict[str, str]:
    # each node its own cgroup parent: lab VMs share the host's cgroup tree
    return {"root-dir": str(spec.var_dir), "listen": RUNTIME_ENDPOINT, "cgroup-parent": f"/kubelab/{spec.node_name}"}


def kubelet_flags(spec: NodeSpec) -> dict[str, str]:
    flags = {"config": str(spec.kubelet_conf), "node-name": spec.node_name, "node-ip": spec.node_ip,
             "root-dir": str(spec.var_dir), "manifest-dir": str(spec.manifest_dir),
             "container-runtime-endpoint": RUNTIME_ENDPOINT, "cluster-cidr": spec.cluster_cidr}
    if spec.cluster_dns:
        flags["cluster-dns"] = spec.cluster_dns
        flags["cluster-domain"] = spec.cluster_domain
    if spec.labels:
        flags["node-labels"] = ",".join(f"{k}={v}" for k, v in spec.labels.items())
    if spec.taints:  # KEY[=VALUE]:EFFECT, set when the kubelet creates its Node
        flags["register-with-taints"] = ",".join(spec.taints)
    return flags


def write_node_files(spec: NodeSpec) -> list[Path]:
    """The overlay's manifest and both flags files; returns the paths written."""
    pod = manifests.overlay_pod(kubelet_conf=spec.kubelet_conf, node_name=spec.node_name, iface=spec.iface,
                                node_ip=spec.node_ip, cluster_cidr=spec.cluster_cidr)
    return [manifests.write(spec.manifest_dir, "kube-overlay", pod),
            services.write_flags(spec.var_dir, services.RUNTIME, runtime_flags(spec)),
            services.write_flags(spec.var_dir, services.KUBELET, kubelet_flags(spec))]


class ImageError(Exception):
    pass


def has_image(var_dir: Path, name: str = manifests.IMAGE) -> bool:
    p = subprocess.run([sys.executable, "-m", "kubelab.cli.main", "image", "ls", "-q", "--root-dir", str(var_dir)],
                       capture_output=True, text=True)
    return p.returncode == 0 and any(r.rsplit("/", 1)[-1].split(":")[0] == name for r in p.stdout.split())


def ensure_image(var_dir: Path, say=print) -> bool:
    """The static pods' image in the node's store, built offline when missing (returns whether
    it was built). Through `kubelab image`, as kubeadm reaches the runtime through its CLI."""
    if has_image(var_dir):
        return False
    say(f"[images] building the {manifests.IMAGE} image offline (from /bin/busybox) into {var_dir}")
    p = subprocess.run([sys.executable, "-m", "kubelab.cli.main", "image", "build-busybox", "--root-dir", str(var_dir)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise ImageError(f"building the busybox image failed: {(p.stderr or p.stdout).strip()} (install "
                         "busybox-static, or import an image named busybox with `kubelab image import`)")
    return True


def cluster_dns_from_config(kubelet_conf: Path) -> tuple[str, str]:
    """(kube-dns IP, cluster domain) from init's kube-system/kubeadm-config (networking.serviceSubnet
    and dnsDomain), read with the node's credentials, as kubeadm join reads clusterDNS from the
    cluster; ("", domain) when the cluster does not say."""
    import concurrent.futures

    import yaml

    async def read() -> dict:
        from kubelab.client.client import Client
        async with Client.connect(str(kubelet_conf), timeout=10) as c:
            cm = await c.resource("configmaps", "kube-system").get("kubeadm-config")
        return (yaml.safe_load(cm.data.get("ClusterConfiguration", "")) or {}).get("networking") or {}

    try:  # start_node is called from a running event loop: the read gets a loop of its own
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            net = pool.submit(asyncio.run, read()).result()
        domain = str(net.get("dnsDomain") or "cluster.local")
        return (dns_service_ip(str(net["serviceSubnet"])) if net.get("serviceSubnet") else ""), domain
    except Exception:  # noqa: BLE001 - no config (an older init): the kubelet runs without cluster DNS
        return "", "cluster.local"


def start_node(spec: NodeSpec, say=print) -> None:
    """kubeadm's kubelet-start: the static pods' image, the overlay static pod, the flags
    files, then the services."""
    if spec.cluster_dns is None:
        spec.cluster_dns, spec.cluster_domain = cluster_dns_from_config(spec.kubelet_conf)
        say(f"[kubelet-start] cluster DNS for the pods: {spec.cluster_dns or 'none (no serviceSubnet in kubeadm-config)'}")
    ensure_image(spec.var_dir, say)
    for path in write_node_files(spec) + [write_proxy_manifest(spec)]:
        say(f"[kubelet-start] wrote {path}")
    services.start_services(spec.var_dir, say=say)


def write_proxy_manifest(spec: NodeSpec) -> Path:
    """kube-proxy's static pod (kubeadm's kube-proxy addon, one per node): ETC/manifests/kube-proxy.yaml."""
    pod = manifests.proxy_pod(kubelet_conf=spec.kubelet_conf, node_name=spec.node_name, cluster_cidr=spec.cluster_cidr)
    return manifests.write(spec.manifest_dir, "kube-proxy", pod)


async def wait_node_ready(client, name: str, timeout: float) -> None:
    """Until the Node reports Ready=True; TimeoutError naming the last condition seen."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    last = "not registered yet"
    while True:
        try:
            node = await client.nodes().get(name)
            ready = [c for c in node.status.conditions if c.type == "Ready"]
            if ready and ready[0].status == "True":
                return
            last = f"Ready={ready[0].status} ({ready[0].reason})" if ready else "no Ready condition yet"
        except Exception as e:  # noqa: BLE001  (not found yet, API server restarting: keep polling)
            last = str(e).splitlines()[0] if str(e) else type(e).__name__
        if loop.time() > end:
            raise TimeoutError(f'node "{name}" not Ready after {timeout:.0f}s: {last}')
        await asyncio.sleep(0.5)
