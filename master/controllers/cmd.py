"""`kubelab controller-manager`: the controllers, behind leader election on the
kube-controller-manager Lease: namespace, nodeipam (pod CIDRs), nodelifecycle, tokencleaner,
csrapproving, csrsigning and endpoint (a Service's Endpoints and EndpointSlices).

csrsigning needs the cluster CA's key, as kube-controller-manager does: --cluster-signing-cert-file
and --cluster-signing-key-file, by default pki/ca.crt and pki/ca.key next to the --config file
(where `kubelab control-plane` keeps them: DATA_DIR/controller-manager.conf, DATA_DIR/pki/).
Without those files, and not named on the command line, csrsigning is left out with a warning.
"""
from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

from kubelab.client.client import Client
from kubelab.daemon import add_leader_election_flags, leader_elected, leader_election_error, run_until_signalled

from kubelab.client.config import resolve_config_path

from .bootstraptoken import TokenCleaner
from .csrsigning import CSRApprovingController, CSRSigningController
from .endpoints import EndpointsController
from .namespace import NamespaceController
from .nodeipam import InvalidIpamConfig, NodeIpamController, parse_cluster_cidr
from .nodelifecycle import NodeLifecycleController

CONTROLLERS = {
    "namespace": lambda client, args: NamespaceController(client),
    "nodeipam": lambda client, args: NodeIpamController(client, cluster_cidr=args.cluster_cidr,
                                                        node_mask=args.node_cidr_mask_size),
    "nodelifecycle": lambda client, args: NodeLifecycleController(
        client, grace_period=args.node_monitor_grace_period, monitor_period=args.node_monitor_period),
    "tokencleaner": lambda client, args: TokenCleaner(client),
    "csrapproving": lambda client, args: CSRApprovingController(client),
    "csrsigning": lambda client, args: CSRSigningController(
        client, cert_file=args.cluster_signing_cert_file, key_file=args.cluster_signing_key_file,
        duration=args.cluster_signing_duration),
    "endpoint": lambda client, args: EndpointsController(client),
}
log = logging.getLogger("controller-manager")


def register(sub, parents) -> None:
    p = sub.add_parser("controller-manager", parents=parents, help="Run the controller manager")
    p.add_argument("--controllers", default="*", help="comma-separated controllers to run, * for all")
    add_leader_election_flags(p)
    p.add_argument("--node-monitor-grace-period", type=float, default=50.0,
                   help="seconds without a lease renewal before a node is NotReady (Unknown)")
    p.add_argument("--node-monitor-period", type=float, default=5.0)
    p.add_argument("--cluster-cidr", default="10.244.0.0/16", help="the range node podCIDRs are cut from")
    p.add_argument("--node-cidr-mask-size", type=int, default=24, help="prefix length of each node's podCIDR")
    p.add_argument("--cluster-signing-cert-file", default=None,
                   help="CA certificate csrsigning signs with (default: pki/ca.crt beside --config)")
    p.add_argument("--cluster-signing-key-file", default=None,
                   help="CA key csrsigning signs with (default: pki/ca.key beside --config)")
    p.add_argument("--cluster-signing-duration", type=int, default=365 * 24 * 3600,
                   help="longest validity of a signed certificate, in seconds")
    p.set_defaults(func=run, daemon=True)


async def run(args) -> int:
    names = list(CONTROLLERS) if args.controllers == "*" else args.controllers.split(",")
    unknown = [n for n in names if n not in CONTROLLERS]
    if unknown:
        print(f"error: unknown controllers: {', '.join(unknown)} (known: {', '.join(CONTROLLERS)})",
              file=sys.stderr)
        return 1
    err = leader_election_error(args) or cidr_error(args) or signing_error(args, names)
    if err:
        print(err, file=sys.stderr)
        return 1
    client = Client.connect(args.config)

    async def lead():
        controllers = [CONTROLLERS[n](client, args) for n in names]
        await asyncio.gather(*(c.run() for c in controllers))

    return await run_until_signalled(leader_elected(client, "kube-controller-manager", args, lead),
                                     cleanup=client.close)


def signing_error(args, names: list[str]) -> str | None:
    """Resolve the signing CA files; drop csrsigning from `names` if defaulted and absent."""
    explicit = args.cluster_signing_cert_file or args.cluster_signing_key_file
    pki_dir = resolve_config_path(args.config).parent / "pki"
    args.cluster_signing_cert_file = Path(args.cluster_signing_cert_file or pki_dir / "ca.crt")
    args.cluster_signing_key_file = Path(args.cluster_signing_key_file or pki_dir / "ca.key")
    if "csrsigning" not in names:
        return None
    missing = [str(f) for f in (args.cluster_signing_cert_file, args.cluster_signing_key_file) if not f.is_file()]
    if not missing:
        return None
    if explicit or args.controllers != "*":
        return f"error: csrsigning: cannot read {', '.join(missing)} (--cluster-signing-cert-file/-key-file)"
    log.warning("csrsigning disabled: no signing CA at %s", ", ".join(missing))
    names.remove("csrsigning")
    return None


def cidr_error(args) -> str | None:
    try:
        parse_cluster_cidr(args.cluster_cidr, args.node_cidr_mask_size,
                           names={"cluster_cidr": "--cluster-cidr", "node_mask": "--node-cidr-mask-size"})
    except InvalidIpamConfig as e:
        return f"error: invalid {e.field}: {e.detail}"
    return None
