"""`kubelab dns`: the cluster DNS server (CoreDNS's role), run by kubeadm as the static pod
kube-dns on the master, behind the Service kube-system/kube-dns."""
from __future__ import annotations

import ipaddress
import re
import time

from kubelab.daemon import run_agent

_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def register(sub, parents) -> None:
    p = sub.add_parser("dns", parents=parents, help="Run the cluster DNS server (CoreDNS's role)")
    p.add_argument("--listen", default="0.0.0.0:53", help="HOST:PORT for UDP and TCP (port 0: any free port)")
    p.add_argument("--cluster-domain", default="cluster.local")
    p.add_argument("--upstream", action="append", default=[], metavar="IP[:PORT]",
                   help="resolver to forward names outside the cluster domain to (repeatable; "
                        "default none: they are REFUSED)")
    p.add_argument("--cache-size", type=int, default=10000,
                   help="answers kept as wire bytes until the zone changes (0: no cache)")
    p.set_defaults(func=run, daemon=True)


def parse_hostport(value: str, flag: str, default_port: int | None = None) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = value, ""
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f'invalid {flag} "{value}": want IP:PORT with an IP address (e.g. 0.0.0.0:53)') from None
    if not port and default_port is not None:
        return host, default_port
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f'invalid {flag} "{value}": the port must be a number between 0 and 65535')
    return host, int(port)


def flag_error(args) -> str | None:
    try:
        parse_hostport(args.listen, "--listen")
        for up in args.upstream:
            if parse_hostport(up, "--upstream", 53)[1] == 0:
                raise ValueError(f'invalid --upstream "{up}": the port must not be 0')
    except ValueError as e:
        return f"error: {e}"
    if args.cache_size < 0:
        return f"error: invalid --cache-size {args.cache_size}: must be 0 (no cache) or more"
    domain = args.cluster_domain.strip(".").lower()
    if not domain or not all(_LABEL.match(part) for part in domain.split(".")):
        return (f'error: invalid --cluster-domain "{args.cluster_domain}": must be a DNS name '
                f"of lower-case labels (e.g. cluster.local)")
    return None


async def run(args) -> int:
    return await run_agent(args, lambda client: _start(client, args), check=flag_error)


def _start(client, args):
    from .records import Zone
    from .server import DNSServer, Upstream, serve
    host, port = parse_hostport(args.listen, "--listen")
    upstreams = tuple(Upstream(*parse_hostport(u, "--upstream", 53)) for u in args.upstream)
    zone = Zone(args.cluster_domain, serial=int(time.time()))  # a restarted server counts on
    server = DNSServer(zone, host=host, port=port, upstreams=upstreams, cache_size=args.cache_size)
    print(f"cluster DNS for {zone.domain}: listening on {host}:{port}, "
          + (f"forwarding other names to {', '.join(f'{u.host}:{u.port}' for u in upstreams)}"
             if upstreams else "other names REFUSED (no --upstream)"), flush=True)
    return serve(client, zone, server)
