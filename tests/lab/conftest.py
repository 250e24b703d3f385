"""The session's lab: one `kubelab lab up` (1 master + 2 workers, init and join inside the VMs)
for every test in tests/lab, on names of its own (prefix kll, bridge kll0, 192.168.65.0/24,
lab dir /tmp/lab-l) so that it never meets a real lab or another session's. HOME is a temp
dir holding a config of "the user's" (lab up puts it aside and writes ~/.kubelab/config there)
and KUBELAB_CONFIG is unset, so the CLI finds the lab's admin config by default, as a user's
does.

At the end of the session `kubelab lab down` runs and the host is compared with before: no
namespace, link, mount, route, FORWARD rule, process or container cgroup of the lab left, the
user's config back in HOME, the lab dir gone.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

# Several people may run tests/lab at once on one host: KUBELAB_TEST_LAB=NAME and
# KUBELAB_TEST_LAB_NET=N (the third octet, and 10.N/16 for pods, 10.(N+1)/16 for services)
# give a run names of its own. The defaults are CI's.
PREFIX = os.environ.get("KUBELAB_TEST_LAB", "kll")
_NET = int(os.environ.get("KUBELAB_TEST_LAB_NET", "65"))
LAB_DIR = Path("/tmp/lab-l" if PREFIX == "kll" else f"/tmp/lab-{PREFIX}")
BRIDGE, SUBNET = f"{PREFIX}0", f"192.168.{_NET}.0/24"
POD_CIDR, SERVICE_CIDR = ("10.244.0.0/16", "10.96.0.0/12") if _NET == 65 else (f"10.{_NET}.0.0/16",
                                                                               f"10.{_NET + 1}.0.0/16")
MASTER, W1, W2 = f"{PREFIX}-master", f"{PREFIX}-worker1", f"{PREFIX}-worker2"
NODES = (MASTER, W1, W2)
IPS = {MASTER: f"192.168.{_NET}.10", W1: f"192.168.{_NET}.11", W2: f"192.168.{_NET}.12"}
KUBELAB = [sys.executable, "-m", "kubelab.cli.main"]
USERS_CONFIG = "# the user's own client config, from before the lab\n"


@dataclass
class Lab:
    home: Path
    env: dict[str, str]
    up_output: str

    def kl(self, *args: str, stdin: str | None = None, timeout: float = 120, check: bool = True
           ) -> subprocess.CompletedProcess:
        p = subprocess.run([*KUBELAB, *args], input=stdin, capture_output=True, text=True, env=self.env,
                           timeout=timeout, check=False)
        if check:
            assert p.returncode == 0, f"kubelab {' '.join(args)}: exit {p.returncode}\n{p.stdout}\n{p.stderr}"
        return p

    def lab(self, verb: str, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.kl("lab", verb, "--lab-dir", str(LAB_DIR), *args, **kw)

    def shell(self, vm: str, *cmd: str, **kw) -> subprocess.CompletedProcess:
        return self.kl("lab", "shell", vm, "--lab-dir", str(LAB_DIR), "--", *cmd, **kw)

    def json(self, *args: str) -> dict:
        return json.loads(self.kl(*args, "-o", "json").stdout)

    def node_ready(self, name: str) -> bool:
        p = self.kl("get", "node", name, "-o", "json", check=False)
        if p.returncode != 0:
            return False
        conds = json.loads(p.stdout).get("status", {}).get("conditions", [])
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)

    def apply(self, manifest: str) -> None:
        self.kl("apply", "-f", "-", stdin=manifest)

    def pod(self, name: str, ns: str) -> dict:
        return self.json("get", "pod", name, "-n", ns)

    def wait_running(self, name: str, ns: str, timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            p = self.pod(name, ns)
            if p.get("status", {}).get("phase") == "Running" and p["status"].get("podIP"):
                return p
            assert time.monotonic() < deadline, f"pod {ns}/{name} not Running after {timeout}s: {p.get('status')}"
            time.sleep(0.5)


def wait_for(what: str, fn, timeout: float, interval: float = 0.5):
    """Poll fn() until it returns something true; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what}: not so after {timeout}s (last: {got!r})"
        time.sleep(interval)


