"""`kubelab init`: make this machine the master of a new cluster, in kubeadm's phases.

    preflight            root, runc/conmon, free ports, br_netfilter, VXLAN, not initialized, node IP
    images               the local busybox image the static pods run on (built offline if missing)
    certs                the CA, the API server's serving certificate (advertise address, node
                         name, the first service IP, kubernetes.default.svc...), client certs
    kubeconfig           admin.conf, kubelet.conf (system:node:NAME), controller-manager.conf,
                         scheduler.conf in ETC, as kubeadm lays out /etc/kubernetes
    etcd                 ETC/manifests/etcd.yaml (data in VAR/etcd)
    control-plane        kube-apiserver, kube-scheduler, kube-controller-manager manifests
    kubelet-start        the overlay's manifest, the flags files, the runtime and kubelet services
    wait-control-plane   the API server answers (the kubelet ran the static pods)
    mark-control-plane   label node-role.kubernetes.io/control-plane, taint it NoSchedule
    bootstrap-token      a token for `kubelab join`
and then the admin config's use and the join command (the last line of the output, exactly
`kubelab token create --print-join-command`'s). A failed phase rolls back what this run made
(phases.py). The file layout and the image choice are in docs/bootstrap.md.
"""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import re
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from kubeadm import manifests, node, phases, preflight, services
from kubeadm.phases import Context, Phase, PhaseError

CONTROL_PLANE_LABEL = "node-role.kubernetes.io/control-plane"
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
CONFS = ("admin.conf", "kubelet.conf", "controller-manager.conf", "scheduler.conf")


@dataclass
class InitOptions:
    advertise_address: str = ""
    pod_network_cidr: str = "10.244.0.0/16"
    service_cidr: str = "10.96.0.0/12"
    node_name: str = ""
    iface: str = ""
    etc_dir: Path = Path("/etc/kubelab")
    var_dir: Path = Path("/var/lib/kubelab")
    run_dir: Path = services.RUN_DIR
    timeout: float = 240.0                # wait-control-plane and the node's registration
    skip_checks: tuple[str, ...] = ()     # tests: the preflight checks not to run ("ports")


def validate(o: InitOptions) -> None:
    """Flag errors before anything is touched, each naming its flag."""
    for flag, value in (("--pod-network-cidr", o.pod_network_cidr), ("--service-cidr", o.service_cidr)):
        try:
            net = ipaddress.IPv4Network(value, strict=True)
        except ValueError as e:
            raise PhaseError("preflight", f'invalid {flag} "{value}": {e} '
                             "(want a CIDR such as 10.244.0.0/16)") from None
        if net.prefixlen > 28:
            raise PhaseError("preflight", f'invalid {flag} "{value}": too small (want /28 or larger)')
    if ipaddress.IPv4Network(o.service_cidr).prefixlen < 12:  # the API server's limit (allocator.py)
        raise PhaseError("preflight", f'invalid --service-cidr "{o.service_cidr}": specified service subnet is '
                         "too large; for 32-bit addresses, the mask must be >= 12")
    if ipaddress.IPv4Network(o.pod_network_cidr).overlaps(ipaddress.IPv4Network(o.service_cidr)):
        raise PhaseError("preflight", f"--pod-network-cidr {o.pod_network_cidr} overlaps "
                         f"--service-cidr {o.service_cidr}: choose ranges apart")
    if ipaddress.IPv4Network(o.pod_network_cidr).prefixlen > 24:
        raise PhaseError("preflight", f'invalid --pod-network-cidr "{o.pod_network_cidr}": each node gets a /24 of it, '
                         "so it must be a /24 or larger")
    if o.advertise_address:
        try:
            ipaddress.IPv4Address(o.advertise_address)
        except ValueError:
            raise PhaseError("preflight", f'invalid --apiserver-advertise-address "{o.advertise_address}": '
                             "want an IPv4 address of this host") from None
    o.node_name = o.node_name or socket.gethostname().lower()
    if not DNS1123_SUBDOMAIN.match(o.node_name) or len(o.node_name) > 253:
        raise PhaseError("preflight", f'invalid --node-name "{o.node_name}": a lowercase RFC 1123 subdomain must '
                         "consist of lower case alphanumeric characters, '-' or '.'")


def first_service_ip(service_cidr: str) -> str:
    return str(ipaddress.IPv4Network(service_cidr)[1])


