"""The `kubelab` command: kubectl-like verbs for users and the daemons' entry points.

Each command lives in its own module with `register(subparsers, parents)`; only the module of
the command being run is imported, so `kubelab get pods` does not load the scheduler.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import logging
import sys

# command -> (module, one-line help); the order is the order of `kubelab --help`
COMMANDS: dict[str, tuple[str, str]] = {
    "get": ("kubelab.cli.get", "Display one or many resources"),
    "describe": ("kubelab.cli.describe", "Show details of a specific resource"),
    "create": ("kubelab.cli.create", "Create a resource from a file or a namespace"),
    "apply": ("kubelab.cli.apply", "Apply a configuration to a resource by file name or stdin"),
    "run": ("kubelab.cli.run", "Run a particular image on the cluster"),
    "expose": ("kubelab.cli.expose", "Take a pod or service and expose it as a new Kubernetes service"),
    "delete": ("kubelab.cli.delete", "Delete resources by names"),
    "logs": ("kubelab.cli.logs", "Print the logs for a container in a pod"),
    "exec": ("kubelab.cli.exec", "Execute a command in a container"),
    "init": ("kubeadm.init", "Make this machine the master of a new cluster"),
    "token": ("kubelab.cli.token", "Manage bootstrap tokens for joining nodes"),
    "join": ("kubeadm.join", "Run this on any machine you wish to join an existing cluster"),
    "control-plane": ("master.controlplane", "Run etcd, API server, scheduler and controller manager"),
    "apiserver": ("master.apiserver.cmd", "Run the API server"),
    "scheduler": ("master.scheduler.cmd", "Run the scheduler"),
    "controller-manager": ("master.controllers.cmd", "Run the controller manager"),
    "hollow-nodes": ("worker.hollow.cmd", "Run simulated nodes (like kwok) for scale tests"),
    "kubelet": ("worker.kubelet.cmd", "Run the kubelet (node agent) on this host"),
    "runtime": ("worker.runtime.server", "Run the container runtime daemon (CRI-shaped gRPC on a unix socket)"),
    "reset": ("kubeadm.reset", "Take back what init or join made on this host"),
    "image": ("worker.runtime.imagecmd", "Manage the node's images: import, ls, rm, pull, build-busybox"),
    "overlay": ("worker.overlay.cmd", "Run the VXLAN overlay agent (flannel's role) on this node"),
    "proxy": ("worker.proxy.cmd", "Run kube-proxy (iptables mode) on this node"),
    "dns": ("addons.dns.cmd", "Run the cluster DNS server (CoreDNS's role) for Services and pods"),
    "node-services": ("kubeadm.services", "Run the node daemons from their flags files where there is no systemd"),
    "lab": ("kubelab.lab.cmd", "A local lab of namespace-bundle VMs: up, status, shell, load, partition, heal, down"),
    "net": ("kubelab.net.cmd", "Network experiments on a node: show (routes, VXLAN, bridge, service rules), trace"),
}


def common_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--config", "--kubeconfig", dest="config", default=None,
                   help="client config (default: $KUBELAB_CONFIG, then ~/.kubelab/config)")
    p.add_argument("-v", "--v", dest="verbosity", type=int, default=0, help="log level (0-9)")
    return p


def usage() -> str:
    lines = ["kubelab: a Kubernetes-shaped cluster for learning how Kubernetes works.", "",
             "Usage: kubelab COMMAND [options]", "", "Commands:"]
    lines += [f"  {name:<20}{summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", 'Use "kubelab COMMAND --help" for more information about a command.']
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough: list[str] = []
    if "--" in argv:  # `kubelab run x --image=y -- cmd args`: everything after -- is the container's
        i = argv.index("--")
        argv, passthrough = argv[:i], argv[i + 1:]
    # the command is the first word that names one, so global flags may come first
    # (`kubelab --config c get pods`); else the first non-flag word, to report it as unknown
    cmd = next((a for a in argv if a in COMMANDS), None) or next((a for a in argv if not a.startswith("-")), None)
    if cmd is None or cmd not in COMMANDS:
        if cmd is not None:
            print(f'error: unknown command "{cmd}" for "kubelab"\n', file=sys.stderr)
        print(usage(), file=sys.stderr if cmd else sys.stdout)
        return 1 if cmd else (0 if argv else 1)
    i = argv.index(cmd)
    argv = [cmd] + argv[:i] + argv[i + 1:]  # flags given before the command belong to it
    module = importlib.import_module(COMMANDS[cmd][0])
    parser = argparse.ArgumentParser(prog="kubelab")
    sub = parser.add_subparsers(dest="command", required=True)
    module.register(sub, [common_parser()])
    args = parser.parse_args(argv)
    args.passthrough = passthrough
    logging.basicConfig(level=logging.DEBUG if args.verbosity >= 4 else
                        logging.INFO if args.verbosity >= 2 or getattr(args, "daemon", False) else logging.WARNING,
                        format="%(asctime)s %(levelname).1s %(name)s: %(message)s")
    try:
        result = args.func(args)
        if inspect.iscoroutine(result):
            result = asyncio.run(result)
        return int(result or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
