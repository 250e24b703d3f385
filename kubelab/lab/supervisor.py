"""The process that is a lab VM: it runs inside the VM's fresh mount and UTS namespaces (and its
network namespace), started by `lab up` through `unshare`, in a session of its own so that it
outlives the CLI. It sets the hostname, makes the VM's private mounts, reports ready in a file,
and then holds the namespaces until `lab down` ends it. It keeps the node daemons of a lab
VM running, the role systemd has on a real VM: after its setup it runs kubeadm's node service
Runner (kubeadm/services.py), which starts the kubelet and the runtime once `kubelab init` or
`join` inside the VM writes their flags files, and stops them (SIGTERM, then SIGKILL) when
the supervisor is asked to stop. The Runner is imported lazily, after the mounts: the
supervisor must stay cheap for VMs that never become nodes.

    unshare --mount --uts --net=/run/netns/VM --propagation private -- \\
        python -m kubelab.lab.supervisor --hostname VM --ready FILE --bind SRC:DST ...
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys


def unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes
    for esc, ch in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(esc, ch)
    return field


def mounts_under(path: str) -> list[str]:
    """Mount points strictly below path in this mount namespace, deepest first."""
    prefix = path.rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        points = [unescape(line.split()[4]) for line in f]
    return sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True)


def mount(*args: str) -> None:
    p = subprocess.run(["mount", *args], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"mount {' '.join(args)}: {p.stderr.strip()}")


def setup(hostname: str, binds: list[tuple[str, str]]) -> None:
    socket.sethostname(hostname)
    # unshare made every mount private already; say so again so nothing here reaches the host
    mount("--make-rprivate", "/")
    for src, dst in binds:
        if dst == "/run":
            # the copies of the host's netns files (and anything else under /run) would pin
            # those namespaces for as long as this VM lives: detach them before hiding /run
            for point in mounts_under("/run"):
                subprocess.run(["umount", "--lazy", point], capture_output=True)
        mount("--bind", src, dst)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kubelab.lab.supervisor")
    p.add_argument("--hostname", required=True)
    p.add_argument("--ready", required=True, help="file written once the VM is set up")
    p.add_argument("--bind", action="append", default=[], metavar="SRC:DST")
    args = p.parse_args(argv)
    binds = [tuple(b.split(":", 1)) for b in args.bind]
    # /run last: the sources of the other binds may live under it
    binds.sort(key=lambda b: b[1] == "/run")
    # opened before the mounts: the ready file may live under a directory the binds hide
    ready = open(args.ready, "w")
    try:
        setup(args.hostname, binds)
    except (OSError, RuntimeError) as e:
        print(f"lab VM {args.hostname}: setup failed: {e}", file=sys.stderr, flush=True)
        return 1
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
    with ready:
        ready.write(f"{os.getpid()}\n")
    print(f"lab VM {args.hostname}: up as pid {os.getpid()}", flush=True)
    from kubeadm.services import Runner

    def log(msg: str) -> None:
        print(f"lab VM {args.hostname}: {msg}", flush=True)
    # VAR_DIR and RUN_DIR are the VM's private /var/lib/kubelab and /run/kubelab
    try:
        Runner(log=log).run()
    except Exception as e:  # noqa: BLE001  (the VM must live on: it holds its namespaces)
        log(f"the node service runner failed: {e}; holding the VM without it")
        signal.sigwait({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
    print(f"lab VM {args.hostname}: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
