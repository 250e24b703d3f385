"""The lab's verbs on its VMs: up (bridge, namespaces, links, supervisors; the cluster on them
is cluster.py's), status, shell, load, partition, heal and down. See the package docstring for
what a lab VM is and how it lives."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from kubelab.lab import cgroups, cluster, net
from kubelab.lab.state import VM, LabError, LabState, load, save

DEFAULT_PREFIX = "kubelab"
PRIVATE = {"etc-kubelab": "/etc/kubelab", "var-lib-kubelab": "/var/lib/kubelab", "run": "/run"}
READY_TIMEOUT = 30.0
GONE_TIMEOUT = 15.0
REAP_TIMEOUT = 10.0
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
REPO = Path(__file__).resolve().parents[2]
# first on lab shell's PATH: a busybox that gives the host's Debian build wget -T (see the file)
SHIM_DIR = Path(__file__).resolve().parent / "bin"


# ---- processes and namespaces

def ns_id(pid: int, kind: str) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return ""


def proc_state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def alive(vm: VM) -> bool:
    """The VM's supervisor runs (a reused pid in another mount namespace does not count)."""
    return bool(vm.pid) and ns_id(vm.pid, "mnt") == vm.mnt_ns and proc_state(vm.pid) not in ("", "Z", "X")


def netns_id(name: str) -> str:
    try:
        return f"net:[{os.stat(f'/run/netns/{name}').st_ino}]"
    except OSError:
        return ""


def lab_processes(st: LabState) -> set[int]:
    """Every process in a lab VM's mount or network namespace, and all their descendants
    (containers have namespaces of their own but are children of the VM's processes)."""
    mnts = {vm.mnt_ns for vm in st.vms if vm.mnt_ns}
    nets = {i for i in (netns_id(vm.netns) for vm in st.vms) if i}
    children: dict[int, list[int]] = {}
    found: set[int] = set()
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(pid)
        if ns_id(pid, "mnt") in mnts or ns_id(pid, "net") in nets:
            found.add(pid)
    todo = list(found)
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in found and c != me:
                found.add(c)
                todo.append(c)
    return found


