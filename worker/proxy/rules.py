"""kube-proxy's iptables mode as one pure function: (service ports, endpoints, cluster CIDR,
what iptables-save shows now) -> the text of one `iptables-restore --noflush`.

Only kube-proxy's own chains are written. Each of them is declared (`:CHAIN - [0:0]`, which
flushes it under --noflush) and refilled whole, so a sync never depends on the previous one and a
restarted proxy leaves no duplicates. Per-service chains (KUBE-SVC-*, KUBE-SEP-*, KUBE-EXT-*, and
the KUBE-SVL-*/KUBE-FW-* shapes of older versions) found in the kernel but no longer wanted are
flushed and deleted in the same restore. The jumps from the built-in chains are the only rules
outside our chains: each is inserted when missing and a duplicate is deleted, nothing else in a
built-in chain is touched.

Partial syncs (kube-proxy's minimizeIPTablesRestore): with `only` (service port keys), only those
service ports' own chains are declared and refilled; KUBE-SERVICES, KUBE-NODEPORTS and the other
fixed chains are still written whole, and every other service port's chains are taken to be in the
kernel as the previous sync left them (the caller's `existing` says which chains are there).

The nf_tables backend's speed (iptables-nft 1.8.9): under --noflush every command naming a chain
inserts that name into a sorted linked list of chains to fetch (nft-cache.c), so a restore of N
commands over C chains costs N*C/2 strcmp calls: 18 s of CPU for 1,000 services x 10 endpoints. A
command naming no chain (`-S`, list the table) makes that request "all chains" and the later
inserts return at once; so the nft layout puts the fixed chains and the hooks first, then `-S`
(its listing goes to stdout, which the caller drops), then the per-service chains.

nat table (as REFERENCE.md and kube-proxy):
  PREROUTING, OUTPUT -> KUBE-SERVICES: per service port `-d clusterIP --dport port -j KUBE-SVC-X`,
      last `-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS`
  KUBE-SVC-X: `! -s clusterCIDR -j KUBE-MARK-MASQ` (traffic from outside the pod network is
      masqueraded, so replies come back through this node), ClientIP affinity (`-m recent
      --rcheck`) first, then endpoint i of n with `-m statistic --mode random --probability
      1/(n-i)`, the last unconditional
  KUBE-SEP-Y: `-s podIP -j KUBE-MARK-MASQ` (hairpin: a pod reaching itself through its service
      must see the node as the source), then DNAT to ip:port (`-m recent --set` with affinity)
  KUBE-NODEPORTS: `--dport nodePort -j KUBE-EXT-X`; KUBE-EXT-X marks for masquerade and jumps
      to KUBE-SVC-X (externalTrafficPolicy Local: KUBE-SVL-X, the node's own endpoints, and the
      client's source kept)
  KUBE-MARK-MASQ sets 0x4000; KUBE-POSTROUTING (from POSTROUTING) masquerades marked packets
filter table:
  KUBE-SERVICES (from OUTPUT and FORWARD, new connections): REJECT a cluster IP with no endpoints
  KUBE-EXTERNAL-SERVICES (from INPUT and FORWARD): REJECT a NodePort with no endpoints
      (DROP for a Local one without local endpoints)
  KUBE-FORWARD (from FORWARD): accept what kube-proxy marked, and the replies to it, even where the
      FORWARD policy is DROP
"""
from __future__ import annotations

import base64
import functools
import hashlib
import re
from dataclasses import dataclass, field

from worker.proxy.model import Endpoint, ProxyState, ServicePort

MASQ_MARK = "0x4000"
# chains kube-proxy owns and rewrites on every sync, per table
NAT_CHAINS = ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ")
FILTER_CHAINS = ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD")
# per-service chain prefixes: any chain with one of these that is not wanted is deleted
PER_SERVICE = ("KUBE-SVC-", "KUBE-SEP-", "KUBE-EXT-", "KUBE-SVL-", "KUBE-FW-", "KUBE-XLB-")

# chains written past which the nft layout lists the table first (its cost is one iptables-save's;
# the sorted list's is chains x commands / 2 string compares)
LIST_ALL_OVER = 500