def apiserver_sans(o: InitOptions, advertise: str) -> list[str]:
    return [advertise, o.node_name, first_service_ip(o.service_cidr), "kubernetes", "kubernetes.default",
            "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"]


# ---- the phases

def _preflight(o: InitOptions):
    def run(ctx: Context) -> None:
        ctx.say("[preflight] Running pre-flight checks")
        errs = preflight.init_checks(o.etc_dir, ports=() if "ports" in o.skip_checks else preflight.PORTS)
        try:
            iface, ip = node.pick_node_ip(o.iface, o.advertise_address)
        except node.NodeIPError as e:
            errs.append(f"[ERROR NodeIP]: {e}")
            iface = ip = ""
        if errs:
            initialized = any("FileAvailable" in e or "DirAvailable" in e for e in errs)
            raise PhaseError("preflight", preflight.report(errs, reset_hint=initialized))
        ctx.values.update(iface=iface, advertise=ip)
        ctx.say(f"[preflight] node {o.node_name}: advertise address {ip} on {iface}")
    return run


def _images(o: InitOptions):
    def run(ctx: Context) -> None:
        if node.has_image(o.var_dir):
            ctx.say(f"[images] found the {manifests.IMAGE} image in {o.var_dir}")
            return
        ctx.track(o.var_dir / "images")
        try:
            node.ensure_image(o.var_dir, ctx.say)
        except node.ImageError as e:
            raise PhaseError("images", str(e)) from None
    return run


def _certs(o: InitOptions):
    def run(ctx: Context) -> None:
        from kubelab import pki
        d = ctx.mkdir(o.etc_dir / "pki")
        sans = apiserver_sans(o, ctx.values["advertise"])
        cp = pki.ensure_control_plane_pki(d, sans=sans)
        ctx.values["pki"] = cp
        ctx.say(f'[certs] Using certificateDir folder "{d}"')
        ctx.say("[certs] ca, apiserver (serving for " + ", ".join(sans) + "), kubernetes-admin, "
                "scheduler, controller-manager")
        pki.ensure_etcd_pki(d, o.node_name, [ctx.values["advertise"]])
        ctx.say("[certs] etcd/ca, etcd/server, etcd/peer, etcd/healthcheck-client, apiserver-etcd-client "
                "(etcd's own CA)")
    return run


def _kubeconfig(o: InitOptions):
    def run(ctx: Context) -> None:
        from kubelab import pki
        from kubelab.client.config import ClientConfig, write_config
        cp = ctx.values["pki"]
        server = f"{ctx.values['advertise']}:6443"
        http_server = f"{ctx.values['advertise']}:6444"  # kubeadm/manifests.py's --http-listen: kubectl's
        node_cert, node_key = pki.issue_cert(cp.ca.cert, cp.ca.key, f"system:node:{o.node_name}",
                                             organizations=("system:nodes",), client=True)
        for name, cert, key, user in (
                ("admin.conf", cp.admin.cert, cp.admin.key, "kubernetes-admin"),
                ("kubelet.conf", node_cert, node_key, f"system:node:{o.node_name}"),
                ("controller-manager.conf", cp.controller_manager.cert, cp.controller_manager.key,
                 "system:kube-controller-manager"),
                ("scheduler.conf", cp.scheduler.cert, cp.scheduler.key, "system:kube-scheduler")):
            path = ctx.track(o.etc_dir / name)
            write_config(path, ClientConfig(server=server, http_server=http_server, ca_pem=cp.ca.cert, cert_pem=cert,
                                            key_pem=key), user=user)
            ctx.say(f'[kubeconfig] Writing "{name}" kubeconfig file')
    return run


def _control_plane_spec(o: InitOptions, ctx: Context) -> manifests.ControlPlane:
    return manifests.ControlPlane(etc_dir=o.etc_dir, var_dir=o.var_dir, advertise_address=ctx.values["advertise"],
                                  pod_network_cidr=o.pod_network_cidr, service_cidr=o.service_cidr,
                                  node_name=o.node_name)


def _write_manifests(o: InitOptions, names: list[str], phase: str):
    def run(ctx: Context) -> None:
        d = ctx.mkdir(o.etc_dir / "manifests")
        cp = _control_plane_spec(o, ctx)
        if "etcd" in names:
            ctx.mkdir(o.var_dir / "etcd")
        for name in names:
            path = ctx.track(d / f"{name}.yaml")
            manifests.write(d, name, manifests.CONTROL_PLANE[name](cp))
            ctx.say(f'[{phase}] Creating static Pod manifest for "{name}" at {path}')
    return run


