"""kube-proxy's full resync for 1,000 services x 10 endpoints: what one sync of worker/proxy does
(the Service and EndpointSlice objects -> service ports and endpoints, the rule text, then
iptables-save and one iptables-restore --noflush), into a network namespace of the benchmark's
own (deleted at the end, with every rule in it). Part of `make bench` (`--only proxy`); also
runs alone: `python -m bench.proxy`.

Figures: the first sync into an empty namespace, and the steady-state resync over the rules the
previous one left (the one that runs every --sync-period), median of a few rounds, split into
model, rules and kernel time; the goal (issue 8) is <= 1 s for the whole resync. With the
nf_tables backend (Debian's default iptables) the restore dominates; the same text through
iptables-legacy-restore is printed beside it as a baseline.
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


async def one_sync(run, svcs, slices) -> dict[str, float]:
    t0 = time.perf_counter()
    saved = await run(["iptables-save"])
    t1 = time.perf_counter()
    state = build_state(svcs, slices)
    t2 = time.perf_counter()
    r = rl.build(state, cluster_cidr="10.244.0.0/16", node_name="node0", existing=rl.parse_save(saved.stdout))
    t3 = time.perf_counter()
    res = await run(["iptables-restore", "--noflush"], stdin=r.text)
    t4 = time.perf_counter()
    if saved.returncode != 0 or res.returncode != 0:
        raise RuntimeError(f"iptables failed: {saved.stderr or res.stderr}")
    return {"total": t4 - t0, "save": t1 - t0, "model": t2 - t1, "rules": t3 - t2, "restore": t4 - t3,
            "lines": r.text.count("\n")}


async def run(report, *, rounds: int = 5) -> None:
    ns = f"klbp-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        runner = CommandRunner(("nsenter", f"--net={NETNS / ns}", "--"))
        svcs, slices = objects()
        first = await one_sync(runner, svcs, slices)
        steady = [await one_sync(runner, svcs, slices) for _ in range(rounds)]
        med = {k: statistics.median(s[k] for s in steady) for k in steady[0]}
        rules_now = (await runner(["iptables-save", "-t", "nat"])).stdout.count("\n-A ")
        report(f"proxy first sync {SERVICES} svc x {ENDPOINTS} eps ({int(first['lines'])} lines)",
               f"{first['total']:.2f} s", "<= 1 s", first["total"] <= 1.0)
        report(f"proxy full resync {SERVICES} svc x {ENDPOINTS} eps (median of {rounds})",
               f"{med['total']:.2f} s", "<= 1 s", med["total"] <= 1.0)
        report("  of which save / model / rules / restore",
               f"{med['save']:.2f} / {med['model']:.2f} / {med['rules']:.2f} / {med['restore']:.2f} s", "", None)
        report("  nat rules in the kernel after the resyncs", f"{rules_now}", "no growth",
               rules_now < first["lines"])
        await legacy_baseline(report, svcs, slices)
    finally:
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True, check=False)


async def legacy_baseline(report, svcs, slices) -> None:
    """The same first sync's text through iptables-legacy-restore (x_tables), into a namespace of
    its own: how much of the time is the nf_tables backend's, for the record."""
    if not shutil.which("iptables-legacy-restore"):
        return
    ns = f"klbp-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        text = rl.build(build_state(svcs, slices), cluster_cidr="10.244.0.0/16").text
        runner = CommandRunner(("nsenter", f"--net={NETNS / ns}", "--"))
        t0 = time.perf_counter()
        res = await runner(["iptables-legacy-restore", "--noflush"], stdin=text)
        took = time.perf_counter() - t0
        if res.returncode == 0:
            report("  the same restore through iptables-legacy (baseline)", f"{took:.2f} s", "", None)
    finally:
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True, check=False)


if __name__ == "__main__":
    def _print(name, figure, goal, ok):
        print(f"{name:<58} {figure:<40} goal {goal:<10} {'n/a' if ok is None else ('met' if ok else 'MISSED')}")
    asyncio.run(run(_print))
