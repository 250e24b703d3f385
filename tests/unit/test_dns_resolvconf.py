"""The pod's /etc/resolv.conf by dnsPolicy (worker/kubelet/dns.py), against a node resolv.conf
written into the test's own directory."""
from __future__ import annotations

import pytest

from kubelab.api.v1 import objects_pb2 as v1
from worker.kubelet.cmd import parse_cluster_dns
from worker.kubelet.dns import DNSConfigurer, parse_resolv_conf

NODE = "# the node's\ndomain lab.internal\nnameserver 192.168.78.1\nnameserver 192.168.78.2\noptions edns0 ndots:1\n"


def pod(policy="", *, ns="shop", host_network=False, dns_config=None):
    p = v1.Pod()
    p.metadata.name, p.metadata.namespace, p.metadata.uid = "web", ns, "u1"
    p.spec.dnsPolicy = policy
    p.spec.hostNetwork = host_network
    if dns_config is not None:
        p.spec.dnsConfig.CopyFrom(dns_config)
    return p


@pytest.fixture
def node_resolv(tmp_path):
    f = tmp_path / "resolv.conf"
    f.write_text(NODE)
    return f


def test_cluster_first(node_resolv):
    rc, events = DNSConfigurer(cluster_dns=["10.79.0.10"], resolv_conf=node_resolv).pod_config(pod("ClusterFirst"))
    assert rc.render() == ("search shop.svc.cluster.local svc.cluster.local cluster.local lab.internal\n"
                           "nameserver 10.79.0.10\noptions ndots:5\n")
    assert events == []


def test_unset_policy_is_cluster_first_and_domain_is_configurable(node_resolv):
    rc, _ = DNSConfigurer(cluster_dns=["10.79.0.10"], cluster_domain="kube.test",
                          resolv_conf=node_resolv).pod_config(pod(""))
    assert rc.searches[:3] == ["shop.svc.kube.test", "svc.kube.test", "kube.test"]


def test_default_is_the_nodes(node_resolv):
    rc, _ = DNSConfigurer(cluster_dns=["10.79.0.10"], resolv_conf=node_resolv).pod_config(pod("Default"))
    assert (rc.nameservers, rc.searches, rc.options) == (["192.168.78.1", "192.168.78.2"], ["lab.internal"],
                                                         ["edns0", "ndots:1"])


def test_host_network_gets_default_unless_cluster_first_with_host_net(node_resolv):
    c = DNSConfigurer(cluster_dns=["10.79.0.10"], resolv_conf=node_resolv)
    assert c.pod_config(pod("ClusterFirst", host_network=True))[0].nameservers == ["192.168.78.1", "192.168.78.2"]
    assert c.pod_config(pod("ClusterFirstWithHostNet", host_network=True))[0].nameservers == ["10.79.0.10"]


def test_none_takes_only_dns_config(node_resolv):
    cfg = v1.PodDNSConfig(nameservers=["1.2.3.4"], searches=["my.dns.search.suffix"],
                          options=[v1.PodDNSConfigOption(name="ndots", value="2"), v1.PodDNSConfigOption(name="edns0")])
    rc, _ = DNSConfigurer(cluster_dns=["10.79.0.10"], resolv_conf=node_resolv).pod_config(pod("None", dns_config=cfg))
    assert rc.render() == "search my.dns.search.suffix\nnameserver 1.2.3.4\noptions ndots:2 edns0\n"


def test_dns_config_merges_into_cluster_first(node_resolv):
    cfg = v1.PodDNSConfig(nameservers=["10.79.0.10", "1.2.3.4"], searches=["svc.cluster.local", "extra"],
                          options=[v1.PodDNSConfigOption(name="ndots", value="2"),
                                   v1.PodDNSConfigOption(name="single-request")])
    rc, _ = DNSConfigurer(cluster_dns=["10.79.0.10"], resolv_conf=node_resolv).pod_config(pod(dns_config=cfg))
    assert rc.nameservers == ["10.79.0.10", "1.2.3.4"]  # duplicates dropped
    assert rc.searches == ["shop.svc.cluster.local", "svc.cluster.local", "cluster.local", "lab.internal", "extra"]
    assert rc.options == ["ndots:2", "single-request"]  # the pod's ndots overrides the default


def test_without_cluster_dns_cluster_first_falls_back_with_a_warning(node_resolv):
    rc, events = DNSConfigurer(resolv_conf=node_resolv).pod_config(pod("ClusterFirst"))
    assert rc.nameservers == ["192.168.78.1", "192.168.78.2"] and "ndots:5" not in rc.options
    assert [r for r, _ in events] == ["MissingClusterDNS"]
    assert 'Falling back to "Default" policy' in events[0][1]


def test_limits_cut_with_an_event(node_resolv):
    cfg = v1.PodDNSConfig(nameservers=["1.1.1.1", "2.2.2.2", "3.3.3.3"], searches=[f"s{i}.example" for i in range(40)])
    rc, events = DNSConfigurer(cluster_dns=["10.79.0.10"], resolv_conf=node_resolv).pod_config(pod(dns_config=cfg))
    assert rc.nameservers == ["10.79.0.10", "1.1.1.1", "2.2.2.2"]
    assert len(rc.searches) == 32
    assert [r for r, _ in events] == ["DNSConfigForming", "DNSConfigForming"]
    assert "the applied nameserver line is: 10.79.0.10 1.1.1.1 2.2.2.2" in events[0][1]


def test_parse_resolv_conf_last_search_wins_and_comments():
    rc = parse_resolv_conf("search a b ; trailing\nsearch c\nnameserver 9.9.9.9 # here\n;nameserver 8.8.8.8\n")
    assert (rc.nameservers, rc.searches) == (["9.9.9.9"], ["c"])


def test_no_node_resolv_conf(tmp_path):
    rc, _ = DNSConfigurer(resolv_conf=tmp_path / "missing").pod_config(pod("Default"))
    assert rc.render() == ""
    rc, _ = DNSConfigurer(resolv_conf="").pod_config(pod("Default"))
    assert rc.nameservers == ["127.0.0.1"]


def test_cluster_dns_flag():
    assert parse_cluster_dns("10.96.0.10, 10.96.0.11") == ["10.96.0.10", "10.96.0.11"]
    from kubelab.cli.common import CLIError
    with pytest.raises(CLIError, match='invalid --cluster-dns "10.96.0"'):
        parse_cluster_dns("10.96.0")
