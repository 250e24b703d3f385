"""kube-proxy (iptables mode) for one node: Service and EndpointSlice informers feed a
bounded-frequency runner whose every sync renders the rule set (all of it, or in a partial sync
the changed services' chains) and applies it with one `iptables-restore --noflush`.

    model.py    Services and EndpointSlices -> service ports and their usable endpoints
    rules.py    service ports + endpoints + iptables-save -> the restore text (pure)
    runner.py   the bounded-frequency runner (min interval, periodic resync, retry backoff)
    proxier.py  informers -> runner -> iptables-restore through a command runner (full/partial)
    conntrack.py  stale UDP flows deleted after endpoint changes
    cmd.py      `kubelab proxy`
"""
