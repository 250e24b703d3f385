"""`kubelab join MASTER:6443 --token T --discovery-token-ca-cert-hash sha256:HEX`: kubeadm
join's worker half, which turns this machine into a node of an existing cluster.

Phases, each printed as it runs, each failing with `error execution phase PHASE: ...` on one
line and exit code 1:
  preflight      flags; root, runc, conmon, ip, iptables, br_netfilter, vxlan (init's checks);
                 not joined already (ETC/kubelet.conf); the node IP
  discovery      the CA from the API server's TLS handshake, pinned by the hash, then
                 kube-public/cluster-info read trusting it (kubelab/bootstrap/discovery.py)
  kubelet-start  with the bootstrap token: no live node holds the name (the token may get a
                 Node and its Lease, as kubeadm's kubeadm:get-nodes role allows, so the check
                 comes before any certificate is issued in that name); TLS bootstrap (a CSR
                 the controller manager approves and signs, kubelab/bootstrap/tlsbootstrap.py);
                 ETC/kubelet.conf and ETC/pki/ca.crt; the node daemons started
                 (kubeadm/node.py start_node); the node Ready, seen with its own credentials.
Unlike kubeadm, where the kubelet performs the TLS bootstrap from bootstrap-kubelet.conf,
join performs it itself and hands the kubelet a finished kubelet.conf: the kubelet never sees
the token. A join that fails takes back what it wrote (kubelet.conf, ca.crt, the overlay
manifest; the services stopped and what they started removed, as init's rollback does with
kubeadm/reset.py); what is left on the API side is the CSR, as with kubeadm.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import ipaddress
import re
import socket
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from kubelab import meta
from kubelab.bootstrap import discovery, tlsbootstrap, tokens
from kubelab.bootstrap.discovery import BootstrapError
from kubelab.errors import ApiError, NotFound, ServiceUnavailable, Unauthorized

ETC_DIR = Path("/etc/kubelab")
VAR_DIR = Path("/var/lib/kubelab")
DEFAULT_TIMEOUT = "4m0s"
LEASE_DURATION = 40  # the kubelet's default, for a Lease that does not say
SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
SUBDOMAIN_MSG = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
                 "and must start and end with an alphanumeric character")
HASH = re.compile(r"^sha256:[0-9a-f]{64}$")


class JoinError(Exception):
    """A join that cannot go on: the phase it stopped in and why, with the fix."""

    def __init__(self, phase: str, message: str):
        super().__init__(message)
        self.phase = phase

    def line(self) -> str:
        return f"error execution phase {self.phase}: {self}" if self.phase else f"error: {self}"


@dataclass
class JoinOptions:
    endpoint: str
    token: str
    ca_cert_hash: str
    node_name: str = ""
    node_ip: str = ""
    iface: str = ""
    etc_dir: Path = ETC_DIR
    var_dir: Path = VAR_DIR
    timeout: float = 240.0           # the TLS bootstrap, and the node becoming Ready
    discovery_timeout: float = 10.0  # per connection attempt: an unreachable master fails fast


@dataclass
class NodeOps:
    """What join does to the host, from kubeadm/node.py and kubeadm/services.py; a test hands
    in its own to stop short of starting daemons."""
    start_node: Callable[..., None]
    wait_node_ready: Callable[..., Awaitable[None]]
    stop_node: Callable[..., Awaitable[None]]
    pick_node_ip: Callable[[str, str], tuple[str, str]]

    @classmethod
    def host(cls) -> NodeOps:
        from kubeadm import node, reset

        async def stop(spec) -> None:
            # as init's rollback: services, the containers they started, flannel.1, the cgroups
            await reset.reset_node_half(spec.var_dir, say=lambda m: None)

        def pick(iface: str, node_ip: str) -> tuple[str, str]:
            try:
                return node.pick_node_ip(iface, node_ip)
            except node.NodeIPError as e:  # its message names the flag
                raise JoinError("preflight", str(e)) from None
        return cls(node.start_node, node.wait_node_ready, stop, pick)


@dataclass
class JoinResult:
    node_name: str
    server: str
    csr_name: str
    bootstrap_seconds: float  # discovery through the signed certificate
    kubelet_conf: Path


# ---- flags

def validate(o: JoinOptions) -> JoinOptions:
    """Check the flags before touching anything; the node name defaults to the hostname."""
    if not o.endpoint:
        raise JoinError("", "the API server endpoint is required: kubelab join MASTER:6443 --token ... "
                            "(`kubelab token create --print-join-command` on the control plane prints the command)")
    check_endpoint(o.endpoint)
    if not o.token:
        raise JoinError("", "--token is required (`kubelab token create` on the control plane makes one)")
    try:
        tokens.parse(o.token)
    except tokens.TokenError as e:
        raise JoinError("", f"invalid --token: {e}") from None
    if not o.ca_cert_hash:
        raise JoinError("", "--discovery-token-ca-cert-hash is required: it pins the cluster CA "
                            "(`kubelab token create --print-join-command` on the control plane prints it)")
    if not HASH.match(o.ca_cert_hash.strip().lower()):
        raise JoinError("", f'invalid --discovery-token-ca-cert-hash "{o.ca_cert_hash}": expected '
                            "sha256:<64 hex digits>, the SHA-256 of the CA's public key")
    name = o.node_name or socket.gethostname().lower()
    if len(name) > 253 or not SUBDOMAIN.match(name):
        flag = "--node-name" if o.node_name else "the hostname (set --node-name)"
        raise JoinError("", f'invalid {flag} "{name}": {SUBDOMAIN_MSG}')
    o.node_name, o.ca_cert_hash = name, o.ca_cert_hash.strip().lower()
    return o


def check_endpoint(endpoint: str) -> None:
    host, sep, port = endpoint.rpartition(":")
    host = host.strip("[]")
    bad = f'invalid API server endpoint "{endpoint}": expected HOST:PORT, such as 192.168.56.10:6443'
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or "://" in endpoint:
        raise JoinError("", bad)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if len(host) > 253 or not SUBDOMAIN.match(host.lower()):
            raise JoinError("", bad) from None


# ---- preflight

def preflight(o: JoinOptions, ops: NodeOps) -> tuple[str, str]:
    """kubeadm's join checks that apply here; returns the node's (iface, ip)."""
    from kubeadm import preflight as checks
    # init's checks that a worker needs too; not the ports: a lab VM or a test may share the
    # host's, and the kubelet says so itself if 10250 is taken
    errors = [e for e in (checks.check_root(),) if e] + checks.check_binaries()
    errors += [e for e in (checks.check_br_netfilter(), checks.check_vxlan()) if e]
    conf = o.etc_dir / "kubelet.conf"
    if conf.exists():
        errors.append(f"[ERROR FileAvailable-{_dashed(conf)}]: {conf} already exists: this node has "
                      'already joined a cluster; run "kubelab reset" first')
    if errors:
        raise JoinError("preflight", " ".join(errors))  # one line: every error at once
    return ops.pick_node_ip(o.iface, o.node_ip)


def _dashed(path: Path) -> str:
    return str(path).strip("/").replace("/", "-")


# ---- kubelet-start

async def check_node_name(client, name: str, now: dt.datetime | None = None) -> None:
    """Refuse a name that a live node holds: a Node whose Ready condition is True, or whose
    Lease was renewed within its duration. A Node left by a machine that is gone does not
    count: the new node takes it over, as with kubeadm."""
    try:
        node = await client.nodes().get(name)
    except NotFound:
        return
    ready = next((c for c in node.status.conditions if c.type == "Ready"), None)
    if ready is not None and ready.status == "True":
        raise JoinError("kubelet-start", f'a Node with name "{name}" and status "Ready" already exists in the '
                                         "cluster. You must delete the existing Node or change the name of this "
                                         "new joining Node (--node-name)")
    try:
        lease = await client.leases("kube-node-lease").get(name)
    except NotFound:
        return
    renewed = meta.parse_time(lease.spec.renewTime)
    duration = lease.spec.leaseDurationSeconds if lease.spec.HasField("leaseDurationSeconds") else LEASE_DURATION
    if renewed is not None:
        age = ((now or meta.now()) - renewed).total_seconds()
        if age < duration:
            raise JoinError("kubelet-start", f'a Node with name "{name}" whose Lease was renewed {max(age, 0):.0f}s '
                                             f"ago (duration {duration}s) already exists in the cluster. You must "
                                             "delete the existing Node or change the name of this new joining Node "
                                             "(--node-name)")


@dataclass
class _Undo:
    """What this run wrote, taken back if it fails."""
    files: list[Path] = field(default_factory=list)
    dirs: list[Path] = field(default_factory=list)  # made by this run, removed if left empty
    kept: dict[Path, bytes] = field(default_factory=dict)  # files it replaced: put back
    node_spec: object = None

    def will_write(self, path: Path) -> None:
        if path.exists():
            self.kept.setdefault(path, path.read_bytes())
        else:
            self.files.append(path)

    async def run(self, ops: NodeOps, say) -> None:
        if self.node_spec is not None:
            try:
                await ops.stop_node(self.node_spec)
            except Exception as e:  # noqa: BLE001 - undo what else it can, and say what is left
                say(f"[reset] WARNING: could not stop the node services: {e}; run 'kubelab reset'")
            spec = self.node_spec
            self.files += [spec.etc_dir / "manifests" / "kube-overlay.yaml",
                           spec.etc_dir / "manifests" / "kube-proxy.yaml",
                           spec.var_dir / "kubelab-runtime.env", spec.var_dir / "kubelab-kubelet.env"]
        for f in reversed(self.files):
            f.unlink(missing_ok=True)
        for f, data in self.kept.items():
            f.write_bytes(data)
        for d in self.dirs:
            try:
                d.rmdir()
            except OSError:  # not empty (or gone): someone else's files are in it
                pass


async def join(o: JoinOptions, *, ops: NodeOps | None = None, say=print) -> JoinResult:
    ops = ops or NodeOps.host()
    validate(o)
    say("[preflight] Running pre-flight checks")
    iface, node_ip = preflight(o, ops)
    say(f"[preflight] Node {o.node_name}: IP {node_ip} on {iface}")
    # deepest first, for the undo
    made = [o.etc_dir / "pki", o.etc_dir / "manifests", o.var_dir / "log", o.etc_dir, o.var_dir]
    undo = _Undo(dirs=[d for d in made if not d.exists()])
    try:
        return await _join(o, ops, say, undo, iface, node_ip)
    except BaseException:
        await undo.run(ops, say)
        raise


async def _join(o: JoinOptions, ops: NodeOps, say, undo: _Undo, iface: str, node_ip: str) -> JoinResult:
    from kubelab.client.client import Client
    from kubelab.client.config import ClientConfig
    t0 = time.monotonic()
    say(f"[discovery] Fetching the cluster CA from https://{o.endpoint} and checking it against {o.ca_cert_hash}")
    try:
        server, ca = await discovery.discover(o.endpoint, o.ca_cert_hash, timeout=o.discovery_timeout)
    except BootstrapError as e:
        raise JoinError("discovery", str(e)) from None
    say(f'[discovery] Cluster info and the pinned CA agree; will use API Server "{server}"')

    say(f'[kubelet-start] Checking for an existing Node in the cluster with name "{o.node_name}" and status "Ready"')
    boot = ClientConfig(server=discovery._host_port(o.endpoint), ca_pem=ca, token=o.token)
    try:
        async with Client.from_config(boot, timeout=o.discovery_timeout) as c:
            await check_node_name(c, o.node_name)
    except Unauthorized as e:
        raise JoinError("kubelet-start", str(tlsbootstrap.token_error(e))) from None
    except ServiceUnavailable as e:
        raise JoinError("kubelet-start", f"the API server at {o.endpoint} is unavailable: {e.message}") from None
    except ApiError as e:  # Forbidden: a control plane whose tokens may not get Nodes
        raise JoinError("kubelet-start", f"cannot check for an existing Node: {e.message}") from None

    say("[kubelet-start] Performing the TLS Bootstrap")
    conf, ca_file = o.etc_dir / "kubelet.conf", o.etc_dir / "pki" / "ca.crt"
    try:
        r = await with_progress(tlsbootstrap.tlsbootstrap(o.endpoint, o.token, o.node_name, o.ca_cert_hash,
                                                          timeout=o.timeout, discovered=(server, ca)),
                                say, "[kubelet-start] still waiting for the signing request to be approved and signed")
    except BootstrapError as e:
        raise JoinError("kubelet-start", str(e)) from None
    except ApiError as e:
        raise JoinError("kubelet-start", f"the signing request was refused: {e.message}") from None
    took = time.monotonic() - t0
    say(f"[kubelet-start] Certificate signing request {r.csr_name} approved and signed ({took:.2f}s)")

    from kubelab.client.config import http_address, write_config
    say(f'[kubelet-start] Writing the kubelet configuration to file "{conf}"')
    undo.will_write(conf)
    # the HTTP API at the API server's default port (the gRPC one + 1): kubectl reads it too
    write_config(conf, ClientConfig(server=server, http_server=http_address(server), ca_pem=ca, cert_pem=r.cert_pem,
                                    key_pem=r.key_pem), user=f"system:node:{o.node_name}")
    undo.will_write(ca_file)
    ca_file.parent.mkdir(parents=True, exist_ok=True)
    ca_file.write_bytes(ca)

    from kubeadm.node import NodeSpec
    async with Client.from_config(ClientConfig(server=server, ca_pem=ca, cert_pem=r.cert_pem, key_pem=r.key_pem),
                                  timeout=30) as node_client:
        spec = NodeSpec(node_name=o.node_name, node_ip=node_ip, iface=iface, kubelet_conf=conf,
                        etc_dir=o.etc_dir, var_dir=o.var_dir)
        spec.cluster_cidr = await cluster_cidr(node_client, spec.cluster_cidr)
        say("[kubelet-start] Starting the kubelet")
        undo.node_spec = spec
        ops.start_node(spec, say)
        say(f'[kubelet-start] Waiting for the node "{o.node_name}" to become Ready. '
            f"This can take up to {_duration(o.timeout)}")
        try:
            await with_progress(ops.wait_node_ready(node_client, o.node_name, o.timeout), say,
                                f'[kubelet-start] still waiting for the node "{o.node_name}" to become Ready')
        except TimeoutError as e:
            raise JoinError("kubelet-start", f'the node "{o.node_name}" did not become Ready in '
                                             f"{_duration(o.timeout)}: {e or 'timed out'}; see "
                                             f"{o.var_dir}/log/kubelab-kubelet.log") from None
    return JoinResult(o.node_name, server, r.csr_name, took, conf)


async def cluster_cidr(client, default: str) -> str:
    """The pod network's CIDR as init recorded it, kubeadm's kube-system/kubeadm-config
    (ClusterConfiguration networking.podSubnet), read as the node; `default` without one."""
    import yaml
    try:
        cm = await client.resource("configmaps", "kube-system").get("kubeadm-config")
        net = (yaml.safe_load(cm.data.get("ClusterConfiguration", "")) or {}).get("networking") or {}
        cidr = str(net.get("podSubnet") or "")
        return str(ipaddress.ip_network(cidr)) if cidr else default
    except (NotFound, ValueError, AttributeError, yaml.YAMLError):
        return default


async def with_progress(coro, say, what: str, every: float = 10.0):
    """Await `coro`, saying `what` (and for how long) every `every` seconds until it is done."""
    task = asyncio.ensure_future(coro)
    t0 = time.monotonic()
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=every)
            if done:
                return task.result()
            say(f"{what} ({time.monotonic() - t0:.0f}s)")
    finally:
        task.cancel()


def _duration(seconds: float) -> str:
    """Go's time.Duration text, as kubeadm prints it: 4m0s, 1m30s, 45s."""
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s}s" if m else f"{s}s"


