"""`kubelab run NAME --image=IMAGE [-- ARGS...]`: one pod with one container, as `kubectl run`
makes it (label run=NAME, container named NAME). With `--dry-run=client -o yaml` it prints
the pod instead of creating it: a quick start for a manifest.
"""
from __future__ import annotations

from kubelab.api.v1 import objects_pb2 as v1

from . import printers
from .common import CLIError, add_namespace_flags, cli_command, connect


def register(sub, parents) -> None:
    p = sub.add_parser("run", parents=parents, help="Run a particular image on the cluster",
                       epilog="Arguments after -- are the container's args, or its command with --command.")
    p.add_argument("name")
    p.add_argument("--image", required=True)
    p.add_argument("--port", type=int, default=None, help="the port the container exposes")
    p.add_argument("--env", action="append", default=[], help="K=V, repeatable")
    p.add_argument("-l", "--labels", default="", help="K=V,K2=V2 (default run=NAME)")
    p.add_argument("--restart", default="Always", choices=("Always", "OnFailure", "Never"))
    p.add_argument("--image-pull-policy", default="", choices=("", "Always", "IfNotPresent", "Never"))
    p.add_argument("--command", action="store_true", help="treat the args after -- as the command")
    p.add_argument("--dry-run", nargs="?", const="client", default="none", choices=("none", "client"),
                   help="client: only print the pod (with -o)")
    p.add_argument("-o", "--output", choices=("yaml", "json", "name"), default=None)
    add_namespace_flags(p)
    p.set_defaults(func=run)


def _pairs(items: list[str], what: str) -> list[tuple[str, str]]:
    out = []
    for kv in items:
        k, sep, v = kv.partition("=")
        if not sep or not k.strip():
            raise CLIError(f'invalid {what} "{kv}": expected KEY=VALUE')
        out.append((k.strip(), v))
    return out


def build_pod(args, passthrough: list[str]) -> v1.Pod:
    pod = v1.Pod()
    pod.metadata.name = args.name
    if args.namespace:  # else left out, so that `--dry-run -o yaml` gives a manifest for any namespace
        pod.metadata.namespace = args.namespace
    labels = _pairs(args.labels.split(","), "label") if args.labels else [("run", args.name)]
    pod.metadata.labels.update({k: v.strip() for k, v in labels})
    pod.spec.restartPolicy = args.restart
    c = pod.spec.containers.add(name=args.name, image=args.image)
    if args.image_pull_policy:
        c.imagePullPolicy = args.image_pull_policy
    if args.port:
        c.ports.add(containerPort=args.port)
    for k, v in _pairs(args.env, "env"):
        c.env.add(name=k, value=v)
    if passthrough:
        (c.command if args.command else c.args).extend(passthrough)
    elif args.command:
        raise CLIError("--command needs a command after --")
    return pod


@cli_command
async def run(args) -> int:
    pod = build_pod(args, getattr(args, "passthrough", []))
    if args.dry_run == "client":
        print(printers.dump([pod], args.output, single=True) if args.output else f"pod/{args.name} created (dry run)")
        return 0
    async with connect(args) as client:
        created = await client.pods(args.namespace or "default").create(pod)
    print(printers.dump([created], args.output, single=True) if args.output else f"pod/{created.metadata.name} created")
    return 0
