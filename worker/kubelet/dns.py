"""The pod's /etc/resolv.conf, by its dnsPolicy (the kubelet's pkg/kubelet/network/dns).

- ClusterFirst (the default): the cluster DNS (`--cluster-dns`), the search path
  `<ns>.svc.<domain> svc.<domain> <domain>` followed by the node's own searches, and
  `options ndots:5`. hostNetwork pods get Default instead, unless their policy is
  ClusterFirstWithHostNet. A kubelet without --cluster-dns falls back to Default and says so
  with a Warning event (MissingClusterDNS), as Kubernetes' does.
- Default: the node's resolv.conf (`--resolv-conf`, /etc/resolv.conf).
- None: nothing but the pod's dnsConfig.

The pod's dnsConfig is then merged in: its nameservers and searches appended (duplicates
dropped), its options overriding those of the same name. At most 3 nameservers and 32 search
domains (2048 characters) reach the file, the resolver's limits; what is cut is reported as a
DNSConfigForming Warning event.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

MAX_NAMESERVERS = 3
MAX_SEARCHES = 32
MAX_SEARCH_CHARS = 2048
DEFAULT_OPTIONS = ["ndots:5"]


@dataclass
class ResolvConf:
    nameservers: list[str] = field(default_factory=list)
    searches: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)

    def render(self) -> str:
        # containerd's layout: search, then nameservers, then options
        lines = []
        if self.searches:
            lines.append("search " + " ".join(self.searches))
        lines += [f"nameserver {ns}" for ns in self.nameservers]
        if self.options:
            lines.append("options " + " ".join(self.options))
        return "\n".join(lines) + "\n" if lines else ""


def parse_resolv_conf(text: str) -> ResolvConf:
    rc = ResolvConf()
    domain: list[str] = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if not words:
            continue
        key, rest = words[0], words[1:]
        if key == "nameserver" and rest:
            rc.nameservers.append(rest[0])
        elif key == "search":
            rc.searches = rest  # the last search line wins, as in the resolver
        elif key == "domain" and rest:
            domain = rest[:1]
        elif key == "options":
            rc.options += rest
    if not rc.searches:
        rc.searches = domain
    return rc


def _unique(items) -> list[str]:
    return list(dict.fromkeys(items))


def merge_options(existing: list[str], extra) -> list[str]:
    """Options by name: the pod's dnsConfig.options (name, optional value) override the base's."""
    merged: dict[str, str] = {}
    for opt in existing:
        merged[opt.partition(":")[0]] = opt
    for opt in extra:
        value = opt.value if opt.HasField("value") else ""
        merged[opt.name] = f"{opt.name}:{value}" if value else opt.name
    return list(merged.values())


def policy_of(pod) -> str:
    """The effective policy: Cluster, Host or None."""
    policy = pod.spec.dnsPolicy or "ClusterFirst"  # static pods are not defaulted by the API server
    if policy == "None":
        return "None"
    if policy == "ClusterFirstWithHostNet":
        return "Cluster"
    if policy == "ClusterFirst" and not pod.spec.hostNetwork:
        return "Cluster"
    return "Host"  # Default, and ClusterFirst for hostNetwork pods


class DNSConfigurer:
    def __init__(self, *, cluster_dns: list[str] = (), cluster_domain: str = "cluster.local",
                 resolv_conf: Path | str | None = "/etc/resolv.conf"):
        self.cluster_dns = list(cluster_dns)
        self.cluster_domain = cluster_domain.strip(".")
        self.resolv_conf = Path(resolv_conf) if resolv_conf else None

    def host_config(self) -> ResolvConf:
        if self.resolv_conf is None:
            # --resolv-conf "": no host DNS at all; the resolver's own default is localhost
            return ResolvConf(nameservers=["127.0.0.1"], searches=["."])
        try:
            return parse_resolv_conf(self.resolv_conf.read_text())
        except OSError:
            return ResolvConf()

    def pod_config(self, pod) -> tuple[ResolvConf, list[tuple[str, str]]]:
        """The pod's resolver configuration and the Warning events (reason, message) to record."""
        events: list[tuple[str, str]] = []
        kind = policy_of(pod)
        if kind == "Cluster" and not self.cluster_dns:
            policy = pod.spec.dnsPolicy or "ClusterFirst"
            events.append(("MissingClusterDNS",
                           (f'pod: "{pod.metadata.name}_{pod.metadata.namespace}({pod.metadata.uid})". kubelet does '
                            f'not have ClusterDNS IP configured and cannot create Pod using "{policy}" policy. '
                            'Falling back to "Default" policy.')))
            kind = "Host"
        if kind == "None":
            rc = ResolvConf()
        else:
            rc = self.host_config()
        if kind == "Cluster":
            ns, d = pod.metadata.namespace, self.cluster_domain
            cluster = [f"{ns}.svc.{d}", f"svc.{d}", d] if d else []
            rc = ResolvConf(nameservers=list(self.cluster_dns), searches=_unique(cluster + rc.searches),
                            options=list(DEFAULT_OPTIONS))
        if pod.spec.HasField("dnsConfig"):
            cfg = pod.spec.dnsConfig
            rc = ResolvConf(nameservers=_unique(rc.nameservers + list(cfg.nameservers)),
                            searches=_unique(rc.searches + list(cfg.searches)),
                            options=merge_options(rc.options, cfg.options))
        return self._fit(rc, events)

    @staticmethod
    def _fit(rc: ResolvConf, events: list) -> tuple[ResolvConf, list]:
        if len(rc.nameservers) > MAX_NAMESERVERS:
            rc.nameservers = rc.nameservers[:MAX_NAMESERVERS]
            events.append(("DNSConfigForming", ("Nameserver limits were exceeded, some nameservers have been omitted, "
                                                f"the applied nameserver line is: {' '.join(rc.nameservers)}")))
        searches = rc.searches[:MAX_SEARCHES]
        while len(" ".join(searches)) > MAX_SEARCH_CHARS:
            searches.pop()
        if searches != rc.searches:
            rc.searches = searches
            events.append(("DNSConfigForming", ("Search Line limits were exceeded, some search paths have been "
                                                f"omitted, the applied search line is: {' '.join(searches)}")))
        return rc, events