PORTALS = "kubernetes service portals"
# (table, built-in chain, the rule that jumps to our chain, as iptables-save prints it back)
HOOKS = (
    ("nat", "PREROUTING", f'-m comment --comment "{PORTALS}" -j KUBE-SERVICES'),
    ("nat", "OUTPUT", f'-m comment --comment "{PORTALS}" -j KUBE-SERVICES'),
    ("nat", "POSTROUTING", '-m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING'),
    ("filter", "INPUT", '-m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service '
                        'portals" -j KUBE-EXTERNAL-SERVICES'),
    ("filter", "FORWARD", '-m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD'),
    ("filter", "FORWARD", f'-m conntrack --ctstate NEW -m comment --comment "{PORTALS}" -j KUBE-SERVICES'),
    ("filter", "FORWARD", '-m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service '
                          'portals" -j KUBE-EXTERNAL-SERVICES'),
    ("filter", "OUTPUT", f'-m conntrack --ctstate NEW -m comment --comment "{PORTALS}" -j KUBE-SERVICES'),
)


@functools.lru_cache(maxsize=1 << 16)  # a sync names every chain again; most names are last sync's
def _hash(s: str) -> str:
    return base64.b32encode(hashlib.sha256(s.encode()).digest()).decode()[:16]


def svc_chain(sp: ServicePort) -> str:
    """KUBE-SVC- + 16 base32 characters of sha256(servicePortName + protocol), as kube-proxy names it
    (default/kubernetes:https over tcp is KUBE-SVC-NPX46M4PTMTKRN6Y on every cluster)."""
    return "KUBE-SVC-" + _hash(sp.key + sp.protocol.lower())


def ext_chain(sp: ServicePort) -> str:
    return "KUBE-EXT-" + _hash(sp.key + sp.protocol.lower())


def local_chain(sp: ServicePort) -> str:
    return "KUBE-SVL-" + _hash(sp.key + sp.protocol.lower())


def sep_chain(sp: ServicePort, ep: Endpoint) -> str:
    return "KUBE-SEP-" + _hash(sp.key + sp.protocol.lower() + ep.address)


# ---- what the kernel has now

@dataclass
class TableState:
    chains: set[str] = field(default_factory=set)
    rules: dict[str, list[str]] = field(default_factory=dict)  # chain -> rule specs after "-A CHAIN "


def parse_save(text: str) -> dict[str, TableState]:
    """iptables-save's output -> table -> its chains and rules (rule text as printed)."""
    tables: dict[str, TableState] = {}
    cur: TableState | None = None
    for line in text.splitlines():
        if line.startswith("*"):
            cur = tables.setdefault(line[1:].strip(), TableState())
        elif cur is None or not line or line.startswith("#") or line == "COMMIT":
            continue
        elif line.startswith(":"):
            cur.chains.add(line[1:].split()[0])
        elif line.startswith("-A "):
            chain, _, spec = line[3:].partition(" ")
            cur.rules.setdefault(chain, []).append(spec)
    return tables


_JUMP = re.compile(r"(?:^|\s)-j\s+(\S+)")


def _target(spec: str) -> str:
    m = _JUMP.search(spec)
    return m.group(1) if m else ""


def _normal(spec: str) -> str:
    """A rule's words in a canonical order, so that ours and iptables-save's printing of it compare
    equal (the save output reorders `-d`/`-p` before matches)."""
    return " ".join(sorted(re.findall(r'"[^"]*"|\S+', spec)))


# ---- the rules

def _q(comment: str) -> str:
    return f'"{comment}"'


def _proto(sp: ServicePort) -> str:
    p = sp.protocol.lower()
    return f"-m {p} -p {p}"


@dataclass
class Rules:
    """The restore text, and what went into it (for logs, `net show` and tests)."""
    text: str
    services: int = 0
    endpoints: int = 0
    deleted_chains: list[str] = field(default_factory=list)
    chains: dict[str, set[str]] = field(default_factory=dict)  # table -> our chains in the kernel after it
    written: int = 0  # service ports whose own chains this restore rewrote


