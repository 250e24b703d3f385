"""What kubeadm/ does for cluster DNS: the kube-dns static pod (read back through the kubelet's
manifest parser, its command through `kubelab dns`'s own flags), the Service init creates, the
kubelets' --cluster-dns, and the addon phase's place."""
from __future__ import annotations

from pathlib import Path

import yaml

from addons.dns.cmd import flag_error
from kubeadm import init, manifests, node
from kubelab.cli.manifest import parse_doc

from .test_kubeadm_manifests import parse_argv

CONF = Path("/etc/kubelab/kubelet.conf")


def test_dns_pod_is_on_the_pod_network_with_the_nodes_credentials():
    pod = parse_doc(yaml.safe_load(manifests.to_yaml(manifests.dns_pod(kubelet_conf=CONF))), "kube-dns.yaml", 1)
    assert (pod.metadata.name, pod.metadata.namespace) == ("kube-dns", "kube-system")
    assert dict(pod.metadata.labels) == {"k8s-app": "kube-dns"}
    assert not pod.spec.hostNetwork and pod.spec.dnsPolicy == "Default"
    c = pod.spec.containers[0]
    assert sorted((p.name, p.protocol, p.containerPort) for p in c.ports) == [("dns", "UDP", 53), ("dns-tcp", "TCP", 53)]
    assert {m.mountPath: m.readOnly for m in c.volumeMounts}[str(CONF)] is True
    args = parse_argv(list(c.command))
    assert (args.command, args.config, args.listen, args.cluster_domain) == ("dns", str(CONF), "0.0.0.0:53",
                                                                               "cluster.local")
    assert flag_error(args) is None and args.upstream == []  # never forwards unless told


def test_dns_service_ip_is_the_tenth_address():
    assert node.dns_service_ip("10.96.0.0/12") == "10.96.0.10"
    assert node.dns_service_ip("10.79.0.0/16") == "10.79.0.10"


def test_the_service_init_creates():
    svc = init.dns_service("10.79.0.0/16")
    assert (svc.metadata.name, svc.metadata.namespace) == ("kube-dns", "kube-system")
    assert (svc.spec.clusterIP, list(svc.spec.clusterIPs)) == ("10.79.0.10", ["10.79.0.10"])
    assert dict(svc.spec.selector) == {"k8s-app": "kube-dns"}
    assert [(p.name, p.protocol, p.port, p.targetPort.number_value) for p in svc.spec.ports] == [
        ("dns", "UDP", 53, 53), ("dns-tcp", "TCP", 53, 53)]


def test_kubelet_flags_carry_the_cluster_dns():
    spec = node.NodeSpec(node_name="w1", node_ip="192.168.78.11", iface="eth0", kubelet_conf=CONF,
                         cluster_dns="10.79.0.10")
    flags = node.kubelet_flags(spec)
    assert (flags["cluster-dns"], flags["cluster-domain"]) == ("10.79.0.10", "cluster.local")
    argv = ["--" + k if not v else f"--{k}={v}" for k, v in flags.items()]
    from worker.kubelet.cmd import parse_cluster_dns
    assert parse_cluster_dns(parse_argv(manifests.python_argv("kubelet", *argv)).cluster_dns) == ["10.79.0.10"]
    spec.cluster_dns = ""
    assert "cluster-dns" not in node.kubelet_flags(spec)


def test_a_joining_node_without_a_cluster_to_ask_runs_without_cluster_dns(tmp_path):
    assert node.cluster_dns_from_config(tmp_path / "no-such.conf") == ("", "cluster.local")


def test_addon_phase_comes_last():
    names = [p.name for p in init.init_phases(init.InitOptions(node_name="m"))]
    assert names[-1] == "addon" and names.index("addon") > names.index("wait-control-plane")
