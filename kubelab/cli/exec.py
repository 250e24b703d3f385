"""`kubelab exec POD [-c C] [-i] [-t] -- CMD...`: run a command in a running container,
through the API server and the pod's kubelet; the exit code is the command's."""
from __future__ import annotations

import asyncio
import os
import sys

import grpc

from kubelab.api.v1 import api_pb2
from kubelab.errors import from_rpc_error

from .common import CLIError, add_namespace_flags, cli_command, connect


def register(sub, parents) -> None:
    p = sub.add_parser("exec", parents=parents, help="Execute a command in a container")
    p.add_argument("pod")
    p.add_argument("-c", "--container", default="")
    p.add_argument("-i", "--stdin", action="store_true", help="pass stdin to the container")
    p.add_argument("-t", "--tty", action="store_true", help="stdin is a TTY")
    add_namespace_flags(p)
    p.epilog = "The command goes after --, e.g. kubelab exec web -- ls /"
    p.set_defaults(func=run)


@cli_command
async def run(args) -> int:
    command = getattr(args, "passthrough", [])
    if not command:
        raise CLIError("you must specify at least one command for the container (after --)")
    name = args.pod.split("/", 1)[1] if args.pod.startswith(("pod/", "pods/")) else args.pod
    start = api_pb2.ExecStart(namespace=args.namespace or "default", name=name, container=args.container,
                              command=command, stdin=args.stdin, tty=args.tty)

    async def requests():
        yield api_pb2.ExecRequest(start=start)
        if not args.stdin:
            return
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.run_in_executor(None, os.read, sys.stdin.fileno(), 32768)
            if not data:
                yield api_pb2.ExecRequest(stdinClose=True)
                return
            yield api_pb2.ExecRequest(stdin=data)

    code = 0
    async with connect(args) as client:
        args._server = getattr(client, "server", "")
        call = client.pod_exec(requests())
        try:
            async for resp in call:
                kind = resp.WhichOneof("msg")
                if kind == "stdout":
                    sys.stdout.buffer.write(resp.stdout)
                    sys.stdout.buffer.flush()
                elif kind == "stderr":
                    sys.stderr.buffer.write(resp.stderr)
                    sys.stderr.buffer.flush()
                elif kind == "exitCode":
                    code = resp.exitCode
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
    if code:
        print(f"command terminated with exit code {code}", file=sys.stderr)
    return code
