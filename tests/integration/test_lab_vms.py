"""The local lab's VMs (kubelab/lab): real network, mount and UTS namespaces on a real bridge,
driven through the `kubelab lab` CLI as a user would, each verb in a process of its own.

One lab for the module (1 master + 2 workers) on a test subnet, bridge and VM prefix of its
own, so that nothing here touches 192.168.56.0/24 or a real lab. The last test takes it down
and compares the host before and after; the fixture takes it down again if a test failed.
"""
from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root")

SUBNET = "192.168.77.0/24"
ROUTED_SUBNET = "192.168.79.0/24"   # the "host already routes it" case, on a link of ours
BRIDGE = "labvmbr0"
DUMMY = "labvmd0"
PREFIX = "labvm"
MASTER, W1, W2 = f"{PREFIX}-master", f"{PREFIX}-worker1", f"{PREFIX}-worker2"
IPS = {MASTER: "192.168.77.10", W1: "192.168.77.11", W2: "192.168.77.12"}
PORT = 7777
SERVER = f"""
import socket
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", {PORT}))
srv.listen(16)
print("listening", flush=True)
while True:
    c, _ = srv.accept()
    c.sendall(socket.gethostname().encode())
    c.close()
"""
CLIENT = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])) as s:
        print(s.recv(100).decode())
except OSError as e:
    print(f"connect failed: {e}")
    sys.exit(1)
"""


def lab(lab_dir: Path, verb: str, *args: str, cmd: list[str] | None = None) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "kubelab.cli.main", "lab", verb, "--lab-dir", str(lab_dir), *args]
    if cmd is not None:
        argv += ["--", *cmd]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def shell(lab_dir: Path, node: str, *cmd: str) -> subprocess.CompletedProcess:
    return lab(lab_dir, "shell", node, cmd=list(cmd))


def connect(lab_dir: Path, node: str, ip: str, timeout: float = 2.0) -> subprocess.CompletedProcess:
    # the venv's own python inside the VM: the project's environment is usable there
    return shell(lab_dir, node, sys.executable, "-c", CLIENT, ip, str(PORT), str(timeout))


def host_snapshot() -> dict:
    def out(*cmd):
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    with open("/proc/self/mountinfo") as f:
        mounts = {line.split()[4] for line in f}
    return {
        "netns": set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set(),
        "links": {link["ifname"] for link in json.loads(out("ip", "-j", "link", "show"))},
        "mounts": mounts,
        "rules": {r for r in out("iptables-save", "-t", "filter").splitlines() if r.startswith("-A")},
        "etc_kubelab": os.path.isdir("/etc/kubelab"),
    }


def mnt_ns_pids(ns_ids: set[str]) -> set[int]:
    found = set()
    for e in os.listdir("/proc"):
        if e.isdigit():
            try:
                if os.readlink(f"/proc/{e}/ns/mnt") in ns_ids:
                    found.add(int(e))
            except OSError:
                pass
    return found


def force_cleanup(lab_dir: Path) -> None:
    """Only if `lab down` itself failed: take back by hand what the module's lab made."""
    for name in (MASTER, W1, W2):
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)
    rules = subprocess.run(["iptables-save", "-t", "filter"], capture_output=True, text=True).stdout
    for r in rules.splitlines():
        if r.startswith("-A") and BRIDGE in r:
            subprocess.run(["iptables", "-w", "-D", *r.split()[1:]], capture_output=True)


