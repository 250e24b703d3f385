"""worker/proxy/rules.py and model.py: the exact chains and rules kube-proxy's iptables mode
writes, from plain service ports and endpoints (and from v1 Services and EndpointSlices)."""
from __future__ import annotations

import re

from kubelab.api.v1 import objects_pb2 as v1
from worker.proxy import rules as rl
from worker.proxy.model import (
    Endpoint,
    ProxyState,
    ServicePort,
    build_state,
    service_ports,
    slice_endpoints,
)

CIDR = "10.244.0.0/16"
WEB = ServicePort("ns", "web", "http", "TCP", "10.96.0.20", 80)
EPS = [Endpoint("10.244.1.2", 8080, "n1"), Endpoint("10.244.2.2", 8080, "n2"), Endpoint("10.244.2.3", 8080, "n2")]


def lines(text: str, prefix: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith(prefix)]


def table(text: str, name: str) -> str:
    return text.split(f"*{name}\n", 1)[1].split("COMMIT\n", 1)[0]


def test_chain_names_are_kube_proxys_hashes():
    # the names every Kubernetes cluster shows for these service ports
    k8s = ServicePort("default", "kubernetes", "https", "TCP", "10.96.0.1", 443)
    dns = ServicePort("kube-system", "kube-dns", "dns", "UDP", "10.96.0.10", 53)
    assert rl.svc_chain(k8s) == "KUBE-SVC-NPX46M4PTMTKRN6Y"
    assert rl.svc_chain(dns) == "KUBE-SVC-TCOU7JCQXEZGVUNU"
    assert rl.ext_chain(k8s) == "KUBE-EXT-NPX46M4PTMTKRN6Y"
    assert re.fullmatch(r"KUBE-SEP-[A-Z2-7]{16}", rl.sep_chain(k8s, Endpoint("192.168.56.10", 6443)))
    assert rl.sep_chain(k8s, Endpoint("10.0.0.1", 1)) != rl.sep_chain(k8s, Endpoint("10.0.0.2", 1))


def test_cluster_ip_service_chains_and_probabilities():
    text = rl.build(ProxyState([WEB], {WEB.key: EPS}), cluster_cidr=CIDR).text
    svc = rl.svc_chain(WEB)
    seps = [rl.sep_chain(WEB, e) for e in EPS]
    nat = table(text, "nat")
    assert lines(nat, "-A KUBE-SERVICES") == [
        f'-A KUBE-SERVICES -m comment --comment "ns/web:http cluster IP" -m tcp -p tcp -d 10.96.0.20 --dport 80 -j {svc}',
        '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in '
        'this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS']
    assert lines(nat, f"-A {svc}") == [
        f'-A {svc} -m comment --comment "ns/web:http cluster IP" -m tcp -p tcp -d 10.96.0.20 --dport 80 '
        f'! -s {CIDR} -j KUBE-MARK-MASQ',
        f'-A {svc} -m comment --comment "ns/web:http -> 10.244.1.2:8080" -m statistic --mode random '
        f'--probability 0.3333333333 -j {seps[0]}',
        f'-A {svc} -m comment --comment "ns/web:http -> 10.244.2.2:8080" -m statistic --mode random '
        f'--probability 0.5000000000 -j {seps[1]}',
        f'-A {svc} -m comment --comment "ns/web:http -> 10.244.2.3:8080" -j {seps[2]}']
    for ep, sep in zip(EPS, seps):
        assert lines(nat, f"-A {sep}") == [
            f"-A {sep} -m comment --comment ns/web:http -s {ep.ip} -j KUBE-MARK-MASQ",  # hairpin
            f"-A {sep} -m comment --comment ns/web:http -m tcp -p tcp -j DNAT --to-destination {ep.ip}:8080"]
    for chain in (svc, *seps, *rl.NAT_CHAINS):
        assert f":{chain} - [0:0]" in nat
    assert lines(nat, "-A KUBE-MARK-MASQ") == ["-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000"]
    assert lines(nat, "-A KUBE-POSTROUTING") == [
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
        '-j MASQUERADE --random-fully']
    assert "KUBE-NODEPORTS -m" not in nat  # no NodePort rules for a ClusterIP service


def test_probabilities_are_one_over_the_endpoints_left():
    eps = [Endpoint(f"10.244.0.{i}", 80) for i in range(1, 6)]
    nat = rl.build(ProxyState([WEB], {WEB.key: eps})).text
    probs = re.findall(r"--probability (\S+)", nat)
    assert probs == ["0.2000000000", "0.2500000000", "0.3333333333", "0.5000000000"]
    one = rl.build(ProxyState([WEB], {WEB.key: eps[:1]})).text
    assert "statistic" not in one


def test_no_cluster_cidr_means_no_masquerade_rule_in_the_service_chain():
    nat = table(rl.build(ProxyState([WEB], {WEB.key: EPS})).text, "nat")
    assert "! -s" not in nat


