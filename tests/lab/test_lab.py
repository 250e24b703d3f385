"""The local lab end to end: `kubelab lab up` made a cluster of three namespace-bundle VMs with
the real init and join (the session fixture in conftest.py); these tests use it as a user
does, through the CLI, and look at the VMs' kernels with `ip -n VM`. Order matters a little:
the partition, and the node deleted and joined again, come last."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections import Counter
from pathlib import Path

import psutil

from kubelab.lab import cluster
from tests.lab.conftest import (
    BRIDGE,
    IPS,
    KUBELAB,
    LAB_DIR,
    MASTER,
    NODES,
    POD_CIDR,
    PREFIX,
    SERVICE_CIDR,
    SUBNET,
    W1,
    W2,
    wait_for,
)

NS = "default"
STALE = POD_CIDR.rsplit(".", 2)[0] + ".250"  # a /24 of the pod range that no node has
CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-scheduler", "kube-controller-manager")


def pods_by_name(lab, ns: str) -> dict[str, dict]:
    return {p["metadata"]["name"]: p for p in lab.json("get", "pods", "-n", ns)["items"]}


def overlay_entries(vm: str) -> dict[str, list]:
    """flannel.1's routes, permanent neighbours and unicast FDB entries in a VM's netns."""
    def j(*cmd: str) -> list:
        return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout or "[]")
    routes = j("ip", "-n", vm, "-j", "route", "show", "dev", "flannel.1")
    neigh = j("ip", "-n", vm, "-j", "neigh", "show", "dev", "flannel.1")
    fdb = j("ip", "netns", "exec", vm, "bridge", "-j", "fdb", "show", "dev", "flannel.1")
    return {
        "routes": sorted(f"{r['dst']} via {r.get('gateway')}" for r in routes if r.get("dst") != "default"),
        "neigh": sorted(f"{n['dst']} {n.get('lladdr')}" for n in neigh),
        "fdb": sorted(f"{f['mac']} {f.get('dst')}" for f in fdb if f.get("dst") and f["mac"] != "00:00:00:00:00:00"),
    }


def expected_entries(lab, vm: str) -> dict[str, list] | None:
    """What the overlay should hold on vm: one route, neighbour and FDB entry per other node;
    None while a node's overlay agent has not annotated it yet (a joined node turns Ready
    before its agent has written its VTEP)."""
    want: dict[str, list] = {"routes": [], "neigh": [], "fdb": []}
    for n in lab.json("get", "nodes")["items"]:
        if n["metadata"]["name"] == vm:
            continue
        cidr = n["spec"].get("podCIDR")
        ann = n["metadata"].get("annotations") or {}
        if not cidr or "flannel.alpha.coreos.com/backend-data" not in ann:
            return None
        vtep = cidr.split("/")[0]
        mac = json.loads(ann["flannel.alpha.coreos.com/backend-data"])["VtepMAC"]
        want["routes"].append(f"{cidr} via {vtep}")
        want["neigh"].append(f"{vtep} {mac}")
        want["fdb"].append(f"{mac} {ann['flannel.alpha.coreos.com/public-ip']}")
    return {k: sorted(v) for k, v in want.items()}


def overlay_pids(vm: str) -> set[int]:
    """The overlay agent's processes: in the VM's network namespace (hostNetwork), running
    `kubelab overlay`, not its conmon."""
    netns = f"net:[{Path(f'/run/netns/{vm}').stat().st_ino}]"
    found = set()
    for p in psutil.process_iter(["pid", "name", "cmdline"]):
        try:
            argv = p.info["cmdline"] or []
            if p.info["name"] != "conmon" and "overlay" in argv and any("kubelab" in a for a in argv) \
                    and os.readlink(f"/proc/{p.pid}/ns/net") == netns:
                found.add(p.pid)
        except (OSError, psutil.Error):
            continue
    return found


def test_lab_up_made_the_cluster(lab):
    # lab up said what it did, step by step, and what to try next
    for step in ("seeding the busybox image into 3 VMs", f"kubelab init in {MASTER}", "kubelab join in",
                 "the cluster is up", "kubelab lab down", "comes back with \"kubelab lab down\""):
        assert step in lab.up_output, f"{step!r} not in lab up's output:\n{lab.up_output}"
    nodes = {n["metadata"]["name"]: n for n in lab.json("get", "nodes")["items"]}
    assert set(nodes) == set(NODES)
    assert all(lab.node_ready(n) for n in NODES)
    assert "node-role.kubernetes.io/control-plane" in nodes[MASTER]["metadata"]["labels"]
    for name, n in nodes.items():
        ips = [a["address"] for a in n["status"]["addresses"] if a["type"] == "InternalIP"]
        assert ips == [IPS[name]], f"{name} has InternalIP {ips}, not its lab address"
    # the host reaches each node's pods via that node and the services via the master
    routes = json.loads(subprocess.run(["ip", "-j", "-4", "route", "show", "dev", BRIDGE], capture_output=True,
                                       text=True, check=True).stdout)
    got = {(r["dst"], r.get("gateway")) for r in routes}
    want = {(n["spec"]["podCIDR"], IPS[name]) for name, n in nodes.items()} | {(SERVICE_CIDR, IPS[MASTER]),
                                                                              (SUBNET, None)}
    assert got == want
    # the admin config is where the CLI looks by default, and talks to the master over the bridge
    config = lab.home / ".kubelab" / "config"
    # the HTTP face (what kubectl dials) and the gRPC one in the kubelab.dev/grpc extension
    assert f"server: https://{IPS[MASTER]}:6444\n" in config.read_text()
    assert f"- name: kubelab.dev/grpc\n      extension:\n        server: {IPS[MASTER]}:6443\n" in config.read_text()
    status = lab.lab("status").stdout
    assert f"cluster: made by init and join (pods {POD_CIDR}, services {SERVICE_CIDR}); admin config {config}" in status
    # inside the master, the VM's own admin config is the CLI's default, as on a kubeadm master after init
    assert lab.shell(MASTER, "kubelab", "get", "nodes", "--no-headers").stdout.count(" Ready ") == 3


def test_control_plane_and_overlay_run_as_pods(lab):
    want = {f"{c}-{MASTER}" for c in CONTROL_PLANE} | {f"kube-overlay-{n}" for n in NODES}

    def running():
        pods = pods_by_name(lab, "kube-system")
        ok = {n for n, p in pods.items() if p.get("status", {}).get("phase") == "Running"}
        return want <= ok and pods
    pods = wait_for("control plane and overlay pods Running", running, 60)
    assert not [n for n in pods if n.startswith("kubelet")], "the kubelet is a host service, not a pod"
    for n in NODES:
        assert pods[f"kube-overlay-{n}"]["spec"]["nodeName"] == n


def test_walkthrough_pod_to_pod_across_nodes_keeps_the_source_ip(lab):
    """make lab's walkthrough on the session's lab: the seed's commands, and a web pod on one
    worker reached from a pod on the other by pod IP, httpd logging the client's own pod IP."""
    p = subprocess.run([sys.executable, "-m", "kubelab.lab.walkthrough"], capture_output=True, text=True,
                       env=lab.env, timeout=300, check=False)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr
    for shown in ("$ kubelab get nodes", "$ kubelab get pods -n kube-system", "$ kubelab create ns dev",
                  "namespace/dev created", "$ kubelab get pods -n dev -o wide", "hello from web",
                  "kubelab lab down"):
        assert shown in p.stdout, f"{shown!r} not in the walkthrough's output"
    assert re.search(r"^NAME +STATUS +ROLES", p.stdout, re.MULTILINE)
    web, client = lab.pod("web", "dev"), lab.pod("client", "dev")
    assert web["spec"]["nodeName"] != client["spec"]["nodeName"]
    assert {web["spec"]["nodeName"], client["spec"]["nodeName"]} <= {W1, W2}, "a pod on the tainted master"
    ipw, ipc = web["status"]["podIP"], client["status"]["podIP"]
    assert ipw.rsplit(".", 1)[0] != ipc.rsplit(".", 1)[0], "two nodes' pods share a /24"
    # httpd -vv logs the client's address: the sender's pod IP, not a node's (no NAT on the overlay)
    assert f"httpd saw the client's own pod IP {ipc}" in p.stdout
    assert f"[::ffff:{ipc}]" in lab.kl("logs", "web", "-n", "dev").stdout
    # and the host reaches a pod by its IP, through the lab's route via the pod's node
    with urllib.request.urlopen(f"http://{ipw}:8080/", timeout=5) as r:
        assert r.read() == b"hello from web\n"