def kill_all(pids: set[int]) -> None:
    """Pull the power: SIGKILL, then wait (with a deadline) until none is left but zombies."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + GONE_TIMEOUT
    while True:
        left = sorted(p for p in pids if proc_state(p) not in ("", "Z", "X"))
        if not left:
            break
        if time.monotonic() > deadline:
            raise LabError(f"lab VM processes {left} did not exit after SIGKILL")
        time.sleep(0.05)
    # the dead linger as zombies until their reaper (pid 1, for the VMs' detached daemons)
    # collects them; wait a little for that too, so that nothing of the lab is left in the
    # process table when down returns (a zombie that outlives this holds nothing)
    reaped = time.monotonic() + REAP_TIMEOUT
    while any(proc_state(p) for p in pids) and time.monotonic() < reaped:
        time.sleep(0.05)


def mounted_anywhere(path: str) -> bool:
    """Whether any mount namespace on the host mounts something at path."""
    seen: set[str] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        ns = ns_id(int(entry), "mnt")
        if not ns or ns in seen:
            continue
        seen.add(ns)
        try:
            with open(f"/proc/{entry}/mountinfo") as f:
                if any(line.split()[4] == path for line in f):
                    return True
        except (OSError, IndexError):
            continue
    return False


# ---- verbs

def vm_names(prefix: str, workers: int) -> list[tuple[str, str]]:
    return [(f"{prefix}-master", "master")] + [(f"{prefix}-worker{i}", "worker") for i in range(1, workers + 1)]


def up(d: Path, *, workers: int = 2, subnet: str = net.DEFAULT_SUBNET, bridge: str = net.DEFAULT_BRIDGE,
       prefix: str = DEFAULT_PREFIX, bare: bool = True, pod_cidr: str = net.CLUSTER_RANGES[0],
       service_cidr: str = net.CLUSTER_RANGES[1], out=sys.stdout) -> LabState:
    """The VMs (and with bare=False the cluster on them: cluster.bring_up); rolled back on failure."""
    existing = load(d)
    if existing is not None:
        raise LabError(f"a lab is already up ({len(existing.vms)} VMs on bridge {existing.bridge}, "
                       f"lab dir {d}): see \"kubelab lab status\", or \"kubelab lab down\" first")
    if not 0 <= workers <= 50:
        raise LabError(f"invalid --workers {workers}: want 0 to 50")
    net.check_ifname(bridge, "--bridge")
    names = vm_names(prefix, workers)
    if not DNS1123_LABEL.match(prefix) or len(names[-1][0]) > 63:
        raise LabError(f'invalid --prefix "{prefix}": the VM names ({names[-1][0]}) must be DNS-1123 labels '
                       "(lower case letters, digits and '-', at most 63 characters)")
    network, bridge_ip, ips = net.plan(subnet, workers, (pod_cidr, service_cidr))
    net.check_unrouted(network)
    if not bare:  # the host will route these through the lab
        pods = net.check_cluster_unrouted(pod_cidr, "--pod-network-cidr")
        if pods.overlaps(net.check_cluster_unrouted(service_cidr, "--service-cidr")):
            raise LabError(f"--pod-network-cidr {pod_cidr} overlaps --service-cidr {service_cidr}")
    if net.link_exists(bridge):
        raise LabError(f"link {bridge} already exists on this host: choose another bridge name with --bridge")
    for name, _ in names:
        if os.path.lexists(f"/run/netns/{name}"):
            raise LabError(f"network namespace {name} already exists on this host: choose another --prefix")
    st = LabState(bridge=bridge, subnet=str(network), prefix=prefix, bridge_ip=bridge_ip, bare=bare,
                  pod_cidr=pod_cidr, service_cidr=service_cidr, cgroup_parents=cgroups.missing_parents())
    for i, ((name, role), ip) in enumerate(zip(names, ips)):
        veth = f"{bridge[:net.IFNAMSIZ - 1 - len(str(i))]}-{i}"  # the host end, named after its bridge
        st.vms.append(VM(name=name, role=role, ip=ip, veth=veth, dir=str(d / "vms" / name)))
    st.rules = net.forward_rules(bridge)
    save(d, st)  # from here on, `down` can take back whatever the rest of up makes
    try:
        _build(d, st, network.prefixlen, out)
        if not bare:
            cluster.bring_up(d, st, lambda line: print(line, file=out, flush=True))
    except BaseException as e:
        if not isinstance(e, LabError):
            print(f"lab up interrupted ({type(e).__name__}): taking the lab down again", file=sys.stderr)
        else:
            print("lab up failed: taking the lab down again", file=sys.stderr)
        try:
            down(d, out=sys.stderr)
        except LabError as e:
            print(f"warning: rolling back the failed lab up: {e}", file=sys.stderr)
        raise
    return st


def _build(d: Path, st: LabState, prefixlen: int, out) -> None:
    net.make_bridge(st.bridge, st.bridge_ip, prefixlen)
    for rule in st.rules:
        net.add_rule(rule)
    for target in PRIVATE.values():
        if not os.path.isdir(target):
            st.created_dirs.append(target)
            save(d, st)
            os.makedirs(target)
    for vm in st.vms:
        net.make_vm_link(vm.netns, vm.veth, st.bridge, vm.ip, prefixlen, st.service_cidr)
        _start(vm)
        save(d, st)
    for vm in st.vms:
        _wait_ready(vm)
        save(d, st)
        print(f"lab VM {vm.name} ({vm.role}) is up at {vm.ip}", file=out, flush=True)
    if st.bare:
        print(f"the lab is up on bridge {st.bridge} ({st.subnet}, the host is {st.bridge_ip}): "
              f'try "kubelab lab shell {st.vms[0].name}"', file=out)
    else:
        print(f"the lab's VMs are up on bridge {st.bridge} ({st.subnet}, the host is {st.bridge_ip})",
              file=out, flush=True)


def _start(vm: VM) -> None:
    vdir = Path(vm.dir)
    binds = []
    for sub, target in PRIVATE.items():
        (vdir / sub).mkdir(parents=True, exist_ok=True)
        binds += ["--bind", f"{vdir / sub}:{target}"]
    ready = vdir / "ready"
    ready.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    with open(vdir / "supervisor.log", "ab") as log:
        p = subprocess.Popen(
            # nsenter joins the VM's network namespace (unshare --net=FILE would make a new one)
            ["nsenter", f"--net=/run/netns/{vm.netns}", "--",
             "unshare", "--mount", "--uts", "--propagation", "private", "--",
             sys.executable, "-m", "kubelab.lab.supervisor", "--hostname", vm.name, "--ready", str(ready), *binds],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd="/", env=env,
            start_new_session=True)  # its own session: it outlives the CLI and the terminal
    vm.pid = p.pid
    vm._popen = p  # type: ignore[attr-defined]  # only for _wait_ready in this process


def _wait_ready(vm: VM) -> None:
    p: subprocess.Popen = vm._popen  # type: ignore[attr-defined]
    ready = Path(vm.dir) / "ready"
    deadline = time.monotonic() + READY_TIMEOUT
    while not (ready.exists() and ready.read_text().strip()):
        if p.poll() is not None:
            log = (Path(vm.dir) / "supervisor.log").read_text(errors="replace").strip().splitlines()
            raise LabError(f"lab VM {vm.name} failed to start (exit {p.returncode}): {log[-1] if log else 'no output'}")
        if time.monotonic() > deadline:
            raise LabError(f"lab VM {vm.name} not ready after {READY_TIMEOUT:.0f}s; see {vm.dir}/supervisor.log")
        time.sleep(0.02)
    vm.mnt_ns = ns_id(vm.pid, "mnt")


def require(d: Path) -> LabState:
    st = load(d)
    if st is None:
        raise LabError(f'no lab is up (lab dir {d}): start one with "kubelab lab up"')
    return st


def vm_state(vm: VM) -> str:
    if not alive(vm):
        return "Stopped"
    return "Partitioned" if vm.partitioned else "Running"


def status(d: Path, out=sys.stdout) -> int:
    st = load(d)
    if st is None:
        print(f"No lab is up (lab dir {d}).", file=out)
        return 0
    rows = [("NAME", "ROLE", "IP", "STATE", "PID")]
    rows += [(vm.name, vm.role, vm.ip, vm_state(vm), str(vm.pid)) for vm in st.vms]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip(), file=out)
    print(f"\nbridge {st.bridge}, subnet {st.subnet}, host address {st.bridge_ip}", file=out)
    if st.kubeconfig:
        print(f"cluster: made by init and join (pods {st.pod_cidr}, services {st.service_cidr}); "
              f"admin config {st.kubeconfig}", file=out)
    elif st.bare:
        print("cluster: none made by lab up (--bare): run init and join in the VMs", file=out)
    return 0


def shell_argv(d: Path, node: str, cmd: list[str]) -> tuple[list[str], dict[str, str]]:
    """nsenter argv and environment for a shell or command inside a VM, with this venv on PATH
    and, before it, the lab's busybox shim."""
    st = require(d)
    vm = running(st, node)
    env = dict(cluster.vm_env(vm), PS1=f"root@{vm.name}:\\w# ")
    env["PATH"] = os.pathsep.join([str(SHIM_DIR), env["PATH"]])
    try:
        cwd = os.getcwd()
    except OSError:
        cwd = "/"
    if any(cwd == t or cwd.startswith(t + "/") for t in PRIVATE.values()):
        cwd = "/"  # a private tree is another directory inside the VM
    if not cmd:
        cmd = [os.environ.get("SHELL") or ("/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh")]
    return cluster.enter_argv(vm, cmd, cwd), env