def build(state: ProxyState, *, cluster_cidr: str = "", node_name: str = "",
          existing: dict[str, TableState] | None = None, only: set[str] | None = None,
          nft: bool = False) -> Rules:
    """The restore text; `only`: a partial sync writing just these service ports' own chains;
    `nft`: the layout that keeps iptables-nft-restore linear (see the module docstring)."""
    existing = existing or {}
    nat_chains: list[str] = list(NAT_CHAINS)
    kept: list[str] = []  # per-service chains left as they are (a partial sync)
    nat: list[str] = []
    filt: list[str] = []
    services = endpoints = written = 0
    for sp in sorted(state.ports):
        eps = state.endpoints.get(sp.key, [])
        svc = svc_chain(sp)
        if only is not None and sp.key not in only:
            # unchanged: only KUBE-SERVICES/KUBE-NODEPORTS/filter lines, its chains stay
            services, endpoints = services + bool(eps), endpoints + len(eps)
            kept += _skip(sp, eps, node_name, nat, filt)
            continue
        written += 1
        cluster = _q(f"{sp.key} cluster IP")
        if not eps:
            filt += _reject(sp)
            continue
        services += 1
        endpoints += len(eps)
        nat_chains.append(svc)
        nat.append(f"-A KUBE-SERVICES -m comment --comment {cluster} {_proto(sp)} -d {sp.cluster_ip} "
                   f"--dport {sp.port} -j {svc}")
        if cluster_cidr:
            nat.append(f"-A {svc} -m comment --comment {cluster} {_proto(sp)} -d {sp.cluster_ip} --dport {sp.port} "
                       f"! -s {cluster_cidr} -j KUBE-MARK-MASQ")
        seps = [sep_chain(sp, ep) for ep in eps]
        if sp.affinity_timeout:
            for ep, sep in zip(eps, seps):
                nat.append(f"-A {svc} -m comment --comment {_q(f'{sp.key} -> {ep.address}')} -m recent --name {sep} "
                           f"--rcheck --seconds {sp.affinity_timeout} --reap -j {sep}")
        nat += _balance(svc, sp, eps, seps)
        for ep, sep in zip(eps, seps):
            nat_chains.append(sep)
            nat.append(f"-A {sep} -m comment --comment {sp.key} -s {ep.ip} -j KUBE-MARK-MASQ")
            recent = f"-m recent --set --name {sep} " if sp.affinity_timeout else ""
            nat.append(f"-A {sep} -m comment --comment {sp.key} {recent}{_proto(sp)} "
                       f"-j DNAT --to-destination {ep.address}")
        if sp.node_port:
            nat_chains.append(ext_chain(sp))
            nat += _node_port(sp, eps, seps, cluster_cidr, node_name, nat_chains, filt)
    nat.append('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last '
               'rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS')
    nat += [f"-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}",
            f"-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN",
            # clear the mark: a packet that is re-encapsulated (VXLAN) must not be masqueraded twice
            f"-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}",
            '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
            "-j MASQUERADE --random-fully"]
    filt += [f'-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark '
             f"{MASQ_MARK}/{MASQ_MARK} -j ACCEPT",
             '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack '
             "--ctstate RELATED,ESTABLISHED -j ACCEPT"]
    nat_text, deleted = _table("nat", nat_chains, nat, existing.get("nat"), kept, nft)
    filt_text, deleted_f = _table("filter", list(FILTER_CHAINS), filt, existing.get("filter"), [], nft)
    return Rules(nat_text + filt_text, services, endpoints, deleted + deleted_f,
                 {"nat": set(nat_chains) | set(kept), "filter": set(FILTER_CHAINS)}, written)


def _skip(sp: ServicePort, eps: list[Endpoint], node_name: str, nat: list[str], filt: list[str]) -> list[str]:
    """An unchanged service port in a partial sync: its lines in the shared chains (the same ones a
    full build writes) and the names of its own chains, which stay."""
    if not eps:
        filt += _reject(sp)
        return []
    svc = svc_chain(sp)
    nat.append(f"-A KUBE-SERVICES -m comment --comment {_q(f'{sp.key} cluster IP')} {_proto(sp)} "
               f"-d {sp.cluster_ip} --dport {sp.port} -j {svc}")
    own = [svc] + [sep_chain(sp, ep) for ep in eps]
    if sp.node_port:
        own.append(ext_chain(sp))
        nat.append(f"-A KUBE-NODEPORTS -m comment --comment {sp.key} {_proto(sp)} --dport {sp.node_port} "
                   f"-j {ext_chain(sp)}")
        if sp.external_local:
            if any(ep.node_name == node_name for ep in eps):
                own.append(local_chain(sp))
            else:
                filt.append(_no_local(sp))
    return own