def test_node_port_goes_through_kube_nodeports_and_masquerades():
    np = ServicePort("ns", "np", "", "TCP", "10.96.0.21", 81, 30081)
    nat = table(rl.build(ProxyState([np], {np.key: EPS[:1]}), cluster_cidr=CIDR).text, "nat")
    ext, svc = rl.ext_chain(np), rl.svc_chain(np)
    assert lines(nat, "-A KUBE-NODEPORTS") == [
        f"-A KUBE-NODEPORTS -m comment --comment ns/np -m tcp -p tcp --dport 30081 -j {ext}"]
    assert lines(nat, f"-A {ext}") == [
        f'-A {ext} -m comment --comment "masquerade traffic for ns/np external destinations" -j KUBE-MARK-MASQ',
        f"-A {ext} -j {svc}"]
    assert nat.splitlines()[-1].endswith("-j MASQUERADE --random-fully")
    services = lines(nat, "-A KUBE-SERVICES")
    assert services[-1].endswith("-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS")  # NodePorts last


def test_external_traffic_policy_local_uses_only_this_nodes_endpoints():
    np = ServicePort("ns", "loc", "", "TCP", "10.96.0.22", 80, 30082, external_local=True)
    nat = table(rl.build(ProxyState([np], {np.key: EPS}), cluster_cidr=CIDR, node_name="n2").text, "nat")
    svl = rl.local_chain(np)
    assert [ln.split()[-1] for ln in lines(nat, f"-A {svl}")] == [rl.sep_chain(np, EPS[1]), rl.sep_chain(np, EPS[2])]
    assert "KUBE-MARK-MASQ" not in lines(nat, f"-A {rl.ext_chain(np)} -j")[0]
    # a node without a local endpoint drops NodePort traffic instead of sending it elsewhere
    none = rl.build(ProxyState([np], {np.key: EPS[:1]}), cluster_cidr=CIDR, node_name="n2").text
    assert f":{svl}" not in none
    assert any("--dport 30082 -j DROP" in ln for ln in lines(table(none, "filter"), "-A KUBE-EXTERNAL-SERVICES"))


def test_client_ip_affinity_uses_recent():
    aff = ServicePort("ns", "aff", "", "TCP", "10.96.0.30", 80, affinity_timeout=600)
    nat = table(rl.build(ProxyState([aff], {aff.key: EPS[:2]})).text, "nat")
    svc = rl.svc_chain(aff)
    seps = [rl.sep_chain(aff, e) for e in EPS[:2]]
    rules = lines(nat, f"-A {svc}")
    assert rules[:2] == [
        f'-A {svc} -m comment --comment "ns/aff -> {e.address}" -m recent --name {s} --rcheck --seconds 600 --reap '
        f"-j {s}" for e, s in zip(EPS[:2], seps)]
    assert "statistic" in rules[2] and "statistic" not in rules[3]
    assert f"-m recent --set --name {seps[0]} -m tcp -p tcp -j DNAT --to-destination 10.244.1.2:8080" in nat


def test_udp_service():
    dns = ServicePort("kube-system", "kube-dns", "dns", "UDP", "10.96.0.10", 53)
    nat = table(rl.build(ProxyState([dns], {dns.key: [Endpoint("10.244.0.5", 53)]})).text, "nat")
    assert "-m udp -p udp -d 10.96.0.10 --dport 53 -j KUBE-SVC-TCOU7JCQXEZGVUNU" in nat
    assert "-m udp -p udp -j DNAT --to-destination 10.244.0.5:53" in nat


def test_service_without_endpoints_is_rejected_in_filter_and_has_no_nat_chain():
    np = ServicePort("ns", "empty", "", "TCP", "10.96.0.40", 80, 30090)
    text = rl.build(ProxyState([np], {np.key: []})).text
    assert rl.svc_chain(np) not in text
    assert lines(table(text, "filter"), "-A KUBE-SERVICES") == [
        '-A KUBE-SERVICES -m comment --comment "ns/empty has no endpoints" -m tcp -p tcp -d 10.96.0.40 --dport 80 '
        "-j REJECT --reject-with icmp-port-unreachable"]
    assert any("--dport 30090 -j REJECT" in ln for ln in lines(table(text, "filter"), "-A KUBE-EXTERNAL-SERVICES"))


SAVED = """# Generated by iptables-save
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-GONEGONEGONEGONE - [0:0]
:KUBE-SEP-GONEGONEGONEGONE - [0:0]
:KUBE-EXT-GONEGONEGONEGONE - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-SVC-GONEGONEGONEGONE -j KUBE-SEP-GONEGONEGONEGONE
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
COMMIT
"""


