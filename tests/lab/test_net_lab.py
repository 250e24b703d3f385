"""`kubelab net show` and `kubelab net trace` on the session lab (tests/lab/conftest.py): a
worker's routes, FDB and neighbours of the other nodes, cni0's ports with their pods; a probe
across nodes (flannel.1, arrived), on one node (no VXLAN), to an address nothing answers on
(lost, and where), and through a service's ClusterIP once kube-proxy writes rules; the lab
shell's busybox shim (wget -T). Every expectation is checked against what the API and the
kernel say independently of kubelab/net (the nodes' podCIDRs and IPs, `ip` in the VMs)."""
from __future__ import annotations

import json
import re
import uuid

import pytest

from tests.lab.conftest import IPS, LAB_DIR, MASTER, W1, W2, wait_for

NS = "nettest"


def web(name: str, node: str, app: str = "web") -> str:
    return f"""---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {NS}, labels: {{app: {app}}}}}
spec:
  nodeName: {node}
  containers:
  - name: web
    image: busybox
    imagePullPolicy: IfNotPresent
    command: [sh, -c, "mkdir -p /www; echo from-{name} > /www/index.html; exec httpd -f -p 8080 -h /www"]
    ports: [{{name: http, containerPort: 8080}}]
"""


@pytest.fixture(scope="module")
def pods(lab):
    lab.kl("create", "namespace", NS)
    try:
        lab.apply(web("a1", W1) + web("a2", W2) + web("c", W2, app="client"))
        running = {name: lab.wait_running(name, NS) for name in ("a1", "a2", "c")}
        # the overlay agents program a peer's route (with its neighbour and FDB entry) once
        # they see the peer's Node: on a busy host that may come after the pods run
        cidrs = pod_cidrs(lab)
        for vm in (W1, W2):
            want = {cidrs[n] for n in (MASTER, W1, W2) if n != vm}
            wait_for(f"{vm}'s routes to the other nodes' pods", lambda vm=vm, want=want: want <= {
                r["dst"] for r in json.loads(lab.shell(vm, "ip", "-j", "route").stdout) if r.get("dev") == "flannel.1"}, 60)
        yield running
    finally:
        lab.kl("delete", "namespace", NS, check=False)


def net(lab, *args, check=True):
    return lab.kl("net", *args, "--lab-dir", str(LAB_DIR), check=check, timeout=120)


def pod_cidrs(lab) -> dict[str, str]:
    return {n["metadata"]["name"]: n["spec"]["podCIDR"] for n in lab.json("get", "nodes")["items"]}


def rows(text: str, first: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines() if line.split() and line.split()[0] == first]


def test_show_a_worker(lab, pods):
    cidrs = pod_cidrs(lab)
    out = net(lab, "show", W1).stdout
    # routes: the other nodes' podCIDRs over flannel.1, named by the node behind them; its own on cni0
    for node in (MASTER, W2):
        (route,) = rows(out, cidrs[node])
        assert "flannel.1" in route and node in route, route
    (own,) = rows(out, cidrs[W1])
    assert "cni0" in own
    # the VXLAN device as the kernel has it
    vx = json.loads(lab.shell(W1, "ip", "-j", "-d", "link", "show", "flannel.1").stdout)[0]
    info = vx["linkinfo"]["info_data"]
    assert f"VXLAN flannel.1: VNI {info['id']}, port {info['port']}, local {IPS[W1]}" in out
    assert f"MTU {vx['mtu']}" in out
    # FDB: one entry per other node, its underlay IP and its name
    fdb = [line.split() for line in out.splitlines() if re.match(r"^\s+([0-9a-f]{2}:){5}[0-9a-f]{2}\s", line)]
    kernel = json.loads(lab.shell(W1, "bridge", "-j", "fdb", "show", "dev", "flannel.1").stdout)
    for node in (MASTER, W2):
        (mac,) = [e["mac"] for e in kernel if e.get("dst") == IPS[node]]
        assert [mac, IPS[node], node] in [r[:3] for r in fdb], f"no FDB row for {node} ({IPS[node]}):\n{out}"
    # neighbours: each other node's VTEP address (its podCIDR's network address)
    for node in (MASTER, W2):
        (neigh,) = rows(out, cidrs[node].split("/")[0])
        assert node in neigh and "PERMANENT" in neigh
    # cni0's ports: a1's veth, named by the pod, with its IP; the veth is the one the kernel
    # pairs with a1's eth0 (its peer's ifindex)
    (port,) = [r for r in (line.split() for line in out.splitlines()) if f"{NS}/a1" in r]
    veth = port[0]
    assert port[2] == pods["a1"]["status"]["podIP"]
    link = json.loads(lab.shell(W1, "ip", "-j", "link", "show", veth).stdout)[0]
    assert link["master"] == "cni0"
    assert "Services" in out


