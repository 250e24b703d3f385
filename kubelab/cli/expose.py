"""`kubelab expose pod|service NAME --port P [--target-port T] [--type NodePort] [--name N]`:
make a Service in front of an object, as `kubectl expose` does: the selector is the pod's
labels (or the service's selector), the Service carries the same labels, the port comes from
--port or, without it, from the pod's container ports; the target port is --target-port or
the port itself. The API server then allocates the cluster IP (and the node port).
"""
from __future__ import annotations

from google.protobuf import struct_pb2

from kubelab.api.v1 import objects_pb2 as v1

from . import printers
from .common import CLIError, add_namespace_flags, cli_command, connect, split_type_names

EXPOSABLE = ("Pod", "Service")


def register(sub, parents) -> None:
    p = sub.add_parser("expose", parents=parents,
                       help="Take a pod or service and expose it as a new Kubernetes service")
    p.add_argument("resource", help="pod or service (po, svc), or TYPE/NAME")
    p.add_argument("names", nargs="*")
    p.add_argument("--port", default="", help="the port the service serves on (default: the pod's container ports)")
    p.add_argument("--target-port", default="", help="number or name of the port the traffic goes to (default: --port)")
    p.add_argument("--protocol", default="", help="TCP (default) or UDP")
    p.add_argument("--type", default="", help="ClusterIP (default) or NodePort")
    p.add_argument("--name", default="", help="the service's name (default: the object's)")
    p.add_argument("--selector", default="", help="k=v,k2=v2 (default: the pod's labels)")
    p.add_argument("-l", "--labels", default="", help="the service's labels, k=v,k2=v2 (default: the object's)")
    p.add_argument("--cluster-ip", default="", help='an address of the service CIDR, or "None" for a headless service')
    p.add_argument("--session-affinity", default="", choices=("", "None", "ClientIP"))
    p.add_argument("--dry-run", nargs="?", const="client", default="none", choices=("none", "client"))
    p.add_argument("-o", "--output", choices=("yaml", "json", "name"), default=None)
    add_namespace_flags(p)
    p.set_defaults(func=run)


def parse_map(text: str, flag: str) -> dict[str, str]:
    out = {}
    for kv in filter(None, (s.strip() for s in text.split(","))):
        k, sep, v = kv.partition("=")
        if not sep or not k:
            raise CLIError(f'invalid {flag} "{kv}": expected key=value')
        out[k] = v
    return out


def int_or_string(text: str) -> struct_pb2.Value:
    return struct_pb2.Value(number_value=int(text)) if text.isdigit() else struct_pb2.Value(string_value=text)


def selector_of(obj) -> dict[str, str]:
    """kubectl's MapBasedSelectorForObject: a pod's labels, a service's selector."""
    if isinstance(obj, v1.Pod):
        if not obj.metadata.labels:
            raise CLIError("couldn't retrieve selectors via --selector flag or introspection: "
                           "the pod has no labels and cannot be exposed")
        return dict(obj.metadata.labels)
    if not obj.spec.selector:
        raise CLIError("couldn't retrieve selectors via --selector flag or introspection: "
                       "invalid service provided")
    return dict(obj.spec.selector)


def ports_of(obj) -> list[tuple[int, str]]:
    """kubectl's PortsForObject with ProtocolsForObject: [(port, protocol)]."""
    if isinstance(obj, v1.Pod):
        return [(p.containerPort, p.protocol or "TCP") for c in obj.spec.containers for p in c.ports]
    return [(p.port, p.protocol or "TCP") for p in obj.spec.ports]


def build_service(obj, args) -> v1.Service:
    selector = parse_map(args.selector, "selector") if args.selector else selector_of(obj)
    found = ports_of(obj)
    if args.port:
        if not args.port.isdigit() or not 0 < int(args.port) < 65536:
            raise CLIError(f'invalid argument "{args.port}" for "--port" flag: must be a port number')
        ports = [(int(args.port), args.protocol or (found[0][1] if found else "TCP"))]
    elif found:
        ports = [(p, args.protocol or proto) for p, proto in found]
    else:
        raise CLIError("couldn't find port via --port flag or introspection")
    svc = v1.Service()
    svc.metadata.name = args.name or obj.metadata.name
    svc.metadata.namespace = obj.metadata.namespace
    svc.metadata.labels.update(parse_map(args.labels, "labels") if args.labels else obj.metadata.labels)
    svc.spec.selector.update(selector)
    for i, (port, proto) in enumerate(ports, 1):
        sp = svc.spec.ports.add(port=port, protocol=proto)
        if len(ports) > 1:
            sp.name = f"port-{i}"  # kubectl's names when several ports are exposed at once
        sp.targetPort.CopyFrom(int_or_string(args.target_port or str(port)))
    if args.type:
        svc.spec.type = args.type
    if args.cluster_ip:
        svc.spec.clusterIP = args.cluster_ip
    if args.session_affinity:
        svc.spec.sessionAffinity = args.session_affinity
    return svc


@cli_command
async def run(args) -> int:
    pairs = split_type_names(args.resource, args.names)
    if len(pairs) != 1:
        raise CLIError("exactly one resource to expose, e.g. expose pod NAME --port 80")
    kind, name = pairs[0]
    if kind.kind not in EXPOSABLE:
        raise CLIError(f"cannot expose a {kind.kind}")
    async with connect(args) as client:
        obj = await client.resource(kind, args.namespace or "default").get(name)
        svc = build_service(obj, args)
        if args.dry_run == "client":
            print(printers.dump([svc], args.output, single=True) if args.output
                  else f"service/{svc.metadata.name} exposed (dry run)")
            return 0
        created = await client.resource("services", svc.metadata.namespace).create(svc)
    print(printers.dump([created], args.output, single=True) if args.output
          else f"service/{created.metadata.name} exposed")
    return 0