def out(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def host_snapshot() -> dict:
    """What a lab could leave on the host, limited to the lab's own names (other sessions
    change the host meanwhile)."""
    with open("/proc/self/mountinfo") as f:
        mounts = {line.split()[4] for line in f if str(LAB_DIR) in line.split()[4]}
    links = {link["ifname"] for link in json.loads(out("ip", "-j", "link", "show"))}
    routes = json.loads(out("ip", "-j", "-4", "route", "show", "table", "main"))
    return {
        "netns": {n for n in (os.listdir("/run/netns") if os.path.isdir("/run/netns") else []) if n.startswith(f"{PREFIX}-")},
        "links": {n for n in links if n.startswith(BRIDGE)},  # the bridge and its VMs' host ends
        "mounts": mounts,
        "routes": {(r.get("dst"), r.get("gateway")) for r in routes if r.get("dev", "").startswith(BRIDGE)},
        "rules": {r for r in out("iptables-save").splitlines() if r.startswith("-A") and BRIDGE in r},
        "lab_dir": LAB_DIR.exists(),
        "cgroups": cgroup_dirs(),
    }


def cgroup_dirs() -> list[str]:
    """The lab nodes' container cgroups, in any hierarchy: the runtime's --cgroup-parent is
    /kubelab/<node name> (init and join set it), so ours are /kubelab/kll-*."""
    return sorted(str(d) for d in Path("/sys/fs/cgroup").glob(f"*/kubelab/{PREFIX}-*"))


def lab_processes() -> dict[int, float]:
    """pid -> start time of every process of the lab's VMs (as `lab down` finds them)."""
    from kubelab.lab import state, vms
    st = state.load(LAB_DIR)
    found = {}
    for pid in vms.lab_processes(st) if st else ():
        try:
            found[pid] = psutil.Process(pid).create_time()
        except psutil.Error:
            pass
    return found


def force_cleanup() -> None:
    """Only when `lab down` itself failed: take back by hand what the lab's names hold."""
    for pid in lab_processes():
        try:
            os.kill(pid, 9)
        except OSError:
            pass
    for vm in NODES:
        subprocess.run(["ip", "netns", "del", vm], capture_output=True, check=False)
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, check=False)
    for r in out("iptables-save", "-t", "filter").splitlines():
        if r.startswith("-A") and BRIDGE in r:
            subprocess.run(["iptables", "-w", "-D", *r.split()[1:]], capture_output=True, check=False)


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    home = tmp_path_factory.mktemp("home")
    env = dict(os.environ, HOME=str(home))
    env.pop("KUBELAB_CONFIG", None)
    env.pop("KUBELAB_LAB_DIR", None)
    probe = Lab(home, env, "")
    if (LAB_DIR / "lab.json").exists():  # an earlier run of this suite was killed: ours, by its names
        probe.lab("down", check=False, timeout=300)
    before = host_snapshot()
    # a config of the user's own: up keeps it aside, down puts it back
    (home / ".kubelab").mkdir()
    (home / ".kubelab" / "config").write_text(USERS_CONFIG)
    p = probe.lab("up", "--workers", "2", "--prefix", PREFIX, "--bridge", BRIDGE, "--subnet", SUBNET,
                  "--pod-network-cidr", POD_CIDR, "--service-cidr", SERVICE_CIDR, check=False, timeout=400)
    the_lab = Lab(home, env, p.stdout)
    procs: dict[int, float] = {}
    try:
        assert p.returncode == 0, f"lab up failed:\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}"
        yield the_lab
    finally:
        procs = lab_processes()
        cgroups = cgroup_dirs()
        down = the_lab.lab("down", check=False, timeout=400)
        if down.returncode != 0:
            force_cleanup()
    # the session's last check: lab down leaves the host as it was
    assert down.returncode == 0, f"lab down failed:\n{down.stdout}\n{down.stderr}"
    alive = []
    for pid, started in procs.items():
        try:
            pr = psutil.Process(pid)
            if pr.create_time() == started and pr.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{pid} {' '.join(pr.cmdline()[:4])}")
        except psutil.Error:
            pass
    assert procs and not alive, f"processes of the lab left after down: {alive}"
    assert cgroups, "the lab's containers had no cgroups under /kubelab/kll-* (is the check looking in the right place?)"
    assert host_snapshot() == before
    assert (home / ".kubelab" / "config").read_text() == USERS_CONFIG, "lab down did not put back HOME's config"
