"""kubeadm/node.py: the node IP choice (pure: addresses and default route handed in) and the
daemons' flags, as init and join write them."""
from __future__ import annotations

from pathlib import Path

import pytest

from kubeadm import node, services
from kubeadm.node import NodeIPError, NodeSpec, choose_node_ip

LAB_VM = [("eth0", "192.168.56.11")]  # no default route: eth0 is a lab VM's only link
VAGRANT = [("eth0", "10.0.2.15"), ("eth1", "192.168.56.11")]  # the NAT one first, same on every VM


def test_node_ip_flag_wins_and_finds_its_interface():
    assert choose_node_ip(VAGRANT, ("eth0", "10.0.2.15"), node_ip="192.168.56.11") == ("eth1", "192.168.56.11")


def test_iface_flag_gives_its_address():
    assert choose_node_ip(VAGRANT, ("eth0", "10.0.2.15"), iface="eth1") == ("eth1", "192.168.56.11")


def test_default_route_source_then_the_only_address():
    assert choose_node_ip(VAGRANT, ("eth0", "10.0.2.15")) == ("eth0", "10.0.2.15")
    assert choose_node_ip(VAGRANT, ("eth1", "")) == ("eth1", "192.168.56.11")
    assert choose_node_ip(LAB_VM, None) == ("eth0", "192.168.56.11")


@pytest.mark.parametrize("addrs,default,kw,message", [
    (VAGRANT, None, {}, "several IPv4 addresses .*--node-ip or --iface"),
    ([], None, {}, "no global IPv4 address: give the node's address with --node-ip"),
    (LAB_VM, None, {"node_ip": "192.168.56.99"}, "--node-ip 192.168.56.99: no interface of this host has"),
    (LAB_VM, None, {"node_ip": "nope"}, 'invalid --node-ip "nope"'),
    (LAB_VM, None, {"iface": "eth9"}, "--iface eth9: no such interface"),
    (VAGRANT, None, {"iface": "eth0", "node_ip": "192.168.56.11"}, "is not an address of --iface eth0"),
])
def test_node_ip_errors_name_the_flag(addrs, default, kw, message):
    with pytest.raises(NodeIPError, match=message):
        choose_node_ip(addrs, default, **kw)


def test_flags_files_and_overlay_manifest(tmp_path):
    spec = NodeSpec("w1", "192.168.56.11", "eth0", tmp_path / "etc" / "kubelet.conf", etc_dir=tmp_path / "etc",
                    var_dir=tmp_path / "var", labels={"a": "b", "c": ""}, taints=["k:NoSchedule", "k2=v:NoExecute"])
    node.write_node_files(spec)
    rt = services.parse_flags(services.flags_path(spec.var_dir, services.RUNTIME).read_text())
    assert rt == [f"--root-dir={tmp_path / 'var'}", "--listen=unix:///run/kubelab/runtime.sock",
                  "--cgroup-parent=/kubelab/w1"]
    kl = services.parse_flags(services.flags_path(spec.var_dir, services.KUBELET).read_text())
    assert f"--config={tmp_path / 'etc' / 'kubelet.conf'}" in kl and "--node-name=w1" in kl
    assert "--node-ip=192.168.56.11" in kl and f"--manifest-dir={tmp_path / 'etc' / 'manifests'}" in kl
    assert "--container-runtime-endpoint=unix:///run/kubelab/runtime.sock" in kl and "--node-labels=a=b,c=" in kl
    assert "--register-with-taints=k:NoSchedule,k2=v:NoExecute" in kl
    assert Path(tmp_path / "etc" / "manifests" / "kube-overlay.yaml").exists()