def test_lab_load_puts_an_image_into_every_vm(lab, tmp_path):
    ref = "localhost/kll-load:1"
    subprocess.run([*KUBELAB, "image", "build-busybox", "--root-dir", str(tmp_path / "store"), ref],
                   check=True, capture_output=True)
    archive = tmp_path / "kll-load.tar"
    subprocess.run(["skopeo", "--insecure-policy", "copy", "--quiet", f"oci:{tmp_path / 'store/images'}:{ref}",
                    f"oci-archive:{archive}:{ref}"], check=True, capture_output=True)
    p = lab.lab("load", str(archive))
    assert sorted(p.stdout.splitlines()) == sorted(f'Image: "{ref}" loaded into node "{n}"' for n in NODES)
    for n in NODES:
        assert ref in lab.shell(n, "kubelab", "image", "ls", "-q").stdout.split(), f"{ref} not in {n}'s store"
    lab.apply(f"""apiVersion: v1
kind: Pod
metadata: {{name: loaded, namespace: {NS}}}
spec:
  nodeName: {W2}
  containers:
  - name: c
    image: {ref}
    imagePullPolicy: Never
    command: [sleep, "100000"]
""")
    lab.wait_running("loaded", NS)
    missing = lab.lab("load", str(tmp_path / "nope.tar"), check=False)
    assert missing.returncode == 1 and "nope.tar: no such file" in missing.stderr
    (tmp_path / "bad.tar").write_text("not an image archive\n")
    bad = lab.lab("load", str(tmp_path / "bad.tar"), check=False)
    assert bad.returncode == 1
    assert bad.stderr.startswith(f"error: loading into {', '.join(NODES)} failed: {tmp_path / 'bad.tar'}: "
                                 "not a readable image archive"), bad.stderr