# ---- the command

def register(sub, parents) -> None:
    p = sub.add_parser("join", parents=parents, help="Run this on any machine you wish to join an existing cluster",
                       description="Join this machine to a cluster as a worker node: discover and pin the "
                                   "cluster CA, TLS bootstrap with the token, start the kubelet and runtime.")
    p.add_argument("endpoint", nargs="?", default="", metavar="MASTER:6443", help="the API server's HOST:PORT")
    p.add_argument("--token", default="", help="the bootstrap token ([a-z0-9]{6}.[a-z0-9]{16})")
    p.add_argument("--discovery-token-ca-cert-hash", dest="ca_cert_hash", default="", metavar="sha256:HEX",
                   help="the SHA-256 of the cluster CA's DER SubjectPublicKeyInfo")
    p.add_argument("--node-name", default="", help="the Node's name (default: the hostname)")
    p.add_argument("--node-ip", default="", help="the node's IP (default: the --iface address, else the "
                                                 "default route's)")
    p.add_argument("--iface", default="", help="the underlay interface for the overlay")
    p.add_argument("--etc-dir", default=str(ETC_DIR), help=argparse.SUPPRESS)
    p.add_argument("--var-dir", default=str(VAR_DIR), help=argparse.SUPPRESS)
    p.add_argument("--timeout", default=DEFAULT_TIMEOUT, help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd)


async def _cmd(args) -> int:
    try:
        timeout = tokens.parse_ttl(args.timeout).total_seconds()
    except tokens.TokenError:
        timeout = 0
    if timeout <= 0:
        print(f'error: invalid --timeout "{args.timeout}": use a duration such as 4m0s', file=sys.stderr)
        return 1
    o = JoinOptions(args.endpoint, args.token, args.ca_cert_hash, args.node_name, args.node_ip, args.iface,
                    Path(args.etc_dir), Path(args.var_dir), timeout)
    try:
        await join(o, say=lambda m: print(m, flush=True))
    except JoinError as e:
        print(e.line(), file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - one line, as kubeadm; the trace on request
        if args.verbosity >= 5:
            traceback.print_exc()
        print(f"error: {type(e).__name__}: {e}" + ("" if args.verbosity >= 5 else
                                                   " (to see the stack trace, run with --v=5 or higher)"),
              file=sys.stderr)
        return 1
    print("\nThis node has joined the cluster:\n"
          "* Certificate signing request was sent to apiserver and a response was received.\n"
          "* The Kubelet was informed of the new secure connection details.\n\n"
          "Run 'kubelab get nodes' on the control-plane to see this node join the cluster.")
    return 0
