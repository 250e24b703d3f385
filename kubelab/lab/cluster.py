"""`kubelab lab up` without --bare: the VMs become a cluster, as a person would make one on real
VMs. Where it sits: above vms.py (which makes the machines), below nothing: it runs the very
`kubelab init` and `kubelab join` command lines inside the VMs (nsenter into the VM's
namespaces, as `lab shell` does) and reads the result through the API like any client, so the
lab never imports master/, worker/ or kubeadm/.

The steps, each printed as it goes:
1. seed every VM's image store with busybox, offline: built once on the host into a seed
   store (`kubelab image build-busybox`), then the OCI layout copied into each VM's
   /var/lib/kubelab/images (milliseconds; a build per VM would cost a process each);
2. `kubelab init` in the master VM, its output shown indented; the join command is its last line;
3. the printed `kubelab join` in every worker VM at once (with its --node-name, --node-ip, --iface);
4. the admin config copied from the master's /etc/kubelab/admin.conf to ~/.kubelab/config;
5. every node Ready, polled through the API from the host over the lab bridge;
6. host routes via the bridge: each node's podCIDR via that node, the service range via the
   master, so the host reaches pods and services and nothing of theirs takes its default route.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from kubelab.lab import net
from kubelab.lab.state import VM, LabError, LabState, save

JOIN_LINE = re.compile(r"^kubelab join (\S+:\d+) --token ([a-z0-9]{6}\.[a-z0-9]{16}) "
                       r"--discovery-token-ca-cert-hash (sha256:[0-9a-f]{64})\s*$")
BUSYBOX = "docker.io/library/busybox:latest"
INIT_TIMEOUT = 300.0   # past init's own deadlines (240 s), so that its own error is what shows
JOIN_TIMEOUT = 300.0
READY_TIMEOUT = 120.0
RESET_TIMEOUT = 60.0
TAIL = 12  # lines of a failed command's output quoted in the error


def kubelab_argv() -> list[str]:
    """This environment's `kubelab` (the same inside a VM: the VMs share the host's /usr and venv)."""
    script = Path(sys.executable).parent / "kubelab"
    return [str(script)] if script.exists() else [sys.executable, "-m", "kubelab.cli.main"]


def vm_env(vm: VM) -> dict[str, str]:
    """The environment of a command in a VM: this venv first on PATH, none of the host's lab or
    client settings (inside the master the admin config is the VM's own, as on a real master)."""
    venv_bin = str(Path(sys.executable).parent)
    env = dict(os.environ, HOSTNAME=vm.name, VIRTUAL_ENV=sys.prefix,
               PATH=os.pathsep.join([venv_bin, os.environ.get("PATH", "/usr/bin:/bin")]))
    env.pop("KUBELAB_LAB_DIR", None)
    env.pop("KUBELAB_CONFIG", None)
    if (Path(vm.dir) / "etc-kubelab" / "admin.conf").exists():
        env["KUBELAB_CONFIG"] = "/etc/kubelab/admin.conf"
    return env


def enter_argv(vm: VM, cmd: list[str], cwd: str = "/") -> list[str]:
    return ["nsenter", f"--target={vm.pid}", "--mount", "--uts", "--net", f"--wd={cwd}", "--", *cmd]


class VMCommand:
    """A command running inside a VM; its output lines go to `say` (prefixed) and are kept."""

    def __init__(self, vm: VM, cmd: list[str], say, prefix: str):
        self.vm, self.cmd, self.lines = vm, cmd, []
        self.proc = subprocess.Popen(enter_argv(vm, cmd), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=vm_env(vm), start_new_session=True)
        self._reader = threading.Thread(target=self._read, args=(say, prefix), daemon=True)
        self._reader.start()

    def _read(self, say, prefix: str) -> None:
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            if say:
                say(f"{prefix}{line}")

    def wait(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
            self._reader.join(5)
            raise LabError(f"{self.what()} did not finish in {timeout:.0f}s; its last output:\n{self.tail()}")
        self._reader.join(5)
        return rc

    def what(self) -> str:
        return f'"{" ".join(["kubelab", *self.cmd[len(kubelab_argv()):]])}" in {self.vm.name}'

    def tail(self) -> str:
        return "\n".join("    " + line for line in self.lines[-TAIL:]) or "    (no output)"


def run_in_vm(vm: VM, cmd: list[str], *, timeout: float, say=None, prefix: str = "    ") -> VMCommand:
    c = VMCommand(vm, cmd, say, prefix)
    if c.wait(timeout) != 0:
        raise LabError(f"{c.what()} failed (exit {c.proc.returncode}):\n{c.tail()}")
    return c


# ---- 1. images

def seed_images(d: Path, st: LabState, say) -> None:
    """busybox into every VM's store, built once and copied (no registry, no network)."""
    seed = d / "seed"
    p = subprocess.run([*kubelab_argv(), "image", "build-busybox", "--root-dir", str(seed), BUSYBOX],
                       capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise LabError(f"building the busybox image failed: {(p.stderr or p.stdout).strip()}")
    for vm in st.vms:
        dst = Path(vm.dir) / "var-lib-kubelab" / "images"
        shutil.copytree(seed / "images", dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".lock", ".*.tmp"))
    shutil.rmtree(seed, ignore_errors=True)


def load_archive(st: LabState, archive: Path, say) -> None:
    """`lab load`: one archive into every VM's image store, as `kind load image-archive` does.
    The stores are directories on the host, so the import runs here with --root-dir; the
    store's file lock keeps it safe beside a running runtime in the VM."""
    if not archive.is_file():
        raise LabError(f"{archive}: no such file (want a docker-archive or oci-archive tarball)")

    def one(vm: VM) -> tuple[VM, subprocess.CompletedProcess]:
        return vm, subprocess.run([*kubelab_argv(), "image", "import", "--root-dir",
                                   str(Path(vm.dir) / "var-lib-kubelab"), str(archive.resolve())],
                                  capture_output=True, text=True, check=False)
    failed: dict[str, list[str]] = {}  # the import's error -> the VMs it failed in
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as ex:
        for vm, p in ex.map(one, st.vms):
            if p.returncode != 0:
                why = (p.stderr or p.stdout).strip().removeprefix("error: ")
                failed.setdefault(why, []).append(vm.name)
                continue
            for line in p.stdout.splitlines():
                ref = line.removeprefix("Loaded image: ").strip()
                say(f'Image: "{ref}" loaded into node "{vm.name}"')
    if failed:
        raise LabError("; ".join(f"loading into {', '.join(vms)} failed: {why}" for why, vms in failed.items()))


# ---- 2, 3. init and join

def init_master(st: LabState, master: VM, say) -> str:
    cmd = [*kubelab_argv(), "init", "--apiserver-advertise-address", master.ip, "--iface", "eth0",
           "--node-name", master.name, "--pod-network-cidr", st.pod_cidr, "--service-cidr", st.service_cidr]
    c = run_in_vm(master, cmd, timeout=INIT_TIMEOUT, say=say)
    for line in reversed(c.lines):
        if JOIN_LINE.match(line.strip()):
            return line.strip()
    raise LabError(f"{c.what()} printed no join command (a line \"kubelab join IP:6443 --token T "
                   f"--discovery-token-ca-cert-hash sha256:HEX\"):\n{c.tail()}")


def join_workers(workers: list[VM], join_line: str, say) -> None:
    """The printed join command in every worker at once; every failure is reported."""
    args = join_line.split()[1:]  # without the word "kubelab": this environment's kubelab runs it
    cmds = [VMCommand(vm, [*kubelab_argv(), *args, "--node-name", vm.name, "--node-ip", vm.ip, "--iface", "eth0"],
                      say, f"    [{vm.name}] ") for vm in workers]
    deadline = time.monotonic() + JOIN_TIMEOUT
    errors = []
    for c in cmds:
        try:
            if c.wait(max(1.0, deadline - time.monotonic())) != 0:
                errors.append(f"{c.what()} failed (exit {c.proc.returncode}):\n{c.tail()}")
        except LabError as e:
            errors.append(str(e))
    if errors:
        raise LabError("\n".join(errors))


# ---- 4. the admin config on the host

def write_kubeconfig(d: Path, st: LabState, master: VM, say) -> Path:
    src = Path(master.dir) / "etc-kubelab" / "admin.conf"
    if not src.exists():
        raise LabError(f"kubelab init left no /etc/kubelab/admin.conf in {master.name}")
    dst = Path(os.path.expanduser("~/.kubelab/config"))
    backup = d / "kubeconfig.before"
    if dst.exists() and not backup.exists():
        shutil.copy2(dst, backup)  # restored by `lab down`
        st.kubeconfig_backup = str(backup)
    st.kubeconfig = str(dst)
    save(d, st)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.lab")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the admin's key
    with os.fdopen(fd, "wb") as f:
        f.write(src.read_bytes())
    os.replace(tmp, dst)
    st.kubeconfig_sha256 = _digest(dst)
    save(d, st)
    if st.kubeconfig_backup:
        say(f"  (the previous {dst} is kept and comes back with \"kubelab lab down\")")
    return dst


def restore_kubeconfig(st: LabState) -> None:
    """Put back the host's own config (or none) if ours is still the one there."""
    if not st.kubeconfig:
        return
    dst, backup = Path(st.kubeconfig), Path(st.kubeconfig_backup) if st.kubeconfig_backup else None
    if dst.exists() and st.kubeconfig_sha256 and _digest(dst) != st.kubeconfig_sha256:
        return  # replaced since: someone else's now
    if backup and backup.exists():
        shutil.copy2(backup, dst)
        backup.unlink()
    else:
        dst.unlink(missing_ok=True)
        try:
            dst.parent.rmdir()  # ~/.kubelab, if up made it and nothing else is in it
        except OSError:
            pass


def _digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# ---- 5. Ready, through the API

async def _wait_ready(config: Path, names: list[str], timeout: float, say) -> dict[str, tuple[str, str]]:
    """Every node Ready; returns name -> (InternalIP, podCIDR)."""
    from kubelab.client.client import Client
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    last = ""
    async with Client.connect(str(config), timeout=5) as c:
        while True:
            try:
                nodes = (await c.nodes().list()).items
                last = ""
            except Exception as e:  # noqa: BLE001  (the API server may be settling: keep polling)
                nodes, last = [], str(e)
            info = {}
            for n in nodes:
                ready = any(x.type == "Ready" and x.status == "True" for x in n.status.conditions)
                ip = next((a.address for a in n.status.addresses if a.type == "InternalIP"), "")
                if ready and n.spec.podCIDR:
                    info[n.metadata.name] = (ip, n.spec.podCIDR)
            for name in sorted(set(info) - seen):
                say(f"  node {name} is Ready (podCIDR {info[name][1]})")
            seen |= set(info)
            if all(n in info for n in names):
                return info
            if time.monotonic() > deadline:
                missing = ", ".join(n for n in names if n not in info)
                raise LabError(f"nodes not Ready with a podCIDR after {timeout:.0f}s: {missing}"
                               + (f" (last API error: {last})" if last else ""))
            await asyncio.sleep(0.3)


def wait_ready(config: Path, names: list[str], say, timeout: float = READY_TIMEOUT) -> dict[str, tuple[str, str]]:
    return asyncio.run(_wait_ready(config, names, timeout, say))


# ---- 6. host routes

def add_routes(d: Path, st: LabState, nodes: dict[str, tuple[str, str]], say) -> None:
    master = next(vm for vm in st.vms if vm.role == "master")
    wanted = [[cidr, next(vm.ip for vm in st.vms if vm.name == name)] for name, (_, cidr) in sorted(nodes.items())]
    wanted.append([st.service_cidr, master.ip])
    for dst, via in wanted:
        st.routes.append([dst, via])
        save(d, st)  # recorded before it is made: down takes back whatever exists
        net.add_route(dst, via, st.bridge)
        say(f"  route {dst} via {via} dev {st.bridge}")


def delete_routes(st: LabState) -> None:
    for dst, via in st.routes:
        net.delete_route(dst, via, st.bridge)


# ---- the whole of it

def bring_up(d: Path, st: LabState, say) -> None:
    master = next(vm for vm in st.vms if vm.role == "master")
    workers = [vm for vm in st.vms if vm.role == "worker"]
    t0 = time.monotonic()

    def step(text: str) -> None:
        say(f"[{time.monotonic() - t0:5.1f}s] {text}")
    step(f"seeding the busybox image into {len(st.vms)} VMs (offline)")
    seed_images(d, st, say)
    step(f"kubelab init in {master.name} ({master.ip})")
    join_line = init_master(st, master, say)
    if workers:
        step(f"kubelab join in {', '.join(vm.name for vm in workers)}")
        join_workers(workers, join_line, say)
    config = write_kubeconfig(d, st, master, say)
    step(f"admin config written to {config}; waiting for {len(st.vms)} nodes Ready")
    nodes = wait_ready(config, [vm.name for vm in st.vms], say)
    step(f"routes from the host to the pod and service networks via {st.bridge}")
    add_routes(d, st, nodes, say)
    step("the cluster is up")
    w = workers[0].name if workers else master.name
    say(f"""
Try:
  kubelab get nodes -o wide
  kubelab get pods -n kube-system
  kubelab run web --image=busybox -- httpd -f -p 8080
  kubelab lab shell {w}              # a shell on a node (ip route, bridge fdb, kubelab image ls, ...)
  kubelab lab partition {w}          # then watch it go NotReady: kubelab get nodes -w
  kubelab token create --print-join-command
Take it down with: kubelab lab down""")


def reset_argv() -> list[str]:
    """`kubelab reset`, unattended: kubeadm's reset asks for confirmation unless --force (the
    node-only reset it replaces has no such flag)."""
    reset = [*kubelab_argv(), "reset"]
    if "--force" in subprocess.run([*reset, "--help"], capture_output=True, text=True, check=False).stdout:
        reset.append("--force")
    return reset


def reset_vms(vms: list[VM], say, timeout: float = RESET_TIMEOUT) -> None:
    """`kubelab reset` in each VM at once (bounded): the node's own teardown first, so that
    down's kill is for what reset could not take (a stuck process), not the normal path."""
    cmds = []
    reset = reset_argv()
    for vm in vms:
        try:
            cmds.append(VMCommand(vm, reset, None, ""))
        except OSError as e:
            say(f"warning: kubelab reset in {vm.name}: {e}")
    deadline = time.monotonic() + timeout
    for c in cmds:
        try:
            if c.wait(max(1.0, deadline - time.monotonic())) != 0:
                say(f"warning: {c.what()} failed (exit {c.proc.returncode}); the lab's teardown goes on:\n{c.tail()}")
        except LabError as e:
            say(f"warning: {e}")