def test_overlay_agent_restart_leaves_no_duplicates_or_leftovers(lab):
    want = wait_for("every node's VTEP annotated", lambda: expected_entries(lab, W1), 30)
    assert len(want["routes"]) == 2
    wait_for(f"{W1}'s overlay entries", lambda: overlay_entries(W1) == want, 30)
    pod = f"kube-overlay-{W1}"
    restarts = pods_by_name(lab, "kube-system")[pod]["status"]["containerStatuses"][0].get("restartCount", 0)
    old = overlay_pids(W1)
    assert old, f"no overlay agent process in {W1}"
    # behind the agent's back, then a crash: its restart must converge on exactly the Node list
    stale_mac = "0e:00:00:00:00:99"
    for cmd in (["route", "add", f"{STALE}.0/24", "via", f"{STALE}.0", "dev", "flannel.1", "onlink"],
                ["neigh", "add", f"{STALE}.0", "lladdr", stale_mac, "dev", "flannel.1", "nud", "permanent"]):
        subprocess.run(["ip", "-n", W1, *cmd], check=True)
    subprocess.run(["ip", "netns", "exec", W1, "bridge", "fdb", "append", stale_mac, "dst", SUBNET.replace(".0/24", ".99"),
                    "dev", "flannel.1", "self", "permanent"], check=True)
    for pid in old:
        psutil.Process(pid).send_signal(signal.SIGKILL)

    def restarted():
        st = pods_by_name(lab, "kube-system")[pod]["status"]
        cs = st.get("containerStatuses", [{}])[0]
        new = overlay_pids(W1) - old
        return cs.get("restartCount", 0) > restarts and "running" in cs.get("state", {}) and new
    wait_for("the overlay agent restarted by the kubelet", restarted, 60)
    wait_for(f"{W1}'s overlay entries reconciled", lambda: overlay_entries(W1) == want, 40)
    got = overlay_entries(W1)
    for kind, entries in got.items():
        assert not [e for e, c in Counter(e.split()[0] for e in entries).items() if c > 1], f"duplicate {kind}"