@pytest.fixture(scope="module")
def lab_up(tmp_path_factory):
    lab_dir = tmp_path_factory.mktemp("lab") / "state"
    before = host_snapshot()
    server = state = None
    p = lab(lab_dir, "up", "--bare", "--workers", "2", "--subnet", SUBNET, "--bridge", BRIDGE, "--prefix", PREFIX)
    try:
        assert p.returncode == 0, p.stderr
        state = json.loads((lab_dir / "lab.json").read_text())
        server = subprocess.Popen(
            [sys.executable, "-m", "kubelab.cli.main", "lab", "shell", MASTER, "--lab-dir", str(lab_dir),
             "--", sys.executable, "-c", SERVER], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ready, _, _ = select.select([server.stdout], [], [], 30)
        assert ready and server.stdout.readline().strip() == "listening", server.stderr.read()
        yield {"dir": lab_dir, "before": before, "state": state, "server": server}
    finally:
        if state is None and (lab_dir / "lab.json").exists():
            state = json.loads((lab_dir / "lab.json").read_text())
        mnt_ns = {vm["mnt_ns"] for vm in state["vms"]} if state else set()
        if lab(lab_dir, "down").returncode != 0:
            force_cleanup(lab_dir)
        for pid in mnt_ns_pids(mnt_ns - {""}):  # only if down left a VM's process behind (a bug)
            os.kill(pid, 9)
        if server is not None and server.poll() is None:
            server.kill()
            server.wait(timeout=30)


def test_vms_have_their_own_hostnames_and_no_default_route(lab_up):
    d = lab_up["dir"]
    for vm, ip in IPS.items():
        p = shell(d, vm, "sh", "-c", "hostname; ip -4 -o addr show dev eth0; ip route show default")
        assert p.returncode == 0, p.stderr
        lines = p.stdout.splitlines()
        assert lines[0] == vm
        assert f"inet {ip}/24" in lines[1]
        assert len(lines) == 2, f"{vm} has a default route: {lines[2:]}"
    # short names work too, and the table shows every VM running with its address
    assert shell(d, "worker2", "hostname").stdout.strip() == W2
    rows = {line.split()[0]: line.split() for line in lab(d, "status").stdout.splitlines()[1:4]}
    assert {vm: (r[2], r[3]) for vm, r in rows.items()} == {vm: (ip, "Running") for vm, ip in IPS.items()}


def test_private_trees_are_private(lab_up):
    d = lab_up["dir"]
    marker = f"written-in-{MASTER}"
    p = shell(d, MASTER, "sh", "-c", f"for t in /etc/kubelab /var/lib/kubelab /run; do echo x > $t/{marker}; done; "
                                     "ip netns add labtest-pod")
    assert p.returncode == 0, p.stderr
    for t in ("/etc/kubelab", "/var/lib/kubelab", "/run"):
        assert shell(d, MASTER, "cat", f"{t}/{marker}").stdout == "x\n"
        assert shell(d, W1, "test", "-e", f"{t}/{marker}").returncode == 1, f"{t} of {MASTER} is visible in {W1}"
        assert not os.path.exists(f"{t}/{marker}"), f"{t} of {MASTER} is visible on the host"
    # a pod network namespace made inside a VM stays inside it
    assert "labtest-pod" in shell(d, MASTER, "ip", "netns", "list").stdout
    assert "labtest-pod" not in shell(d, W1, "ip", "netns", "list").stdout
    assert not os.path.exists("/run/netns/labtest-pod")
    # and a VM pins no other namespace: the copies of the host's (and the other VMs') netns
    # mounts under /run were detached before the private /run went over them
    points = [line.split()[4] for line in shell(d, W1, "cat", "/proc/self/mountinfo").stdout.splitlines()]
    assert [m for m in points if m.startswith("/run/")] == []


def test_vm_to_vm_and_host_to_vm(lab_up):
    d = lab_up["dir"]
    p = shell(d, W1, "busybox", "ping", "-c", "1", "-W", "5", IPS[W2])
    assert p.returncode == 0, p.stdout + p.stderr
    p = connect(d, W2, IPS[MASTER])
    assert (p.returncode, p.stdout.strip()) == (0, MASTER), p.stdout + p.stderr
    with socket.create_connection((IPS[MASTER], PORT), timeout=5) as s:  # the host, via the lab bridge
        assert s.recv(100).decode() == MASTER


def test_shell_passes_exit_code_and_output(lab_up):
    p = shell(lab_up["dir"], W1, "sh", "-c", "echo out-$(hostname); echo err >&2; exit 7")
    assert (p.returncode, p.stdout, p.stderr) == (7, f"out-{W1}\n", "err\n")
    p = shell(lab_up["dir"], "worker9", "true")
    assert p.returncode == 1 and 'lab VM "worker9" not found' in p.stderr


def test_partition_then_heal(lab_up):
    d = lab_up["dir"]
    assert connect(d, W1, IPS[MASTER]).returncode == 0
    p = lab(d, "partition", "worker1")
    try:
        assert p.returncode == 0, p.stderr
        assert "Partitioned" in next(l for l in lab(d, "status").stdout.splitlines() if l.startswith(W1))
        cut = connect(d, W1, IPS[MASTER], timeout=2)
        assert cut.returncode == 1 and "connect failed" in cut.stdout
        assert connect(d, W2, IPS[MASTER]).returncode == 0, "the partition cut more than worker1"
    finally:
        healed = lab(d, "heal", "worker1")
    assert healed.returncode == 0, healed.stderr
    deadline = time.monotonic() + 30
    while (p := connect(d, W1, IPS[MASTER], timeout=2)).returncode != 0:
        assert time.monotonic() < deadline, f"worker1 still cut off after heal: {p.stdout}"
    assert p.stdout.strip() == MASTER


def test_second_up_is_refused(lab_up):
    d = lab_up["dir"]
    p = lab(d, "up", "--bare", "--subnet", SUBNET, "--bridge", BRIDGE, "--prefix", PREFIX)
    assert p.returncode == 1
    assert f"a lab is already up (3 VMs on bridge {BRIDGE}" in p.stderr and "kubelab lab down" in p.stderr
    assert json.loads((d / "lab.json").read_text()) == lab_up["state"]


def test_subnet_already_routed_is_refused(tmp_path):
    # a bridge stands in for a dummy link: this kernel has no dummy driver (and no modprobe)
    subprocess.run(["ip", "link", "add", DUMMY, "type", "bridge"], check=True)
    try:
        subprocess.run(["ip", "link", "set", DUMMY, "up"], check=True)
        subprocess.run(["ip", "route", "add", ROUTED_SUBNET, "dev", DUMMY], check=True)
        d = tmp_path / "other-lab"
        p = lab(d, "up", "--bare", "--subnet", ROUTED_SUBNET, "--bridge", "labvmbr1", "--prefix", "labvmr")
        assert p.returncode == 1
        assert p.stderr.strip() == (f"error: subnet {ROUTED_SUBNET} is already routed on this host "
                                    f"({ROUTED_SUBNET} dev {DUMMY}): choose another with --subnet")
        assert not d.exists() and not os.path.exists("/sys/class/net/labvmbr1")
        # the pod network the host would route through a (non-bare) lab: refused before anything is made
        p = lab(d, "up", "--subnet", "192.168.78.0/24", "--bridge", "labvmbr1", "--prefix", "labvmr",
                "--pod-network-cidr", ROUTED_SUBNET)
        assert p.returncode == 1
        assert p.stderr.startswith(f"error: --pod-network-cidr {ROUTED_SUBNET} is already routed on this host "
                                   f"({ROUTED_SUBNET} dev {DUMMY}; another lab up?)"), p.stderr
        assert not d.exists() and not os.path.exists("/sys/class/net/labvmbr1")
    finally:
        subprocess.run(["ip", "link", "del", DUMMY], capture_output=True)


@pytest.mark.parametrize("args, message", [
    (["--subnet", "192.168.77.5/24"], 'invalid --subnet "192.168.77.5/24": 192.168.77.5/24 has host bits set'),
    (["--subnet", "10.244.8.0/24"], "invalid --subnet 10.244.8.0/24: it overlaps the cluster's pod/service range 10.244.0.0/16"),
    (["--subnet", "192.168.78.0/29"], "invalid --subnet 192.168.78.0/29: too small for 1 master + 2 workers"),
    (["--subnet", "192.168.78.0/24", "--prefix", "Lab_VM"], 'invalid --prefix "Lab_VM"'),
    (["--subnet", "192.168.78.0/24", "--bridge", "a-bridge-name-too-long"], 'invalid --bridge "a-bridge-name-too-long"'),
    (["--subnet", "192.168.78.0/24", "--workers", "-1"], "invalid --workers -1: want 0 to 50"),
])
def test_up_refuses_bad_input_naming_the_flag(tmp_path, args, message):
    d = tmp_path / "bad-lab"
    p = lab(d, "up", "--bare", "--bridge", "labvmbr2", "--prefix", "labvmb", *args)
    assert p.returncode == 1 and p.stderr.startswith(f"error: {message}"), p.stderr
    assert not d.exists() and not os.path.exists("/sys/class/net/labvmbr2")


def test_down_leaves_nothing(lab_up):
    d, before, state = lab_up["dir"], lab_up["before"], lab_up["state"]
    mnt_ns = {vm["mnt_ns"] for vm in state["vms"]}
    assert len(mnt_ns) == 3 and len(mnt_ns_pids(mnt_ns)) >= 4  # three supervisors and the TCP server
    p = lab(d, "down")
    assert p.returncode == 0, p.stderr
    assert mnt_ns_pids(mnt_ns) == set()  # a zombie has no namespaces left: it counts as gone
    lab_up["server"].wait(timeout=30)
    after = host_snapshot()
    ours = (PREFIX, BRIDGE, str(d), "labtest")
    # other sessions change the host meanwhile: compare what differs, and what is the lab's
    assert {n for n in after["netns"] - before["netns"] if n.startswith(ours)} == set()
    assert not any(n.startswith(ours) for n in after["netns"] | after["links"])
    assert {m for m in after["mounts"] - before["mounts"] if any(o in m for o in ours)} == set()
    assert {r for r in after["rules"] if BRIDGE in r} == {r for r in before["rules"] if BRIDGE in r} == set()
    assert after["etc_kubelab"] == before["etc_kubelab"]
    assert not d.exists()
    assert "No lab is up" in lab(d, "status").stdout