def _kubelet_start(o: InitOptions):
    def run(ctx: Context) -> None:
        spec = node.NodeSpec(node_name=o.node_name, node_ip=ctx.values["advertise"], iface=ctx.values["iface"],
                             kubelet_conf=o.etc_dir / "kubelet.conf", etc_dir=o.etc_dir, var_dir=o.var_dir,
                             cluster_cidr=o.pod_network_cidr, cluster_dns=node.dns_service_ip(o.service_cidr),
                             # as kubeadm's nodeRegistration: the Node is born tainted, so nothing is
                             # scheduled onto it before mark-control-plane runs
                             taints=[f"{CONTROL_PLANE_LABEL}:NoSchedule"])
        ctx.track(spec.manifest_dir / "kube-overlay.yaml")
        ctx.track(spec.manifest_dir / "kube-proxy.yaml")
        for s in services.SERVICES:
            ctx.track(services.flags_path(o.var_dir, s))
        # VAR/log is not taken back by a rollback: it is where the failure is explained
        # the daemons make their own state in VAR (containers, pods, network...): a rollback
        # takes back whatever was not there before they started
        ctx.values["var_before"] = ({p.name for p in o.var_dir.iterdir()} if o.var_dir.is_dir() else set()) | {"log"}
        ctx.services_started = True  # from here on the rollback stops them and resets the node
        node.start_node(spec, say=ctx.say)
    return run


def _wait_control_plane(o: InitOptions):
    async def run(ctx: Context) -> None:
        from kubelab.client.client import Client
        ctx.say(f"[wait-control-plane] Waiting for the kubelet to boot up the control plane as static Pods "
                f"from {o.etc_dir / 'manifests'}; this can take up to {o.timeout:.0f}s")
        started = time.monotonic()
        end = started + o.timeout
        last: Exception | None = None
        next_note = started + 10
        while True:
            try:
                async with Client.connect(str(o.etc_dir / "admin.conf"), timeout=3) as c:
                    await c.namespaces().get("default")
                break
            except Exception as e:  # noqa: BLE001  (not up yet: keep polling until the deadline)
                last = e
            now = time.monotonic()
            if now > end:
                raise PhaseError("wait-control-plane", f"the API server did not answer in {o.timeout:.0f}s "
                                 f"({str(last).splitlines()[0] if str(last) else type(last).__name__}); "
                                 f"{o.var_dir}/log/ keeps why: kubelab-kubelet.log, kubelab-runtime.log and "
                                 "containers/<static pod>.log")
            if now > next_note:
                ctx.say(f"[wait-control-plane] still waiting for the API server ({now - started:.0f}s)")
                next_note = now + 10
            await asyncio.sleep(0.5)
        ctx.say(f"[apiclient] All control plane components are healthy after {time.monotonic() - started:.1f}s")
    return run


def cluster_configuration(o: InitOptions, advertise: str) -> str:
    """kubeadm's ClusterConfiguration as init stores it in kube-system/kubeadm-config: what a
    joining node reads to learn the pod network (kubelab join) and a student reads to see how
    the cluster was made."""
    import yaml
    return yaml.safe_dump({
        "apiVersion": "kubeadm.k8s.io/v1beta3", "kind": "ClusterConfiguration", "clusterName": "kubelab",
        "controlPlaneEndpoint": f"{advertise}:6443",
        "networking": {"podSubnet": o.pod_network_cidr, "serviceSubnet": o.service_cidr,
                       "dnsDomain": "cluster.local"},
    }, sort_keys=False)


def _upload_config(o: InitOptions):
    async def run(ctx: Context) -> None:
        from kubelab.api.v1 import objects_pb2 as v1
        from kubelab.client.client import Client
        from kubelab.errors import AlreadyExists
        cm = v1.ConfigMap()
        cm.metadata.name, cm.metadata.namespace = "kubeadm-config", "kube-system"
        cm.data["ClusterConfiguration"] = cluster_configuration(o, ctx.values["advertise"])
        ctx.say('[upload-config] Storing the configuration used in ConfigMap "kubeadm-config" in the '
                '"kube-system" Namespace')
        async with Client.connect(str(o.etc_dir / "admin.conf"), timeout=5) as c:
            configmaps = c.resource("configmaps", "kube-system")
            try:
                await configmaps.create(cm)
            except AlreadyExists:  # a re-run after a failed later phase: take this run's values
                old = await configmaps.get("kubeadm-config")
                old.data["ClusterConfiguration"] = cm.data["ClusterConfiguration"]
                await configmaps.update(old)
    return run