def test_hooks_added_once_duplicates_removed_stale_chains_deleted_others_untouched():
    text = rl.build(ProxyState([WEB], {WEB.key: EPS[:1]}), existing=rl.parse_save(SAVED)).text
    nat, filt = table(text, "nat"), table(text, "filter")
    # PREROUTING has its jump: not inserted again; OUTPUT has two: one goes
    assert lines(nat, "-I ") == ['-I POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING']
    assert lines(nat, "-D ") == ['-D OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES']
    assert lines(nat, "-X ") == [f"-X KUBE-{k}-GONEGONEGONEGONE" for k in ("EXT", "SEP", "SVC")]
    for k in ("EXT", "SEP", "SVC"):  # flushed before deleted (the SVC chain still jumps to the SEP)
        assert nat.index(f":KUBE-{k}-GONEGONEGONEGONE - [0:0]") < nat.index(f"-X KUBE-{k}-GONEGONEGONEGONE")
    assert "-I FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\"" not in filt
    assert "-I FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD" in filt
    # somebody else's chain and rules: never named
    assert "DOCKER" not in text
    for ln in text.splitlines():
        if ln.startswith((":", "-A ", "-X ")):
            assert ln.split()[0].lstrip(":") .startswith("KUBE-") or ln.split()[1].startswith("KUBE-"), ln
    built_ins = {ln.split()[1] for ln in text.splitlines() if ln.startswith(("-I ", "-D "))}
    assert built_ins <= {"PREROUTING", "OUTPUT", "POSTROUTING", "INPUT", "FORWARD"}


def test_second_build_over_its_own_result_adds_no_hooks():
    first = rl.build(ProxyState([WEB], {WEB.key: EPS}))
    # what iptables-save prints after the first restore: our hooks appended to the built-ins
    saved = []
    for tbl in ("nat", "filter"):
        saved.append(f"*{tbl}")
        body = table(first.text, tbl)
        saved += [ln.replace("-I ", "-A ", 1) if ln.startswith("-I ") else ln for ln in body.splitlines()]
        saved.append("COMMIT")
    again = rl.build(ProxyState([WEB], {WEB.key: EPS}), existing=rl.parse_save("\n".join(saved))).text
    assert lines(again, "-I ") == [] and lines(again, "-D ") == [] and lines(again, "-X ") == []


# ---- from the API's objects

def svc(name="web", ip="10.96.0.20", ports=(("http", 80, "TCP", 0),), type_="ClusterIP", affinity="") -> v1.Service:
    s = v1.Service()
    s.metadata.name, s.metadata.namespace = name, "ns"
    s.spec.clusterIP, s.spec.type = ip, type_
    if affinity:
        s.spec.sessionAffinity = affinity
    for n, port, proto, node_port in ports:
        s.spec.ports.add(name=n, port=port, protocol=proto, nodePort=node_port)
    return s


def eslice(name, service, port_name, port, endpoints, proto="TCP") -> v1.EndpointSlice:
    s = v1.EndpointSlice(addressType="IPv4")
    s.metadata.name, s.metadata.namespace = name, "ns"
    s.metadata.labels["kubernetes.io/service-name"] = service
    s.ports.add(name=port_name, port=port, protocol=proto)
    for ip, ready, terminating in endpoints:
        e = s.endpoints.add(addresses=[ip], nodeName="n1")
        if ready is not None:
            e.conditions.ready = ready
        if terminating is not None:
            e.conditions.terminating = terminating
            e.conditions.serving = True
    return s


def test_service_ports_from_services():
    assert service_ports(svc(ip="None")) == [] and service_ports(svc(ip="")) == []
    [p] = service_ports(svc(type_="NodePort", ports=(("http", 80, "", 30001),), affinity="ClientIP"))
    assert (p.key, p.protocol, p.node_port, p.affinity_timeout) == ("ns/web:http", "TCP", 30001, 10800)
    [c] = service_ports(svc(ports=(("", 53, "UDP", 30002),)))
    assert (c.key, c.protocol, c.node_port) == ("ns/web", "UDP", 0)  # a ClusterIP service has no NodePort


def test_endpoints_from_slices_ready_only_merged_and_terminating_fallback():
    slices = [eslice("web-a", "web", "http", 8080, [("10.244.1.2", True, None), ("10.244.1.3", False, None),
                                                    ("10.244.1.4", None, None)]),
              eslice("web-b", "web", "http", 8080, [("10.244.1.2", True, None), ("10.244.2.9", True, None)]),
              eslice("other", "other", "http", 9090, [("10.244.3.3", True, None)])]
    st = build_state([svc()], slices)
    assert [e.address for e in st.endpoints["ns/web:http"]] == ["10.244.1.2:8080", "10.244.1.4:8080",
                                                                "10.244.2.9:8080"]
    assert [p.key for p in st.ports] == ["ns/web:http"]
    draining = [eslice("web-a", "web", "http", 8080, [("10.244.1.2", False, True)])]
    assert [e.ip for e in build_state([svc()], draining).endpoints["ns/web:http"]] == ["10.244.1.2"]
    wrong_port = [eslice("web-a", "web", "metrics", 9100, [("10.244.1.2", True, None)])]
    assert build_state([svc()], wrong_port).endpoints["ns/web:http"] == []
    assert slice_endpoints([eslice("x", "", "http", 80, [("10.0.0.1", True, None)])]) == {}