def test_partition_then_heal(lab):
    assert lab.node_ready(W1)
    lab.lab("partition", W1)
    try:
        # the node lifecycle controller's grace period (50 s) passes without a heartbeat
        wait_for(f"{W1} NotReady", lambda: not lab.node_ready(W1), 120, interval=1)
        assert lab.node_ready(W2), "the partition cut more than one node"
    finally:
        lab.lab("heal", W1)
    wait_for(f"{W1} Ready again", lambda: lab.node_ready(W1), 90, interval=1)


def test_second_lab_up_is_refused(lab):
    before = (LAB_DIR / "lab.json").read_text()
    p = lab.lab("up", "--prefix", PREFIX, "--bridge", BRIDGE, "--subnet", SUBNET, check=False)
    assert p.returncode == 1
    assert f"a lab is already up (3 VMs on bridge {BRIDGE}" in p.stderr and "kubelab lab down" in p.stderr
    assert (LAB_DIR / "lab.json").read_text() == before


def test_node_deleted_leaves_no_entries_then_joins_again(lab):
    join = lab.kl("token", "create", "--print-join-command").stdout.strip().splitlines()[-1]
    w2 = next(n for n in lab.json("get", "nodes")["items"] if n["metadata"]["name"] == W2)
    cidr, mac = w2["spec"]["podCIDR"], json.loads(
        w2["metadata"]["annotations"]["flannel.alpha.coreos.com/backend-data"])["VtepMAC"]
    # as a node is removed for good: its own teardown first, then its Node
    lab.shell(W2, *cluster.reset_argv(), timeout=120)
    lab.kl("delete", "node", W2)

    def gone_everywhere():
        return all(not any(cidr in r for r in e["routes"]) and not any(mac in x for x in e["neigh"] + e["fdb"])
                   for e in (overlay_entries(MASTER), overlay_entries(W1)))
    wait_for(f"{W2}'s overlay entries gone on the other nodes", gone_everywhere, 30)
    # and the printed join brings the node back, with its entries on the others again
    args = join.split()[1:]
    lab.shell(W2, "kubelab", *args, "--node-name", W2, "--node-ip", IPS[W2], "--iface", "eth0", timeout=120)
    wait_for(f"{W2} Ready after joining again", lambda: lab.node_ready(W2), 60)
    wait_for(f"{W1} holding entries for {W2} again",
             lambda: overlay_entries(W1) == expected_entries(lab, W1), 40)


def test_failed_up_is_rolled_back(lab, tmp_path):
    """A second lab of other names whose init fails (a pod range too small for a /24 per node):
    up says which step failed and why, and takes back everything it made."""
    d, env = tmp_path / "lab2", dict(lab.env, HOME=str(tmp_path / "home"))
    # ranges apart from the session lab's, which the host routes already
    name, net = f"{PREFIX}2", int(SUBNET.split(".")[2]) + 1
    p = subprocess.run([*KUBELAB, "lab", "up", "--workers", "1", "--lab-dir", str(d), "--prefix", name,
                        "--bridge", f"{name}0", "--subnet", f"192.168.{net}.0/24", "--pod-network-cidr", "10.250.0.0/28",
                        "--service-cidr", "10.112.0.0/12"], capture_output=True, text=True, env=env, timeout=300,
                       check=False)
    assert p.returncode == 1, p.stdout + p.stderr
    assert f'"kubelab init --apiserver-advertise-address 192.168.{net}.10' in p.stderr and "failed (exit 1)" in p.stderr
    assert 'invalid --pod-network-cidr "10.250.0.0/28"' in p.stderr and "taking the lab down again" in p.stderr
    assert not d.exists() and not (tmp_path / "home" / ".kubelab").exists()
    assert not os.path.exists(f"/run/netns/{name}-master") and not os.path.exists(f"/sys/class/net/{name}0")
    assert not list(Path("/sys/fs/cgroup").glob(f"*/kubelab/{name}-*"))
