"""kube-proxy's syncs for 1,000 services x 10 endpoints, through worker/proxy's Proxier itself
(its informers' stores filled here, its commands run in a network namespace of the benchmark's
own, deleted at the end with every rule in it). Part of `make bench` (`--only proxy`); also runs
alone: `python -m bench.proxy`.

Figures: the first sync into an empty namespace (it reads iptables-save), the periodic full
resync over the rules the previous one left (median of a few rounds: the built-in chains read,
model, rules, one restore), and a partial sync after one service's endpoints changed. The goal
(issue 8) is <= 1 s for the full resync. Beside them, for the record: the same text through
iptables-legacy-restore, and through iptables-nft-restore without the nft layout of rules.py
(the 1.8.9 cache cost it avoids). Restore CPU seconds are printed too: on a loaded machine the
wall-clock figures include waiting for a core.
"""
from __future__ import annotations

import asyncio
import secrets
import shutil
import statistics
import subprocess
import time

from google.protobuf import struct_pb2

from kubelab.api.v1 import objects_pb2 as v1
from worker.network import CommandRunner
from worker.overlay.testbed import NETNS
from worker.proxy import rules as rl
from worker.proxy.model import build_state
from worker.proxy.proxier import Proxier, ProxyConfig, detect_backend

SERVICES, ENDPOINTS = 1000, 10


def objects(services: int = SERVICES, endpoints: int = ENDPOINTS) -> tuple[list, list]:
    svcs, slices = [], []
    for i in range(services):
        s = v1.Service()
        s.metadata.name, s.metadata.namespace = f"svc-{i}", f"ns-{i % 20}"
        s.spec.clusterIP = f"10.96.{i // 250}.{i % 250 + 1}"
        s.spec.type = "NodePort" if i % 10 == 0 else "ClusterIP"
        p = s.spec.ports.add(name="http", port=80, protocol="TCP", nodePort=30000 + i if i % 10 == 0 else 0)
        p.targetPort.CopyFrom(struct_pb2.Value(number_value=8080))
        svcs.append(s)
        sl = v1.EndpointSlice(addressType="IPv4")
        sl.metadata.name, sl.metadata.namespace = f"svc-{i}-abcde", s.metadata.namespace
        sl.metadata.labels["kubernetes.io/service-name"] = s.metadata.name
        sl.ports.add(name="http", port=8080, protocol="TCP")
        for j in range(endpoints):
            n = i * endpoints + j
            e = sl.endpoints.add(addresses=[f"10.244.{n // 250 % 256}.{n % 250 + 1}"], nodeName=f"node{j % 3}")
            e.conditions.ready = True
        slices.append(sl)
    return svcs, slices


class _Timed:
    """The proxier's command runner, timing every command by its name."""
    def __init__(self, run):
        self.inner, self.took = run, {}

    async def __call__(self, argv, *, stdin=None):
        t0 = time.perf_counter()
        try:
            return await self.inner(argv, stdin=stdin)
        finally:
            name = "restore" if argv[0].endswith("-restore") else "save" if argv[0].endswith("-save") else "other"
            self.took[name] = self.took.get(name, 0.0) + time.perf_counter() - t0


class _NoClient:  # the informers' stores are filled here; nothing is listed or watched
    def resource(self, name):
        return None


async def one_sync(p: Proxier, timed: _Timed) -> dict[str, float]:
    timed.took = {}
    cpu0 = _children_cpu()
    await p.sync()
    cpu = _children_cpu() - cpu0
    return {"total": p.last.seconds, "save": timed.took.get("save", 0.0) + timed.took.get("other", 0.0),
            "restore": timed.took.get("restore", 0.0), "restore_cpu": cpu, "bytes": p.last.restore_bytes,
            "full": p.last.full, "written": p.last.written}


def _children_cpu() -> float:
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _change_one(p: Proxier, slices, i: int, round_: int) -> None:
    """Service i's endpoints move (one replaced), as a rollout would: a partial sync's work."""
    sl = v1.EndpointSlice()
    sl.CopyFrom(slices[i])
    sl.endpoints[0].addresses[0] = f"10.245.{round_ % 250}.{i % 250 + 1}"
    p.slices.store[f"{sl.metadata.namespace}/{sl.metadata.name}"] = sl
    p.dirty.add((sl.metadata.namespace, sl.metadata.labels["kubernetes.io/service-name"]))


