"""kube-proxy's nat rules read back from `iptables-save -c -t nat`, as pure functions over its
text: the rules of every chain with their packet counters, and the summary per service that
`net show` prints (KUBE-SERVICES -> KUBE-SVC-* -> KUBE-SEP-* with each endpoint's share of the
traffic, KUBE-NODEPORTS). Nothing here asks the API: what kube-proxy wrote is what the kernel
applies, whatever the Service objects say.

The chain names and the shapes are kube-proxy's iptables mode (Kubernetes' names, which
worker/proxy writes): a KUBE-SERVICES rule per service port matches the ClusterIP and port and
jumps to KUBE-SVC-<hash>; that chain picks one KUBE-SEP-<hash> per endpoint with
`-m statistic --mode random --probability P` (1/n, 1/(n-1), ..., the last rule unconditional),
and each KUBE-SEP chain DNATs to its endpoint. KUBE-NODEPORTS matches a node port and jumps to
KUBE-EXT-<hash> (or straight to the KUBE-SVC chain), which ends in the same KUBE-SVC chain.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

_COUNTERS = re.compile(r"^\[(\d+):(\d+)\]\s+")
PROXY_CHAIN = re.compile(r"^KUBE-(SVC|SVL|EXT|FW|SEP)-[A-Z2-7]+$")


@dataclass
class Rule:
    chain: str
    args: dict[str, str]     # option -> value ("-d", "-p", "--dport", "--comment", "-j", ...)
    negated: set[str] = field(default_factory=set)
    packets: int = 0
    bytes: int = 0
    text: str = ""

    @property
    def target(self) -> str:
        return self.args.get("-j", "") or self.args.get("-g", "")


@dataclass
class NatTable:
    chains: dict[str, list[Rule]]
    filter: dict[str, list[Rule]] = field(default_factory=dict)  # the filter table of the same dump

    def rules(self, chain: str) -> list[Rule]:
        return self.chains.get(chain, [])

    @property
    def has_proxy(self) -> bool:
        return "KUBE-SERVICES" in self.chains


def parse_rule(line: str) -> Rule | None:
    """One `-A CHAIN ...` line (with or without its [packets:bytes] prefix), else None."""
    packets = nbytes = 0
    m = _COUNTERS.match(line)
    if m:
        packets, nbytes = int(m.group(1)), int(m.group(2))
        line = line[m.end():]
    try:
        words = shlex.split(line)
    except ValueError:
        return None
    if len(words) < 2 or words[0] != "-A":
        return None
    args: dict[str, str] = {}
    negated: set[str] = set()
    i, neg = 2, False
    while i < len(words):
        w = words[i]
        if w == "!":
            neg = True
        elif w.startswith("-"):
            value = ""
            if i + 1 < len(words) and not words[i + 1].startswith("-") and words[i + 1] != "!":
                value = words[i + 1]
                i += 1
            if w == "--comment" and "--comment" in args:
                value = args["--comment"] + "; " + value
            args[w] = value
            if neg:
                negated.add(w)
            neg = False
        i += 1
    return Rule(chain=words[1], args=args, negated=negated, packets=packets, bytes=nbytes, text=line.strip())


def parse(text: str) -> NatTable:
    """The nat table (and the filter table, for services without endpoints, which kube-proxy
    rejects there) of an `iptables-save [-c]` dump; other tables are skipped."""
    tables: dict[str, dict[str, list[Rule]]] = {"nat": {}, "filter": {}}
    chains: dict[str, list[Rule]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("*"):
            chains = tables.get(line[1:])
        elif chains is None or not line or line.startswith("#") or line == "COMMIT":
            continue
        elif line.startswith(":"):
            chains.setdefault(line[1:].split()[0], [])
        else:
            rule = parse_rule(line)
            if rule is not None:
                chains.setdefault(rule.chain, []).append(rule)
    return NatTable(tables["nat"], tables["filter"])


# ---- the per-service summary

@dataclass
class Endpoint:
    address: str          # IP:port the KUBE-SEP chain DNATs to
    chain: str            # KUBE-SEP-...
    share: float          # of the service port's new connections, 0..1
    packets: int = 0      # of its DNAT rule


@dataclass
class ServicePort:
    name: str             # ns/svc:port, from kube-proxy's comment
    cluster_ip: str
    port: str
    protocol: str
    chain: str            # KUBE-SVC-... ("" when it has no endpoints: a filter REJECT instead)
    endpoints: list[Endpoint]
    node_port: str = ""
    affinity: bool = False  # sessionAffinity ClientIP: `-m recent --rcheck` rules come first


def _service_name(rule: Rule) -> str:
    comment = rule.args.get("--comment", "")
    return comment.split()[0] if comment else ""


def endpoints(table: NatTable, chain: str, _seen: frozenset[str] = frozenset()) -> list[Endpoint]:
    """The KUBE-SEP endpoints a KUBE-SVC/SVL/EXT chain ends in, each with its share: a rule with
    probability p takes p of what the rules above it left, an unconditional one all the rest."""
    if chain in _seen:
        return []
    out: list[Endpoint] = []
    left = 1.0
    for rule in table.rules(chain):
        target = rule.target
        if "--rcheck" in rule.args:
            continue  # ClientIP affinity: a client seen before goes back to its endpoint
        if target.startswith("KUBE-SEP-"):
            p = float(rule.args.get("--probability", "1") or 1)
            share, left = left * p, left * (1 - p)
            dnat = next((r for r in table.rules(target) if r.target == "DNAT"), None)
            addr = dnat.args.get("--to-destination", "?") if dnat else "?"
            out.append(Endpoint(addr, target, share, dnat.packets if dnat else 0))
            if "--probability" not in rule.args:
                break  # nothing below an unconditional jump is reached
        elif PROXY_CHAIN.match(target) and target != chain and "-s" not in rule.args:
            # KUBE-EXT -> KUBE-SVC (the masquerade rules above it only mark)
            out.extend(endpoints(table, target, _seen | {chain}))
    return out


def services(table: NatTable) -> list[ServicePort]:
    """Every service port kube-proxy programmed, in KUBE-SERVICES' order, with its node port."""
    found: dict[str, ServicePort] = {}
    for rule in table.rules("KUBE-SERVICES"):
        target = rule.target
        if not PROXY_CHAIN.match(target) or "-d" not in rule.args:
            continue
        chain = target
        if target.startswith("KUBE-FW-"):  # load balancer IPs: not this lab's, but follow them
            continue
        found.setdefault(chain, ServicePort(
            name=_service_name(rule) or chain, cluster_ip=rule.args["-d"].removesuffix("/32"),
            port=rule.args.get("--dport", ""), protocol=rule.args.get("-p", "").upper(),
            chain=chain, endpoints=endpoints(table, chain),
            affinity=any("--rcheck" in r.args for r in table.rules(chain))))
    for rule in table.rules("KUBE-NODEPORTS"):
        target = rule.target
        if not PROXY_CHAIN.match(target):
            continue
        svc_chain = _svc_chain_of(table, target)
        sp = found.get(svc_chain) if svc_chain else None
        if sp is None:
            sp = found.setdefault(target, ServicePort(
                name=_service_name(rule) or target, cluster_ip="", port="",
                protocol=rule.args.get("-p", "").upper(), chain=target, endpoints=endpoints(table, target)))
        sp.node_port = rule.args.get("--dport", "")
    for rule in table.filter.get("KUBE-SERVICES", []):
        comment = rule.args.get("--comment", "")
        if rule.target == "REJECT" and comment.endswith(" has no endpoints") and "-d" in rule.args:
            found.setdefault(f"reject {comment}", ServicePort(
                name=comment.split()[0], cluster_ip=rule.args["-d"].removesuffix("/32"),
                port=rule.args.get("--dport", ""), protocol=rule.args.get("-p", "").upper(), chain="",
                endpoints=[]))
    return list(found.values())


