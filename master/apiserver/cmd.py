"""`kubelab apiserver`: run the API server in the foreground."""
from __future__ import annotations

import asyncio
from pathlib import Path

from kubelab.cli.common import CLIError, cli_command
from kubelab.daemon import run_until_signalled

from .allocator import DEFAULT_NODE_PORTS, DEFAULT_SERVICE_CIDR, IPRange, PortRange
from .server import APIServer, Options


def register(sub, parents) -> None:
    p = sub.add_parser("apiserver", parents=parents, help="Run the API server")
    p.add_argument("--etcd-servers", required=True, help="comma-separated etcd URLs (https:// for TLS)")
    p.add_argument("--etcd-cafile", default="", help="SSL Certificate Authority file used to secure etcd communication")
    p.add_argument("--etcd-certfile", default="", help="SSL certification file used to secure etcd communication")
    p.add_argument("--etcd-keyfile", default="", help="SSL key file used to secure etcd communication")
    p.add_argument("--listen", default="127.0.0.1:6443", help="address to serve on (host:port)")
    p.add_argument("--http-listen", default="",
                   help="address of the HTTP API (Kubernetes' REST API, for kubectl; host:port); "
                        "default: the --listen host and its port + 1")
    p.add_argument("--pki-dir", required=True, help="directory with ca.crt, apiserver.crt, apiserver.key")
    p.add_argument("--bookmark-interval", type=float, default=30.0)
    p.add_argument("--compaction-interval", type=float, default=300.0)
    p.add_argument("--watch-cache-size", type=int, default=10000)
    p.add_argument("--list-page-bytes", type=int, default=16 << 20,
                   help="most bytes of objects in one List response; the rest comes with a continue token")
    p.add_argument("--default-toleration-seconds", type=int, default=300,
                   help="tolerationSeconds of the not-ready/unreachable tolerations added to every pod")
    p.add_argument("--advertise-address", default="",
                   help="the IP address on which to advertise the apiserver to members of the cluster "
                        "(cluster-info, the kubernetes service's endpoints); default: the --listen host")
    p.add_argument("--service-cluster-ip-range", default=DEFAULT_SERVICE_CIDR,
                   help="a CIDR IP range from which to assign service cluster IPs (/12 to /28)")
    p.add_argument("--service-node-port-range", default=DEFAULT_NODE_PORTS,
                   help="a port range to reserve for services with NodePort visibility (FROM-TO, inclusive)")
    p.set_defaults(func=run, daemon=True)


@cli_command
async def run(args) -> int:
    https = any(u.strip().startswith("https://") for u in args.etcd_servers.split(","))
    if bool(args.etcd_certfile) != bool(args.etcd_keyfile):
        raise CLIError("--etcd-certfile and --etcd-keyfile go together: give both, or neither")
    if (args.etcd_cafile or args.etcd_certfile) and not https:
        raise CLIError(f"--etcd-cafile/--etcd-certfile given, but --etcd-servers {args.etcd_servers} is not https://")
    for flag in ("etcd_cafile", "etcd_certfile", "etcd_keyfile"):
        path = getattr(args, flag)
        if path and not Path(path).is_file():
            raise CLIError(f"--{flag.replace('_', '-')} {path}: no such file")
    if args.advertise_address:
        import ipaddress
        try:
            ipaddress.IPv4Address(args.advertise_address)
        except ValueError:
            raise CLIError(f'--advertise-address "{args.advertise_address}": must be an IPv4 address') from None
    if args.http_listen:
        _, sep, port = args.http_listen.rpartition(":")
        if not sep or not port.isdigit() or int(port) > 65535:
            raise CLIError(f'--http-listen "{args.http_listen}": must be host:port')
    try:
        IPRange(args.service_cluster_ip_range)
        PortRange(args.service_node_port_range)
    except ValueError as e:
        raise CLIError(str(e)) from None
    srv = APIServer(Options(etcd_servers=args.etcd_servers, listen=args.listen, http_listen=args.http_listen, pki_dir=Path(args.pki_dir),
                            etcd_cafile=args.etcd_cafile, etcd_certfile=args.etcd_certfile,
                            etcd_keyfile=args.etcd_keyfile,
                            bookmark_interval=args.bookmark_interval,
                            compaction_interval=args.compaction_interval,
                            cache_capacity=args.watch_cache_size, list_page_bytes=args.list_page_bytes,
                            default_toleration_seconds=args.default_toleration_seconds,
                            advertise_address=args.advertise_address,
                            service_cluster_ip_range=args.service_cluster_ip_range,
                            service_node_port_range=args.service_node_port_range))
    await srv.start()
    return await run_until_signalled(asyncio.Event().wait(), cleanup=srv.stop)