async def run(report, *, rounds: int = 5) -> None:
    ns = f"klbp-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        timed = _Timed(CommandRunner(("nsenter", f"--net={NETNS / ns}", "--")))
        svcs, slices = objects()
        p = Proxier(_NoClient(), ProxyConfig("node0", cluster_cidr="10.244.0.0/16", sync_period=3600), timed)
        p.iptables, p.nft = await detect_backend(timed)
        p.services.store = {f"{s.metadata.namespace}/{s.metadata.name}": s for s in svcs}
        p.slices.store = {f"{s.metadata.namespace}/{s.metadata.name}": s for s in slices}
        p.services.synced.set()
        p.slices.synced.set()
        first = await one_sync(p, timed)
        rules_first = (await timed.inner([f"{p.iptables}-save", "-t", "nat"])).stdout.count("\n-A ")
        steady = [await one_sync(p, timed) for _ in range(rounds)]  # nothing dirty: the periodic full resync
        partial = []
        for r in range(rounds):
            _change_one(p, slices, 7 + r, r)
            partial.append(await one_sync(p, timed))
        assert all(s["full"] for s in steady) and not any(s["full"] for s in partial)
        med = {k: statistics.median(s[k] for s in steady) for k in ("total", "save", "restore", "restore_cpu")}
        pmed = {k: statistics.median(s[k] for s in partial) for k in ("total", "restore", "restore_cpu")}
        rules_now = (await timed.inner([f"{p.iptables}-save", "-t", "nat"])).stdout.count("\n-A ")
        report(f"proxy first sync {SERVICES} svc x {ENDPOINTS} eps ({p.iptables}, reads the save)",
               f"{first['total']:.2f} s", "<= 1 s", first["total"] <= 1.0)
        report(f"proxy full resync {SERVICES} svc x {ENDPOINTS} eps (median of {rounds})",
               f"{med['total']:.2f} s", "<= 1 s", med["total"] <= 1.0)
        report("  of which built-in chains read / restore (restore's CPU)",
               f"{med['save']:.2f} / {med['restore']:.2f} s ({med['restore_cpu']:.2f} s CPU)", "", None)
        report(f"proxy partial sync, one service changed of {SERVICES} (median of {rounds})",
               f"{pmed['total']:.2f} s", "", None)
        report("  of which restore (restore's CPU)", f"{pmed['restore']:.2f} s ({pmed['restore_cpu']:.2f} s CPU)",
               "", None)
        report("  nat rules in the kernel after the syncs", f"{rules_now} (first: {rules_first})", "no growth",
               rules_now == rules_first)
        await baselines(report, svcs, slices)
    finally:
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True, check=False)


async def baselines(report, svcs, slices) -> None:
    """The first sync's text in the plain layout (no early `-S`), each into a namespace of its own:
    through iptables-legacy-restore (x_tables: how much of the time is the nf_tables backend's),
    and through iptables-nft-restore (the cost of iptables-nft 1.8.9's sorted chain list, which
    rules.py's nft layout avoids), with the restore's CPU seconds."""
    text = rl.build(build_state(svcs, slices), cluster_cidr="10.244.0.0/16").text
    for tool, what in (("iptables-legacy-restore", "iptables-legacy (baseline)"),
                       ("iptables-nft-restore", "iptables-nft without -S first")):
        if not shutil.which(tool):
            continue
        ns = f"klbp-{secrets.token_hex(3)}"
        subprocess.run(["ip", "netns", "add", ns], check=True)
        try:
            runner = CommandRunner(("nsenter", f"--net={NETNS / ns}", "--"))
            cpu0, t0 = _children_cpu(), time.perf_counter()
            res = await runner([tool, "--noflush"], stdin=text)
            took, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
            if res.returncode == 0:
                report(f"  the same restore through {what}", f"{took:.2f} s ({cpu:.2f} s CPU)", "", None)
        finally:
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, check=False)


if __name__ == "__main__":
    def _print(name, figure, goal, ok):
        print(f"{name:<58} {figure:<40} goal {goal:<10} {'n/a' if ok is None else ('met' if ok else 'MISSED')}")
    asyncio.run(run(_print))
