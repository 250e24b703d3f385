"""Cluster DNS on the lab: init's kube-dns static pod on the master's pod network behind the
Service kube-system/kube-dns (the tenth service address), the kubelets' ClusterFirst
resolv.conf on every node, and names resolved by the pods' own resolver (busybox's wget and
nslookup) across nodes: a headless service by its short name through the search path, by its
full name, an endpoint's hostname, SRV, NXDOMAIN, and a ClusterIP service's name answering its
ClusterIP.

One pod asks the DNS pod's IP directly (dnsPolicy None naming it), which needs only the
overlay; another keeps ClusterFirst and so asks the Service's ClusterIP, through kube-proxy."""
from __future__ import annotations

import ipaddress

from .conftest import MASTER, SERVICE_CIDR, W1, W2, wait_for

NS = "dnslab"
DNS_IP = str(ipaddress.ip_network(SERVICE_CIDR)[10])
SEARCH = f"{NS}.svc.cluster.local svc.cluster.local cluster.local"


def kube_dns_pod_ip(lab) -> str:
    p = lab.wait_running(f"kube-dns-{MASTER}", "kube-system")
    return p["status"]["podIP"]


def test_kube_dns_pod_and_service(lab):
    ip = kube_dns_pod_ip(lab)
    pod = lab.pod(f"kube-dns-{MASTER}", "kube-system")
    assert pod["metadata"]["labels"].get("k8s-app") == "kube-dns"
    assert ip != pod["status"].get("hostIP"), "kube-dns must be on the pod network, not hostNetwork"
    svc = lab.json("get", "svc", "kube-dns", "-n", "kube-system")
    assert svc["spec"]["clusterIP"] == DNS_IP
    assert sorted((p["name"], p["protocol"], p["port"]) for p in svc["spec"]["ports"]) == [
        ("dns", "UDP", 53), ("dns-tcp", "TCP", 53)]
    wait_for("kube-dns's endpoints list the DNS pod",
             lambda: ip in lab.kl("get", "endpoints", "kube-dns", "-n", "kube-system").stdout, 60)


CLIENTS = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {NS}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: srv, namespace: {NS}, labels: {{app: web}}}}
spec:
  nodeName: {W2}
  terminationGracePeriodSeconds: 1
  hostname: srv-0
  subdomain: web
  containers:
  - name: web
    image: busybox
    imagePullPolicy: IfNotPresent
    command: [sh, -c, "mkdir -p /www; echo from-srv > /www/index.html; exec httpd -f -p 8080 -h /www"]
    ports: [{{name: http, containerPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {NS}}}
spec:
  clusterIP: None
  selector: {{app: web}}
  ports: [{{name: http, port: 8080, targetPort: http}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web-cip, namespace: {NS}}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: http}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: plain, namespace: {NS}}}
spec:
  nodeName: {W1}
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: c, image: busybox, imagePullPolicy: IfNotPresent, command: [sh, -c, "exec sleep 100000"]}}
"""

ASKER = """
apiVersion: v1
kind: Pod
metadata: {{name: asker, namespace: {ns}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  dnsPolicy: None
  dnsConfig:
    nameservers: [{ip}]
    searches: [{ns}.svc.cluster.local, svc.cluster.local, cluster.local]
    options: [{{name: ndots, value: "5"}}]
  containers:
  - {{name: c, image: busybox, imagePullPolicy: IfNotPresent, command: [sh, -c, "exec sleep 100000"]}}
"""


def test_names_resolve_from_pods_across_nodes(lab):
    dns_pod = kube_dns_pod_ip(lab)
    lab.apply(CLIENTS)
    lab.apply(ASKER.format(ns=NS, node=W1, ip=dns_pod))
    try:
        for name in ("srv", "plain", "asker"):
            lab.wait_running(name, NS)
        # ClusterFirst on a worker: the kubelet's --cluster-dns from join
        rc = lab.kl("exec", "plain", "-n", NS, "--", "cat", "/etc/resolv.conf").stdout
        assert rc == f"search {SEARCH}\nnameserver {DNS_IP}\noptions ndots:5\n", rc

        def asker(*cmd):
            return lab.kl("exec", "asker", "-n", NS, "--", *cmd, check=False, timeout=30)
        # the short name through the search path, the full name, the endpoint's hostname
        for url in ("http://web:8080/", f"http://web.{NS}.svc.cluster.local:8080/", "http://srv-0.web:8080/"):
            wait_for(f"{url} answers from the pod on {W2}",
                     lambda url=url: "from-srv" in asker("wget", "-qO-", "-T", "3", url).stdout, 60)
        srv = asker("nslookup", "-type=SRV", f"_http._tcp.web.{NS}.svc.cluster.local").stdout
        assert f"0 100 8080 srv-0.web.{NS}.svc.cluster.local" in srv, srv
        # a ClusterIP service: its name is the ClusterIP (not the pod's IP), short name too
        cip = lab.json("get", "svc", "web-cip", "-n", NS)["spec"]["clusterIP"]
        srv_ip = lab.pod("srv", NS)["status"]["podIP"]
        for name in (f"web-cip.{NS}.svc.cluster.local", "web-cip"):
            got = asker("nslookup", name).stdout
            assert f"Address: {cip}\n" in got and srv_ip not in got, (name, got)
        missing = asker("nslookup", f"nosuch.{NS}.svc.cluster.local")
        assert missing.returncode != 0 and "NXDOMAIN" in missing.stdout + missing.stderr, missing
        # ClusterFirst: the short name through kube-dns's ClusterIP (kube-proxy's DNAT to the
        # DNS pod on the master), as every ordinary pod resolves
        # and the ClusterIP service by its short name: DNS through one ClusterIP, HTTP through another
        for url in ("http://web:8080/", "http://web-cip/"):
            wait_for(f"{url} from {W1} through the Service {DNS_IP}",
                     lambda url=url: "from-srv" in lab.kl("exec", "plain", "-n", NS, "--", "wget", "-qO-", "-T", "5",
                                                          url, check=False, timeout=30).stdout, 60)
    finally:
        lab.kl("delete", "ns", NS, "--timeout", "120s", check=False, timeout=150)
