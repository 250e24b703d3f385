"""`kubelab kubelet`: the node agent, with its container runtime and pod network on this host."""
from __future__ import annotations

import socket
from pathlib import Path

from kubelab.cli.common import CLIError
from kubelab.client.client import Client
from kubelab.daemon import run_until_signalled

from .kubelet import Kubelet, KubeletConfig


def register(sub, parents) -> None:
    p = sub.add_parser("kubelet", parents=parents, help="Run the kubelet (node agent)")
    p.add_argument("--node-name", default=socket.gethostname())
    p.add_argument("--node-ip", default="", help="the address the node is reached on (default: guessed)")
    p.add_argument("--root-dir", default="/var/lib/kubelab")
    p.add_argument("--manifest-dir", default="/etc/kubelab/manifests")
    p.add_argument("--runc-root", default="", help="runc state dir (default ROOT_DIR/runc)")
    p.add_argument("--netns-dir", default="/var/run/netns")
    p.add_argument("--bridge", default="cni0")
    p.add_argument("--cluster-cidr", default="10.244.0.0/16")
    p.add_argument("--node-labels", default="", help="K=V,K2=V2 added to the Node")
    p.add_argument("--register-with-taints", default="",
                   help="KEY[=VALUE]:EFFECT,... the Node is created with (kubeadm's control-plane NoSchedule)")
    p.add_argument("--subnet-file", default="/run/flannel/subnet.env",
                   help="the overlay's subnet file; its FLANNEL_MTU is the pods' MTU (1500 without it)")
    p.add_argument("--lease-duration", type=int, default=40)
    p.add_argument("--lease-renew-interval", type=float, default=10.0)
    p.add_argument("--node-status-interval", type=float, default=10.0)
    p.add_argument("--backoff-initial", type=float, default=10.0, help="first restart backoff (seconds)")
    p.add_argument("--backoff-max", type=float, default=300.0)
    p.add_argument("--port", type=int, default=10250, help="kubelet API port (0: any free port)")
    p.add_argument("--image-dir", default="",
                   help="where images live (default: ROOT_DIR when `kubelab image --root-dir ROOT_DIR` "
                        "put images there, else the host's shared store /var/lib/kubelab)")
    p.add_argument("--insecure-registry", action="append", default=[], help="registry host:port pulled without TLS")
    p.add_argument("--cluster-dns", default="",
                   help="comma-separated DNS server IPs for pods with dnsPolicy ClusterFirst (kubeadm: the 10th "
                        "address of the service CIDR); without it they fall back to Default")
    p.add_argument("--cluster-domain", default="cluster.local",
                   help="the cluster's DNS domain, searched by ClusterFirst pods")
    p.add_argument("--resolv-conf", default="/etc/resolv.conf",
                   help='the node\'s resolver config, given to dnsPolicy Default pods ("": none)')
    p.add_argument("--container-runtime-endpoint", default="",
                   help="unix:///path of a `kubelab runtime` daemon (default: the runtime runs in this process)")
    p.set_defaults(func=run, daemon=True)


TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


def parse_taints(value: str) -> list[dict]:
    """`--register-with-taints` as the kubelet reads it: KEY[=VALUE]:EFFECT, comma separated."""
    out = []
    for item in filter(None, (x.strip() for x in value.split(","))):
        kv, _, effect = item.rpartition(":")
        key, _, val = kv.partition("=")
        if not key or effect not in TAINT_EFFECTS:
            raise CLIError(f'invalid --register-with-taints "{item}": want KEY[=VALUE]:EFFECT with EFFECT one of '
                           + ", ".join(TAINT_EFFECTS) + " (e.g. node-role.kubernetes.io/control-plane:NoSchedule)")
        out.append({"key": key, "value": val, "effect": effect})
    return out


def guess_node_ip() -> str:
    """The source address of the default route, else loopback (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def image_dir(flag: str, root: Path) -> Path:
    """The node's image store: the flag; else the root dir if images were imported into it
    (`kubelab image import --root-dir ROOT_DIR`); else the host's shared store."""
    if flag:
        return Path(flag)
    return root if (root / "images" / "index.json").exists() else Path("/var/lib/kubelab")


async def wait_for_runtime(runtime, timeout: float = 60.0) -> str:
    """The runtime's version, once it answers (a runtime daemon may start after the kubelet)."""
    import asyncio
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        try:
            return await runtime.version()
        except Exception as e:  # noqa: BLE001
            if loop.time() > end:
                raise RuntimeError(f"the container runtime did not answer in {timeout:.0f}s: {e}") from None
            print(f"waiting for the container runtime: {e}", flush=True)
            await asyncio.sleep(1)


def parse_cluster_dns(value: str) -> list[str]:
    import ipaddress
    out = []
    for item in filter(None, (x.strip() for x in value.split(","))):
        try:
            out.append(str(ipaddress.ip_address(item)))
        except ValueError:
            raise CLIError(f'invalid --cluster-dns "{item}": must be an IP address (e.g. 10.96.0.10)') from None
    return out


async def run(args) -> int:
    from worker.network import PodNetwork
    from worker.runtime.images import ImageStore
    from worker.runtime.runtime import Runtime

    root = Path(args.root_dir)
    labels = dict(kv.split("=", 1) for kv in args.node_labels.split(",") if "=" in kv)
    try:
        taints = parse_taints(args.register_with_taints)
        cluster_dns = parse_cluster_dns(args.cluster_dns)
    except CLIError as e:  # a bad flag is one line, not a traceback
        print(f"error: {e}", flush=True)
        return 1
    cfg = KubeletConfig(node_name=args.node_name, node_ip=args.node_ip or guess_node_ip(), root_dir=root,
                        manifest_dir=Path(args.manifest_dir), lease_duration=args.lease_duration,
                        lease_renew_interval=args.lease_renew_interval, status_interval=args.node_status_interval,
                        backoff_initial=args.backoff_initial, backoff_max=args.backoff_max, labels=labels, taints=taints,
                        port=args.port, cluster_dns=cluster_dns, cluster_domain=args.cluster_domain,
                        resolv_conf=args.resolv_conf)
    if args.container_runtime_endpoint:
        from worker.runtime.remote import RemoteImageStore, RemoteRuntime
        images = RemoteImageStore(args.container_runtime_endpoint)
        runtime = RemoteRuntime(args.container_runtime_endpoint)
    else:
        images = ImageStore(image_dir(args.image_dir, root))
        runtime = Runtime(root, runc_root=Path(args.runc_root or root / "runc"), images=images)
    network = PodNetwork(root / "network", bridge=args.bridge, netns_dir=Path(args.netns_dir),
                         cluster_cidr=args.cluster_cidr, subnet_file=Path(args.subnet_file) if args.subnet_file else None)
    from kubelab.client.config import load_default
    client_cfg = load_default(args.config)
    client = Client.from_config(client_cfg)
    kubelet = Kubelet(client, cfg, runtime=runtime, images=images, network=network,
                      runtime_version=await wait_for_runtime(runtime), cluster_ca=client_cfg.ca_pem)
    kubelet.syncer.insecure_registries = tuple(args.insecure_registry)
    print(f"kubelet for node {cfg.node_name} ({cfg.node_ip}), root {root}, manifests {cfg.manifest_dir}", flush=True)
    return await run_until_signalled(kubelet.run(), cleanup=client.close)
