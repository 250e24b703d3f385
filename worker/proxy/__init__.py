"""kube-proxy (iptables mode) for one node: Service and EndpointSlice informers feed a
bounded-frequency runner whose every sync renders the whole rule set and applies it with one
`iptables-restore --noflush`. Nothing is remembered that the API and the kernel cannot give back.

    model.py    Services and EndpointSlices -> service ports and their usable endpoints
    rules.py    service ports + endpoints + iptables-save -> the restore text (pure)
    runner.py   the bounded-frequency runner (min interval, periodic resync, retry backoff)
    proxier.py  informers -> runner -> iptables-save / iptables-restore through a command runner
    cmd.py      `kubelab proxy`
"""
