"""Stale UDP flows (kube-proxy's conntrack cleanup): UDP has no connection to end, so a conntrack
entry made while a service pointed elsewhere keeps steering that client's datagrams to the old
destination until it times out. After each successful sync the proxier deletes, in the node's
network namespace (where it runs):
- for a UDP service port that had no endpoints and now has some: the entries to its cluster IP
  (and NodePort), which were made while nothing answered and would keep going nowhere;
- for an endpoint a UDP service port lost: the entries to its cluster IP (and NodePort) that were
  DNATed to that endpoint (`--reply-src` is the endpoint's address for those).

`conntrack` (conntrack-tools) is run through the proxier's command runner; without it the proxy
warns once and goes on, as kube-proxy does.
"""
from __future__ import annotations

import logging

from worker.network.cmd import Runner
from worker.proxy.model import ProxyState

log = logging.getLogger(__name__)


def cleanups(prev: ProxyState | None, cur: ProxyState) -> list[list[str]]:
    """The `conntrack -D` argument lists for the change from `prev` to `cur` (pure)."""
    if prev is None:  # the first sync after a start knows no history; kube-proxy clears nothing either
        return []
    before = {sp.key: sp for sp in prev.ports}
    out: list[list[str]] = []
    for sp in cur.ports:
        if sp.protocol != "UDP":
            continue
        now = cur.endpoints.get(sp.key, [])
        old_sp = before.get(sp.key)
        had = prev.endpoints.get(sp.key, []) if old_sp else []
        if now and not had:
            out.append(["-D", "-p", "udp", "--orig-dst", sp.cluster_ip])
            if sp.node_port:
                out.append(["-D", "-p", "udp", "--dport", str(sp.node_port)])
        gone = {e.ip for e in had} - {e.ip for e in now}
        for ip in sorted(gone):
            out.append(["-D", "-p", "udp", "--orig-dst", sp.cluster_ip, "--reply-src", ip])
            if sp.node_port:
                out.append(["-D", "-p", "udp", "--dport", str(sp.node_port), "--reply-src", ip])
    # a deleted UDP service: its flows go to endpoints that may live on under another service
    cur_keys = {sp.key for sp in cur.ports}
    for key, sp in before.items():
        if sp.protocol == "UDP" and key not in cur_keys and prev.endpoints.get(key):
            out.append(["-D", "-p", "udp", "--orig-dst", sp.cluster_ip])
    return out


class Conntrack:
    def __init__(self, run: Runner):
        self.run = run
        self.missing = False
        self.deleted = 0  # commands run that deleted entries (for tests and logs)

    async def clear(self, cmds: list[list[str]]) -> None:
        for args in cmds:
            if self.missing:
                return
            try:
                res = await self.run(["conntrack", *args])
            except FileNotFoundError:
                res = None
            if res is None or res.returncode == 127:  # 127: not found behind nsenter
                self.missing = True
                log.warning("proxy: no conntrack tool: stale UDP flows are not cleared")
                print("proxy: warning: no conntrack tool (conntrack-tools): stale UDP flows are not cleared",
                      flush=True)
                return
            # exit 1 with "0 flow entries have been deleted" is the usual answer: nothing to clear
            if res.returncode != 0 and "0 flow entries" not in res.stderr:
                log.warning("proxy: conntrack %s failed (%d): %s", " ".join(args), res.returncode,
                            res.stderr.strip())
            elif res.returncode == 0:
                self.deleted += 1