def _mark_control_plane(o: InitOptions):
    async def run(ctx: Context) -> None:
        from kubelab.api.v1 import objects_pb2 as v1
        from kubelab.client.client import Client
        from kubelab.errors import Conflict, NotFound
        ctx.say(f'[mark-control-plane] Marking the node {o.node_name} as control-plane by adding the label '
                f'"{CONTROL_PLANE_LABEL}=\'\'" and the taint [{CONTROL_PLANE_LABEL}:NoSchedule]')
        end = time.monotonic() + o.timeout
        async with Client.connect(str(o.etc_dir / "admin.conf"), timeout=5) as c:
            while True:
                try:
                    n = await c.nodes().get(o.node_name)
                    n.metadata.labels[CONTROL_PLANE_LABEL] = ""
                    if not any(t.key == CONTROL_PLANE_LABEL and t.effect == "NoSchedule" for t in n.spec.taints):
                        n.spec.taints.append(v1.Taint(key=CONTROL_PLANE_LABEL, effect="NoSchedule"))
                    await c.nodes().update(n)
                    return
                except (NotFound, Conflict) as e:
                    if time.monotonic() > end:
                        raise PhaseError("mark-control-plane", f'node "{o.node_name}" could not be marked in '
                                         f"{o.timeout:.0f}s: {e} (has the kubelet registered it? see "
                                         f"{o.var_dir}/log/kubelab-kubelet.log)") from None
                    await asyncio.sleep(0.5)
    return run


def _bootstrap_token(o: InitOptions):
    async def run(ctx: Context) -> None:
        from kubelab.bootstrap import tokens
        from kubelab.client.client import Client
        t = tokens.new_token(description="made by kubelab init")
        async with Client.connect(str(o.etc_dir / "admin.conf"), timeout=5) as c:
            await c.resource("secrets", tokens.NAMESPACE).create(tokens.to_secret(t))
        ctx.values["token"] = str(t)
        ctx.say(f"[bootstrap-token] Using token: {t.id}.<secret> (expires in 24h; "
                "`kubelab token create --print-join-command` makes another)")
    return run


def dns_service(service_cidr: str):
    """kube-system/kube-dns as kubeadm's CoreDNS addon makes it: the tenth service address,
    dns 53/UDP and dns-tcp 53/TCP to the pods labelled k8s-app=kube-dns."""
    from google.protobuf import struct_pb2

    from kubelab.api.v1 import objects_pb2 as v1
    ip = node.dns_service_ip(service_cidr)
    svc = v1.Service()
    svc.metadata.name, svc.metadata.namespace = "kube-dns", "kube-system"
    svc.metadata.labels.update({"k8s-app": "kube-dns", "kubernetes.io/cluster-service": "true",
                                "kubernetes.io/name": "KubeDNS"})
    svc.spec.type, svc.spec.clusterIP = "ClusterIP", ip
    svc.spec.clusterIPs.append(ip)
    svc.spec.selector["k8s-app"] = "kube-dns"
    for name, proto in (("dns", "UDP"), ("dns-tcp", "TCP")):
        svc.spec.ports.add(name=name, protocol=proto, port=53, targetPort=struct_pb2.Value(number_value=53))
    return svc


def _addon_dns(o: InitOptions):
    async def run(ctx: Context) -> None:
        from kubelab.client.client import Client
        from kubelab.errors import AlreadyExists
        d = ctx.mkdir(o.etc_dir / "manifests")
        path = ctx.track(d / "kube-dns.yaml")
        manifests.write(d, "kube-dns", manifests.dns_pod(kubelet_conf=o.etc_dir / "kubelet.conf"))
        svc = dns_service(o.service_cidr)
        async with Client.connect(str(o.etc_dir / "admin.conf"), timeout=5) as c:
            try:
                await c.resource("services", "kube-system").create(svc)
            except AlreadyExists:  # a re-run after a failed later phase: the same Service
                pass
        ctx.say(f'[addons] Applied essential addon: kube-dns (static Pod "kube-dns" at {path}, '
                f"Service kube-system/kube-dns at {svc.spec.clusterIP})")
    return run