def _svc_chain_of(table: NatTable, chain: str) -> str:
    if chain.startswith(("KUBE-SVC-", "KUBE-SVL-")):
        return chain
    for rule in table.rules(chain):
        if rule.target.startswith(("KUBE-SVC-", "KUBE-SVL-")):
            return rule.target
    return ""


def chain_counts(table: NatTable) -> dict[str, int]:
    """How many chains of each kube-proxy kind there are (KUBE-SVC: 3, KUBE-SEP: 6, ...)."""
    counts: dict[str, int] = {}
    for name in table.chains:
        m = PROXY_CHAIN.match(name)
        if m:
            counts[f"KUBE-{m.group(1)}"] = counts.get(f"KUBE-{m.group(1)}", 0) + 1
    return counts


def dnat_packets(table: NatTable) -> dict[str, tuple[str, int]]:
    """KUBE-SEP chain -> (the endpoint it DNATs to, its DNAT rule's packet counter): compared
    before and after a probe, the one that grew is the endpoint kube-proxy chose."""
    out = {}
    for chain, rules in table.chains.items():
        if chain.startswith("KUBE-SEP-"):
            for r in rules:
                if r.target == "DNAT":
                    out[chain] = (r.args.get("--to-destination", "?"), r.packets)
    return out


def fmt_share(share: float) -> str:
    return f"{share * 100:.1f}%"