def running(st: LabState, node: str) -> VM:
    vm = st.vm(node)
    if not alive(vm):
        raise LabError(f"lab VM {vm.name} is not running (its supervisor {vm.pid} is gone): "
                       '"kubelab lab down" and up again')
    return vm


def load_image(d: Path, archive: Path, out=sys.stdout) -> None:
    st = require(d)
    cluster.load_archive(st, archive, lambda line: print(line, file=out, flush=True))


def set_partitioned(d: Path, node: str, partitioned: bool, out=sys.stdout) -> None:
    st = require(d)
    vm = st.vm(node)
    net.set_link(vm.veth, up=not partitioned)
    vm.partitioned = partitioned
    save(d, st)
    if partitioned:
        print(f"lab VM {vm.name} partitioned: its link {vm.veth} on bridge {st.bridge} is down", file=out)
    else:
        print(f"lab VM {vm.name} healed: its link {vm.veth} on bridge {st.bridge} is up", file=out)


def down(d: Path, out=sys.stdout) -> None:
    st = load(d)
    if st is None:
        print(f"No lab is up (lab dir {d}).", file=out)
        return
    say = lambda line: print(line, file=out, flush=True)
    # the nodes' own teardown first (containers, pod networks, the node daemons), as a person
    # would run `kubelab reset` on each VM before deleting it
    live = [vm for vm in st.vms if alive(vm) and any(Path(vm.dir, sub).is_dir() and os.listdir(Path(vm.dir, sub))
                                                     for sub in ("etc-kubelab", "var-lib-kubelab"))]
    for vm in st.vms:
        if vm.partitioned and net.link_exists(vm.veth):
            net.set_link(vm.veth, up=True)  # reset may want the API server: a VM cut off would wait on it
    if live:
        say(f"kubelab reset in {', '.join(vm.name for vm in live)}")
        cluster.reset_vms(live, say)
    # every VM's processes next: a live mount namespace holding a copy of a netns mount
    # makes `ip netns del` fail with "Device or resource busy"
    pids = lab_processes(st)
    cgroup_paths = cgroups.of_processes(pids) | cgroups.of_vm_runtimes([vm.dir for vm in st.vms])
    kill_all(pids)
    if left := cgroups.remove(cgroup_paths, st.cgroup_parents):
        print(f"warning: cgroups that would not go: {', '.join(left)}", file=sys.stderr)
    cluster.delete_routes(st)
    cluster.restore_kubeconfig(st)
    for vm in st.vms:
        # the host end first: deleting it takes the pair at once, while a deleted netns lets
        # go of its devices later, in the kernel's own time
        net.delete_link(vm.veth)
        net.delete_netns(vm.netns)
    net.delete_link(st.bridge)
    for rule in st.rules:
        net.delete_rule(rule)
    for target in st.created_dirs:
        # another lab's VMs may still mount it (removing a mount point detaches it everywhere)
        if os.path.isdir(target) and not os.listdir(target) and not mounted_anywhere(target):
            os.rmdir(target)
    shutil.rmtree(d / "vms", ignore_errors=True)
    (d / "lab.json").unlink(missing_ok=True)
    try:
        d.rmdir()
    except OSError:
        pass  # not empty: something else lives in the lab dir; leave it
    print(f"the lab is down: {len(st.vms)} VMs, bridge {st.bridge} and its rules are gone", file=out)