def init_phases(o: InitOptions) -> list[Phase]:
    return [
        Phase("preflight", _preflight(o)),
        Phase("images", _images(o)),
        Phase("certs", _certs(o)),
        Phase("kubeconfig", _kubeconfig(o)),
        Phase("etcd", _write_manifests(o, ["etcd"], "etcd")),
        Phase("control-plane", _write_manifests(o, ["kube-apiserver", "kube-scheduler", "kube-controller-manager"],
                                                "control-plane")),
        Phase("kubelet-start", _kubelet_start(o)),
        Phase("wait-control-plane", _wait_control_plane(o)),
        Phase("upload-config", _upload_config(o)),
        Phase("mark-control-plane", _mark_control_plane(o)),
        Phase("bootstrap-token", _bootstrap_token(o)),
        Phase("addon", _addon_dns(o)),
    ]


def keep_container_logs(var_dir: Path) -> list[Path]:
    """Copy the containers' logs (VAR/pods/UID/logs/NAME/N.log) to VAR/log/containers/NAME.log
    before the node reset removes the pods: a failed init's reasons are in them."""
    import shutil
    kept = []
    for log in sorted(var_dir.glob("pods/*/logs/*/*.log")):
        dst = var_dir / "log" / "containers" / f"{log.parent.name}.log"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log, dst)
        kept.append(dst)
    return kept


async def rollback(ctx: Context) -> None:
    from kubeadm import reset
    if ctx.services_started:
        for path in keep_container_logs(ctx.var_dir):
            ctx.say(f"[rollback] kept {path}")
        await reset.reset_node_half(ctx.var_dir, ctx.values.get("run_dir", services.RUN_DIR), say=ctx.say)
        before = ctx.values.get("var_before", set())
        if ctx.var_dir.is_dir():
            ctx.created += [p for p in sorted(ctx.var_dir.iterdir()) if p.name not in before and p not in ctx.created]
    for path in phases.remove_created(ctx):
        ctx.say(f"[rollback] removed {path}")


async def init(o: InitOptions, *, say=print) -> str:
    """Run every phase; returns the join command."""
    from kubelab.cli.token import join_command
    validate(o)
    ctx = Context(etc_dir=o.etc_dir, var_dir=o.var_dir, say=say, values={"run_dir": o.run_dir})
    await phases.run_phases(init_phases(o), ctx, rollback=rollback)
    cmd = join_command(f"{ctx.values['advertise']}:6443", ctx.values["token"], ctx.values["pki"].ca.cert)
    say("")
    say("Your kubelab control-plane has initialized successfully!")
    say("")
    say("To start using your cluster, run:")
    say("")
    say("  mkdir -p $HOME/.kubelab")
    say(f"  cp {o.etc_dir / 'admin.conf'} $HOME/.kubelab/config")
    say("")
    say(f"or, as root: export KUBELAB_CONFIG={o.etc_dir / 'admin.conf'}")
    say("")
    say("Then you can join any number of worker nodes by running the following on each as root:")
    say("")
    say(cmd)
    return cmd


def register(sub, parents) -> None:
    p = sub.add_parser("init", parents=parents, help="Make this machine the master of a new cluster")
    p.add_argument("--apiserver-advertise-address", default="",
                   help="the IP address the API server advertises (default: the node IP, see --iface)")
    p.add_argument("--pod-network-cidr", default="10.244.0.0/16", help="the range pod IPs come from")
    p.add_argument("--service-cidr", default="10.96.0.0/12", help="the range service IPs come from")
    p.add_argument("--node-name", default="", help="this node's name (default: the hostname)")
    p.add_argument("--iface", default="", help="the interface nodes reach this one on (VXLAN underlay)")
    p.add_argument("--etc-dir", default="/etc/kubelab", help=argparse.SUPPRESS)
    p.add_argument("--var-dir", default="/var/lib/kubelab", help=argparse.SUPPRESS)
    p.add_argument("--timeout", type=float, default=240.0, help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd)


async def _cmd(args) -> int:
    o = InitOptions(advertise_address=args.apiserver_advertise_address, pod_network_cidr=args.pod_network_cidr,
                    service_cidr=args.service_cidr, node_name=args.node_name, iface=args.iface,
                    etc_dir=Path(args.etc_dir), var_dir=Path(args.var_dir), timeout=args.timeout)
    try:
        await init(o, say=lambda m: print(m, flush=True))
    except PhaseError as e:
        print(str(e), file=sys.stderr)
        return 1
    return 0
