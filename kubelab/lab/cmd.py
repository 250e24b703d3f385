"""`kubelab lab ...`: the local lab's verbs (up --bare, status, shell, partition, heal, down).
The work is in vms.py; this module is the argparse face and the `error: ...` wording."""
from __future__ import annotations

import argparse
import os
import sys

from kubelab.lab import net, vms
from kubelab.lab.state import LabError, lab_dir


def register(sub, parents) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--lab-dir", default=None,
                        help=f"the lab's state (default: $KUBELAB_LAB_DIR, then {lab_dir()})")
    p = sub.add_parser("lab", parents=parents, help="A local lab of namespace-bundle VMs")
    lab = p.add_subparsers(dest="lab_command", required=True, metavar="VERB")
    up = lab.add_parser("up", parents=[common], help="Build 1 master + N worker VMs on a lab bridge")
    up.add_argument("--bare", action="store_true", help="build the VMs only; run init and join by hand")
    up.add_argument("--workers", type=int, default=2, help="number of worker VMs (default 2)")
    up.add_argument("--subnet", default=net.DEFAULT_SUBNET, help=f"the lab network (default {net.DEFAULT_SUBNET})")
    up.add_argument("--bridge", default=net.DEFAULT_BRIDGE, help=f"the lab bridge (default {net.DEFAULT_BRIDGE})")
    up.add_argument("--prefix", default=vms.DEFAULT_PREFIX,
                    help=f"VM name prefix: PREFIX-master, PREFIX-worker1.. (default {vms.DEFAULT_PREFIX})")
    up.set_defaults(func=run_up)
    lab.add_parser("status", parents=[common], help="List the lab's VMs, their IPs and state").set_defaults(func=run_status)
    sh = lab.add_parser("shell", parents=[common], help="A shell, or the command after --, inside a VM")
    sh.add_argument("node", metavar="NODE", help="VM name (kubelab-worker1) or short name (worker1)")
    sh.set_defaults(func=run_shell)
    for verb, text in (("partition", "Cut a VM's link on the lab bridge"), ("heal", "Restore a VM's link")):
        v = lab.add_parser(verb, parents=[common], help=text)
        v.add_argument("node", metavar="NODE")
        v.set_defaults(func=run_partition, partitioned=verb == "partition")
    lab.add_parser("down", parents=[common],
                   help="Remove every VM, link, rule, mount, process and file of the lab").set_defaults(func=run_down)


def _guard(fn):
    def wrapper(args) -> int:
        if os.geteuid() != 0:
            print("error: the lab needs root (namespaces, links and iptables)", file=sys.stderr)
            return 1
        try:
            return fn(args) or 0
        except LabError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    return wrapper


@_guard
def run_up(args) -> int:
    if not args.bare:
        raise LabError('"kubelab lab up" without --bare also runs init and join in the VMs, which is not '
                       'built yet: use "kubelab lab up --bare", then init and join inside the VMs')
    vms.up(lab_dir(args.lab_dir), workers=args.workers, subnet=args.subnet, bridge=args.bridge, prefix=args.prefix)
    return 0


@_guard
def run_status(args) -> int:
    return vms.status(lab_dir(args.lab_dir))


@_guard
def run_shell(args) -> int:
    argv, env = vms.shell_argv(lab_dir(args.lab_dir), args.node, args.passthrough)
    sys.stdout.flush()
    os.execvpe(argv[0], argv, env)  # the VM's shell takes over this process: tty, signals, exit code


@_guard
def run_partition(args) -> int:
    vms.set_partitioned(lab_dir(args.lab_dir), args.node, args.partitioned)
    return 0


@_guard
def run_down(args) -> int:
    vms.down(lab_dir(args.lab_dir))
    return 0
