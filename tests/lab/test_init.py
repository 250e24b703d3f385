"""`kubelab init`, `join` and `reset` by hand on a bare lab, as the lecture does with kubeadm:
`kubelab lab up --bare --workers 1` (names of its own: kli2, kli20, 192.168.63.0/24, a temp lab
dir), then init in the master VM through `lab shell`, the printed join in the worker, and reset
in both. The tests run in order on one module-scoped lab; `lab down` ends it whatever happens.

Checked: a failed init (wait-control-plane given no time) takes back exactly what it made,
services and containers included; a taken port fails preflight before anything is made; init
runs the control plane as Running mirror pods and marks the node; a second init is refused;
the worker joins and is Ready; reset leaves no flannel.1, cni0, container, service or file.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

PREFIX, BRIDGE, SUBNET = "kli2", "kli20", "192.168.63.0/24"
MASTER, WORKER = f"{PREFIX}-master", f"{PREFIX}-worker1"
MASTER_IP = "192.168.63.10"
KUBELAB = [sys.executable, "-m", "kubelab.cli.main"]
JOIN = re.compile(r"^kubelab join 192\.168\.63\.10:6443 --token [a-z0-9]{6}\.[a-z0-9]{16} "
                  r"--discovery-token-ca-cert-hash sha256:[0-9a-f]{64}$")
CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-scheduler", "kube-controller-manager")
POD_CIDR = "10.163.0.0/16"  # not the default: a joining node must learn it from kubeadm-config
INIT = ["kubelab", "init", "--apiserver-advertise-address", MASTER_IP, "--iface", "eth0", "--node-name", MASTER,
        "--pod-network-cidr", POD_CIDR]


class BareLab:
    def __init__(self, d: Path):
        self.dir = d
        self.env = dict(os.environ)
        self.env.pop("KUBELAB_LAB_DIR", None)

    def lab(self, verb: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([*KUBELAB, "lab", verb, "--lab-dir", str(self.dir), *args], capture_output=True,
                              text=True, timeout=timeout, env=self.env, check=False)

    def sh(self, vm: str, *cmd: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return self.lab("shell", vm, "--", *cmd, timeout=timeout)

    def kl(self, *args: str) -> subprocess.CompletedProcess:
        """The CLI inside the master, with the admin config init wrote."""
        return self.sh(MASTER, "kubelab", "--config", "/etc/kubelab/admin.conf", *args, timeout=60)

    def vm_dir(self, vm: str, tree: str) -> Path:
        return self.dir / "vms" / vm / tree  # the VM's private /etc/kubelab, /var/lib/kubelab, /run

    def links(self, vm: str) -> set[str]:
        out = subprocess.run(["ip", "-n", vm, "-j", "link", "show"], capture_output=True, text=True, check=True)
        return {link["ifname"] for link in json.loads(out.stdout)}


def wait_for(what: str, fn, timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what}: not so after {timeout}s (last: {got!r})"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def bare(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    lab = BareLab(tmp_path_factory.mktemp("lab") / "lab")
    up = lab.lab("up", "--bare", "--workers", "1", "--prefix", PREFIX, "--bridge", BRIDGE, "--subnet", SUBNET)
    try:
        assert up.returncode == 0, f"lab up --bare failed:\n{up.stdout}\n{up.stderr}"
        yield lab
    finally:
        for vm in (WORKER, MASTER):  # the nodes' own teardown first, then the VMs go
            try:
                lab.sh(vm, "kubelab", "reset", "--force", timeout=120)
            except subprocess.TimeoutExpired:
                pass  # down kills whatever is left in the VM
        down = lab.lab("down", timeout=300)
        assert down.returncode == 0, f"lab down failed:\n{down.stdout}\n{down.stderr}"


def node_state(lab: BareLab, vm: str) -> dict:
    """What init or join leaves in a VM: its files, services, containers, devices."""
    etc, var, run = lab.vm_dir(vm, "etc-kubelab"), lab.vm_dir(vm, "var-lib-kubelab"), lab.vm_dir(vm, "run")
    containers = var / "containers"
    return {
        "etc": sorted(p.name for p in etc.iterdir()),
        "var": sorted(p.name for p in var.iterdir() if p.name != "images"),
        "services": sorted(p.name for p in (run / "kubelab").glob("kubelab-*.pid")),
        "containers": sorted(p.name for p in containers.iterdir()) if containers.is_dir() else [],
        "links": sorted(lab.links(vm) & {"flannel.1", "cni0"}),
        "cgroups": sorted(str(p) for p in Path("/sys/fs/cgroup").glob(f"*/kubelab/{vm}")),
    }


EMPTY = {"etc": [], "var": [], "services": [], "containers": [], "links": [], "cgroups": []}


def test_failed_init_rolls_back_what_it_made(bare):
    # wait-control-plane with no time fails after kubelet-start: certs, configs, manifests,
    # flags files, the running services and whatever containers they started must all go
    keep = bare.vm_dir(MASTER, "etc-kubelab") / "keep.txt"
    keep.write_text("not init's")
    try:
        p = bare.sh(MASTER, *INIT, "--timeout", "0")
        assert p.returncode == 1, p.stdout + p.stderr
        assert "error execution phase wait-control-plane: the API server did not answer in 0s" in p.stderr
        assert "[kubelet-start] wrote /var/lib/kubelab/kubelab-kubelet.env" in p.stdout  # it got that far
        assert "[rollback] removed /etc/kubelab/pki" in p.stdout
        # only the logs stay, for the reasons of the failure
        assert node_state(bare, MASTER) == dict(EMPTY, etc=["keep.txt"], var=["log"])
        assert (bare.vm_dir(MASTER, "var-lib-kubelab") / "log" / "kubelab-kubelet.log").exists()
    finally:
        keep.unlink()


def test_taken_port_fails_preflight_before_anything_is_made(bare):
    holder = subprocess.Popen(["ip", "netns", "exec", MASTER, sys.executable, "-c",
                               "import socket,sys,time; s=socket.socket(); s.bind(('0.0.0.0', 10250)); s.listen(); "
                               "print('up', flush=True); time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "up"
        before = node_state(bare, MASTER)
        p = bare.sh(MASTER, *INIT)
        assert p.returncode == 1
        assert "error execution phase preflight: [preflight] Some fatal errors occurred:" in p.stderr
        assert "[ERROR Port-10250]: Port 10250 is in use" in p.stderr
        assert node_state(bare, MASTER) == before and before["etc"] == [] and before["services"] == []
    finally:
        holder.kill()
        holder.wait()


@pytest.fixture(scope="module")
def initialized(bare):
    p = bare.sh(MASTER, *INIT)
    assert p.returncode == 0, f"init failed:\n{p.stdout}\n{p.stderr}"
    return p.stdout.strip().splitlines()


def test_init_prints_the_join_command_last(initialized):
    assert JOIN.match(initialized[-1]), initialized[-5:]
    assert any(line.endswith("export KUBELAB_CONFIG=/etc/kubelab/admin.conf") for line in initialized)
    assert [line.split("]")[0] + "]" for line in initialized if line.startswith("[")][:2] == ["[preflight]"] * 2


def test_control_plane_runs_as_mirror_pods(bare, initialized):
    def running() -> set[str] | None:
        p = bare.kl("get", "pods", "-n", "kube-system", "-o", "json")
        if p.returncode != 0:
            return None
        pods = {i["metadata"]["name"]: i for i in json.loads(p.stdout)["items"]}
        want = {f"{c}-{MASTER}" for c in CONTROL_PLANE} | {f"kube-overlay-{MASTER}"}
        ok = {n for n in want if pods.get(n, {}).get("status", {}).get("phase") == "Running"}
        return pods if ok == want else None
    pods = wait_for("the control plane's mirror pods Running", running, 120)
    for c in CONTROL_PLANE:
        pod = pods[f"{c}-{MASTER}"]
        assert pod["metadata"]["labels"] == {"component": c, "tier": "control-plane"}
        assert pod["spec"]["hostNetwork"] and pod["status"]["podIP"] == MASTER_IP
    assert not any(n.startswith("kubelet") for n in pods), "the kubelet is a host service, not a pod"
    # the kubelet and the runtime run as the VM's services, from their flags files
    assert node_state(bare, MASTER)["services"] == ["kubelab-kubelet.pid", "kubelab-runtime.pid"]
    assert "flannel.1" in bare.links(MASTER)


def test_master_is_labelled_and_tainted(bare, initialized):
    node = json.loads(bare.kl("get", "node", MASTER, "-o", "json").stdout)
    assert node["metadata"]["labels"]["node-role.kubernetes.io/control-plane"] == ""
    assert {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"} in [
        {k: t[k] for k in ("key", "effect")} for t in node["spec"].get("taints", [])]
    assert [a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP"] == [MASTER_IP]
    admin = bare.vm_dir(MASTER, "etc-kubelab") / "admin.conf"
    # the HTTP face (what kubectl dials) and the gRPC one in the kubelab.dev/grpc extension
    assert f"server: https://{MASTER_IP}:6444\n" in admin.read_text()
    assert f"- name: kubelab.dev/grpc\n      extension:\n        server: {MASTER_IP}:6443\n" in admin.read_text()
    # born tainted (kubeadm's nodeRegistration), so nothing lands on it before it is marked
    flags = (bare.vm_dir(MASTER, "var-lib-kubelab") / "kubelab-kubelet.env").read_text()
    assert "--register-with-taints=node-role.kubernetes.io/control-plane:NoSchedule" in flags.split()


def test_second_init_is_refused(bare, initialized):
    admin = bare.vm_dir(MASTER, "etc-kubelab") / "admin.conf"
    before = admin.read_bytes()
    p = bare.sh(MASTER, *INIT)
    assert p.returncode == 1
    assert "error execution phase preflight" in p.stderr and 'run "kubelab reset" first' in p.stderr
    assert "/etc/kubelab/admin.conf already exists" in p.stderr
    assert admin.read_bytes() == before  # nothing touched, nothing rolled back
    assert bare.kl("get", "nodes").returncode == 0


def test_worker_joins_with_the_printed_command_and_is_ready(bare, initialized):
    join = initialized[-1].split()
    p = bare.sh(WORKER, *join, "--node-name", WORKER, "--iface", "eth0")
    assert p.returncode == 0, f"join failed:\n{p.stdout}\n{p.stderr}"

    def ready() -> bool:
        got = bare.kl("get", "node", WORKER, "-o", "json")
        return got.returncode == 0 and any(c["type"] == "Ready" and c["status"] == "True"
                                           for c in json.loads(got.stdout)["status"]["conditions"])
    wait_for(f"{WORKER} Ready", ready, 60)

    def overlay_running() -> bool:
        got = bare.kl("get", "pod", f"kube-overlay-{WORKER}", "-n", "kube-system", "-o", "json")
        return got.returncode == 0 and json.loads(got.stdout)["status"].get("phase") == "Running"
    wait_for(f"kube-overlay-{WORKER} Running", overlay_running, 90)
    wait_for(f"flannel.1 in {WORKER}", lambda: "flannel.1" in bare.links(WORKER), 30)
    # the pod network init was given reaches the worker through kube-system/kubeadm-config
    cm = json.loads(bare.kl("get", "configmap", "kubeadm-config", "-n", "kube-system", "-o", "json").stdout)
    assert f"podSubnet: {POD_CIDR}" in cm["data"]["ClusterConfiguration"]
    flags = (bare.vm_dir(WORKER, "var-lib-kubelab") / "kubelab-kubelet.env").read_text()
    assert f"--cluster-cidr={POD_CIDR}" in flags.split()
    node = json.loads(bare.kl("get", "node", WORKER, "-o", "json").stdout)
    assert ipaddress.ip_network(node["spec"]["podCIDR"]).subnet_of(ipaddress.ip_network(POD_CIDR))


def test_reset_takes_everything_back_and_is_safe_twice(bare, initialized):
    for vm in (WORKER, MASTER):
        assert node_state(bare, vm)["containers"], f"{vm} runs no container before reset"
        p = bare.sh(vm, "kubelab", "reset", "--force", timeout=120)
        assert p.returncode == 0, f"reset in {vm} failed:\n{p.stdout}\n{p.stderr}"
        assert node_state(bare, vm) == EMPTY, vm
        again = bare.sh(vm, "kubelab", "reset", "--force", timeout=120)
        assert again.returncode == 0, again.stderr
        assert node_state(bare, vm) == EMPTY
