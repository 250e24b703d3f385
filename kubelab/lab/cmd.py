"""`kubelab lab ...`: the local lab's verbs (up [--bare], status, shell, load, partition, heal,
down). The work is in vms.py and cluster.py; this module is the argparse face and the
`error: ...` wording."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

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
    up.add_argument("--pod-network-cidr", default=net.CLUSTER_RANGES[0],
                    help=f"passed to init; the host routes it via the lab (default {net.CLUSTER_RANGES[0]})")
    up.add_argument("--service-cidr", default=net.CLUSTER_RANGES[1],
                    help=f"passed to init; the host routes it via the master (default {net.CLUSTER_RANGES[1]})")
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
    ld = lab.add_parser("load", parents=[common], help="Import an image archive into every VM's image store")
    ld.add_argument("archive", metavar="ARCHIVE", help="a docker-archive or oci-archive tarball")
    ld.set_defaults(func=run_load)
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
    vms.up(lab_dir(args.lab_dir), workers=args.workers, subnet=args.subnet, bridge=args.bridge, prefix=args.prefix,
           bare=args.bare, pod_cidr=args.pod_network_cidr, service_cidr=args.service_cidr)
    return 0


@_guard
def run_load(args) -> int:
    vms.load_image(lab_dir(args.lab_dir), Path(args.archive))
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
