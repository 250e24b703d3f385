"""Pure logic of the lab's cluster layer (kubelab/lab/cluster.py, net.py) and its benchmark's
step clock: the join line read from init's output, the host's admin config put back by down,
the subnet plan against the cluster's ranges. Real files in a temp dir; no namespaces."""
from __future__ import annotations

import pytest

from bench.lab import steps
from kubelab.lab import cluster, net
from kubelab.lab.state import LabError, LabState

HASH = "sha256:" + "ab" * 32


@pytest.mark.parametrize("line, ok", [
    (f"kubelab join 192.168.56.10:6443 --token abcdef.0123456789abcdef --discovery-token-ca-cert-hash {HASH}", True),
    (f"kubelab join 192.168.56.10:6443 --token abcdef.0123456789abcdef --discovery-token-ca-cert-hash {HASH}  ", True),
    (f"kubelab join 192.168.56.10 --token abcdef.0123456789abcdef --discovery-token-ca-cert-hash {HASH}", False),
    (f"kubelab join 192.168.56.10:6443 --token ABCDEF.0123456789abcdef --discovery-token-ca-cert-hash {HASH}", False),
    ("kubelab join 192.168.56.10:6443 --token abcdef.0123456789abcdef --discovery-token-ca-cert-hash sha256:ab", False),
    (f"[x] kubelab join 192.168.56.10:6443 --token abcdef.0123456789abcdef --discovery-token-ca-cert-hash {HASH}",
     False),
])
def test_join_line_is_the_exact_printed_command(line, ok):
    assert bool(cluster.JOIN_LINE.match(line)) is ok


def state_with_config(tmp_path, *, backup: bool) -> tuple[LabState, object]:
    st = LabState(bridge="b", subnet="192.168.65.0/24", prefix="p", bridge_ip="192.168.65.1")
    home = tmp_path / "home" / ".kubelab"
    home.mkdir(parents=True)
    dst = home / "config"
    dst.write_text("the lab's admin config\n")
    st.kubeconfig, st.kubeconfig_sha256 = str(dst), cluster._digest(dst)
    if backup:
        b = tmp_path / "kubeconfig.before"
        b.write_text("the user's own config\n")
        st.kubeconfig_backup = str(b)
    return st, dst


def test_down_puts_back_the_users_config(tmp_path):
    st, dst = state_with_config(tmp_path, backup=True)
    cluster.restore_kubeconfig(st)
    assert dst.read_text() == "the user's own config\n"
    assert not (tmp_path / "kubeconfig.before").exists()


def test_down_removes_its_config_and_the_dir_it_made(tmp_path):
    st, dst = state_with_config(tmp_path, backup=False)
    cluster.restore_kubeconfig(st)
    assert not dst.exists() and not dst.parent.exists()


def test_down_leaves_a_config_replaced_since_alone(tmp_path):
    st, dst = state_with_config(tmp_path, backup=True)
    dst.write_text("written by someone after lab up\n")
    cluster.restore_kubeconfig(st)
    assert dst.read_text() == "written by someone after lab up\n"


def test_plan_refuses_a_subnet_inside_the_chosen_cluster_ranges():
    with pytest.raises(LabError, match="overlaps the cluster's pod/service range 10.250.0.0/16"):
        net.plan("10.250.3.0/24", 2, ("10.250.0.0/16", "10.96.0.0/12"))
    network, bridge_ip, ips = net.plan("10.244.3.0/24", 1, ("10.250.0.0/16", "10.96.0.0/12"))
    assert (str(network), bridge_ip, ips) == ("10.244.3.0/24", "10.244.3.1", ["10.244.3.10", "10.244.3.11"])


def test_bench_reads_lab_ups_step_clock():
    lines = ["lab VM x is up", "[  0.0s] seeding the busybox image into 3 VMs (offline)",
             "[  0.9s] kubelab init in kll2-master (192.168.66.10)", "    [preflight] ...",
             "[  8.2s] kubelab join in a, b", "[ 12.6s] admin config written to /x; waiting for 3 nodes Ready",
             "[ 13.4s] routes from the host", "[ 13.4s] the cluster is up"]
    out = "\n".join(lines)
    assert steps(out) == "seed 0.9s, init 7.3s, join 4.4s, Ready 0.8s, routes 0.0s"