def _reject(sp: ServicePort) -> list[str]:
    out = [f'-A KUBE-SERVICES -m comment --comment {_q(f"{sp.key} has no endpoints")} {_proto(sp)} '
           f"-d {sp.cluster_ip} --dport {sp.port} -j REJECT --reject-with icmp-port-unreachable"]
    if sp.node_port:
        out.append(f'-A KUBE-EXTERNAL-SERVICES -m comment --comment {_q(f"{sp.key} has no endpoints")} '
                   f"-m addrtype --dst-type LOCAL {_proto(sp)} --dport {sp.node_port} "
                   "-j REJECT --reject-with icmp-port-unreachable")
    return out


def _no_local(sp: ServicePort) -> str:
    return (f'-A KUBE-EXTERNAL-SERVICES -m comment --comment {_q(f"{sp.key} has no local endpoints")} '
            f"-m addrtype --dst-type LOCAL {_proto(sp)} --dport {sp.node_port} -j DROP")


def _balance(chain: str, sp: ServicePort, eps: list[Endpoint], seps: list[str]) -> list[str]:
    n = len(eps)
    out = []
    for i, (ep, sep) in enumerate(zip(eps, seps)):
        stat = f"-m statistic --mode random --probability {1.0 / (n - i):0.10f} " if i < n - 1 else ""
        out.append(f"-A {chain} -m comment --comment {_q(f'{sp.key} -> {ep.address}')} {stat}-j {sep}")
    return out


def _node_port(sp: ServicePort, eps, seps, cluster_cidr: str, node_name: str, chains: list[str],
               filt: list[str]) -> list[str]:
    ext, svc = ext_chain(sp), svc_chain(sp)
    out = [f"-A KUBE-NODEPORTS -m comment --comment {sp.key} {_proto(sp)} --dport {sp.node_port} -j {ext}"]
    if not sp.external_local:
        return out + [f"-A {ext} -m comment --comment {_q(f'masquerade traffic for {sp.key} external destinations')} "
                      "-j KUBE-MARK-MASQ", f"-A {ext} -j {svc}"]
    # Local: the client's address is kept, so only this node's endpoints may answer; pods and the
    # node itself still reach the service through every endpoint
    local = [(ep, sep) for ep, sep in zip(eps, seps) if ep.node_name == node_name]
    svl = local_chain(sp)
    if cluster_cidr:
        out.append(f"-A {ext} -m comment --comment {_q(f'pod traffic for {sp.key} external destinations')} "
                   f"-s {cluster_cidr} -j {svc}")
    out += [f"-A {ext} -m comment --comment {_q(f'masquerade LOCAL traffic for {sp.key} external destinations')} "
            "-m addrtype --src-type LOCAL -j KUBE-MARK-MASQ",
            f"-A {ext} -m comment --comment {_q(f'route LOCAL traffic for {sp.key} external destinations')} "
            f"-m addrtype --src-type LOCAL -j {svc}"]
    if not local:
        filt.append(_no_local(sp))
        return out
    chains.append(svl)
    out.append(f"-A {ext} -j {svl}")
    return out + _balance(svl, sp, [e for e, _ in local], [s for _, s in local])


def _table(name: str, chains: list[str], rules: list[str], have: TableState | None, kept: list[str],
           nft: bool) -> tuple[str, list[str]]:
    have = have or TableState()
    wanted = set(chains) | set(kept)
    stale = sorted(c for c in have.chains if c.startswith(PER_SERVICE) and c not in wanted)
    fixed = [c for c in chains if not c.startswith(PER_SERVICE)]
    lines = [f"*{name}"]
    lines += [f":{c} - [0:0]" for c in fixed]
    hooks = _hooks(name, have)
    # `-S` fetches every rule of the table: worth it only when the restore names many chains
    nft = nft and len(chains) + len(stale) > LIST_ALL_OVER
    if nft:  # the hooks (they name built-in chains, which need their own cache entries) then `-S`
        lines += hooks + ["-S"]
    lines += [f":{c} - [0:0]" for c in chains if c.startswith(PER_SERVICE)]
    lines += [f":{c} - [0:0]" for c in stale]  # flushed first: a chain still referenced cannot go
    if not nft:
        lines += hooks
    lines += rules
    lines += [f"-X {c}" for c in stale]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n", stale


def _hooks(name: str, have: TableState) -> list[str]:
    lines = []
    for table, builtin, spec in HOOKS:
        if table != name:
            continue
        mine = _normal(spec)
        found = [r for r in have.rules.get(builtin, []) if _normal(r) == mine]
        if not found:
            lines.append(f"-I {builtin} {spec}")
        for extra in found[1:]:
            lines.append(f"-D {builtin} {extra}")
    return lines
