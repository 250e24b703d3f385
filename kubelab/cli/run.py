"""`kubelab run NAME --image=IMAGE`: one pod with one container, as `kubectl run` makes it."""
from __future__ import annotations

from kubelab.api.v1 import objects_pb2 as v1

from .common import CLIError, add_namespace_flags, cli_command, connect


def register(sub, parents) -> None:
    p = sub.add_parser("run", parents=parents, help="Run a particular image on the cluster")
    p.add_argument("name")
    p.add_argument("--image", required=True)
    p.add_argument("--port", type=int, default=None, help="the port the container exposes")
    p.add_argument("--env", action="append", default=[], help="K=V, repeatable")
    p.add_argument("--labels", "-l", default="", help="K=V,K2=V2 (default run=NAME)")
    p.add_argument("--restart", default="Always", choices=("Always", "OnFailure", "Never"))
    p.add_argument("--image-pull-policy", default="", choices=("", "Always", "IfNotPresent", "Never"))
    p.add_argument("--command", action="store_true", help="treat the args after -- as the command")
    add_namespace_flags(p)
    p.epilog = "Arguments after -- are the container's args (or its command with --command)."
    p.set_defaults(func=run)


def build_pod(args) -> v1.Pod:
    pod = v1.Pod()
    pod.metadata.name = args.name
    pod.metadata.namespace = args.namespace or "default"
    labels = {"run": args.name}
    if args.labels:
        labels = {}
        for kv in args.labels.split(","):
            k, sep, v = kv.partition("=")
            if not sep or not k:
                raise CLIError(f'invalid label "{kv}": expected KEY=VALUE')
            labels[k.strip()] = v.strip()
    pod.metadata.labels.update(labels)
    pod.spec.restartPolicy = args.restart
    c = pod.spec.containers.add(name=args.name, image=args.image)
    if args.image_pull_policy:
        c.imagePullPolicy = args.image_pull_policy
    if args.port:
        c.ports.add(containerPort=args.port)
    for kv in args.env:
        k, sep, v = kv.partition("=")
        if not sep or not k:
            raise CLIError(f'invalid env "{kv}": expected KEY=VALUE')
        c.env.add(name=k, value=v)
    extra = getattr(args, "passthrough", [])
    if extra:
        (c.command if args.command else c.args).extend(extra)
    elif args.command:
        raise CLIError("--command needs a command after --")
    return pod


@cli_command
async def run(args) -> int:
    pod = build_pod(args)
    async with connect(args) as client:
        args._server = getattr(client, "server", "")
        created = await client.pods(pod.metadata.namespace).create(pod)
    print(f"pod/{created.metadata.name} created")
    return 0