def test_show_names_the_lab_vms_for_an_unknown_node(lab):
    p = net(lab, "show", "no-such-node", check=False)
    assert p.returncode == 1 and 'node "no-such-node" is not a VM of the lab' in p.stderr and W1 in p.stderr


def hop_rows(out: str) -> list[list[str]]:
    return [line.split() for line in out.splitlines() if re.match(r"^\d+\s", line)]


def test_trace_across_nodes(lab, pods):
    p = net(lab, "trace", "c", "a1", "-n", NS)
    out = p.stdout
    hops = hop_rows(out)
    a1 = pods["a1"]["status"]["podIP"]
    assert p.stdout.rstrip().splitlines()[-1].startswith("Arrived: pod nettest/a1 accepted the TCP connection"), out
    # the sending node's flannel.1, with the FDB entry pointing at worker1's underlay IP, and
    # packets counted on it during the probe
    (vx,) = [h for h in hops if h[1] == W2 and h[2] == "flannel.1"]
    assert vx[3] == "tx" and int(vx[4].lstrip("+")) > 0 and IPS[W1] in vx and f"({W1})" in vx
    (peer,) = [h for h in hops if h[1] == W1 and h[2] == "flannel.1"]
    assert peer[3] == "rx" and int(peer[4].lstrip("+")) > 0
    # the last hop is a1's veth on worker1: the port net show lists for a1
    shown = [r for r in (line.split() for line in net(lab, "show", W1).stdout.splitlines()) if f"{NS}/a1" in r]
    assert hops[-1][1] == W1 and hops[-1][2] == shown[0][0] and a1 in out
    assert int(hops[-1][4].lstrip("+")) > 0


def test_trace_on_one_node(lab, pods):
    out = net(lab, "trace", "c", "a2", "-n", NS).stdout
    assert "Arrived: pod nettest/a2" in out
    assert not [h for h in hop_rows(out) if h[2] == "flannel.1" or h[1] != W2], out


def test_trace_to_an_address_nothing_answers_on(lab, pods):
    # an address of worker1's podCIDR that no pod holds
    cidr = pod_cidrs(lab)[W1]
    nobody = cidr.split("/")[0].rsplit(".", 1)[0] + ".250"
    p = net(lab, "trace", "c", nobody, "-n", NS, check=False)
    assert p.returncode == 1, p.stdout
    last = p.stdout.rstrip().splitlines()[-1]
    assert last.startswith("Lost: the probe did not arrive") and "arrived:" not in p.stdout.lower()
    # lost on worker1's bridge: nobody answers ARP for it there
    assert f"no pod has {nobody} on {W1}" in last and f"last seen at {W1}" in last, last
    assert any(h[1] == W1 and h[2] == "cni0" for h in hop_rows(p.stdout))


def test_trace_through_a_service(lab, pods):
    nat = lab.shell(W2, "iptables-save", "-t", "nat").stdout
    if "KUBE-SERVICES" not in nat:
        pytest.skip("no kube-proxy rules on the lab's nodes (kube-proxy not running)")
    name = f"web-{uuid.uuid4().hex[:6]}"
    lab.apply(f"""apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {NS}}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: http}}]
""")
    try:
        cip = lab.json("get", "svc", name, "-n", NS)["spec"]["clusterIP"]
        ips = {pods[n]["status"]["podIP"] for n in ("a1", "a2")}

        def row() -> str:
            found = [r for r in net(lab, "show", W2).stdout.splitlines() if f"{NS}/{name}:http" in r]
            return found[0] if found and all(f"{ip}:8080" in found[0] for ip in ips) else ""
        show = wait_for(f"kube-proxy's chain for {NS}/{name} with both endpoints on {W2}", row, 30)
        assert cip in show and "KUBE-SVC-" in show and "50.0%" in show, show
        out = net(lab, "trace", "c", name, "-n", NS).stdout
        (dnat,) = [line for line in out.splitlines() if line.split()[2:3] == ["DNAT"]]
        chosen = re.search(rf"{re.escape(cip)}:80 -> (\S+):8080", dnat)
        assert chosen and chosen.group(1) in ips, dnat
        who = "a1" if chosen.group(1) == pods["a1"]["status"]["podIP"] else "a2"
        assert out.rstrip().splitlines()[-1].startswith(f"Arrived: pod {NS}/{who}"), out
    finally:
        lab.kl("delete", "svc", name, "-n", NS, check=False)


def test_lab_shell_busybox_wget_timeout(lab, pods):
    """The check's command line: the host's busybox has no wget -T; the shim runs it."""
    ip = pods["a1"]["status"]["podIP"]
    got = lab.shell(MASTER, "busybox", "wget", "-qO-", "-T", "3", f"http://{ip}:8080/")
    assert got.stdout == "from-a1\n"
