"""The proxier (kube-proxy's iptables Proxier): Service and EndpointSlice informers whose every
change only asks the bounded-frequency runner for a sync; a sync reads the informers' stores,
reads the kernel's tables (`iptables-save`), renders the whole rule set (rules.py) and applies
it with one `iptables-restore --noflush`.

Nothing is kept between syncs but the informers' stores, which a restart rebuilds from the API;
the chains are rewritten whole each time, so a restarted proxier converges to the same rules
with no duplicates and no leftovers. Commands go through an injected runner (worker/network's
CommandRunner), so tests apply the rules inside a network namespace of their own.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from kubelab.client.client import Client
from kubelab.client.informer import Informer
from worker.network.cmd import CommandRunner, Runner
from worker.proxy import rules as rl
from worker.proxy.model import build_state
from worker.proxy.runner import BoundedFrequencyRunner

log = logging.getLogger(__name__)

# what a node needs for Services: routed pod traffic, and bridged pod-to-pod traffic seen by
# iptables (a pod reaching a service whose endpoint is on its own bridge)
SYSCTLS = ("net.ipv4.ip_forward=1", "net.bridge.bridge-nf-call-iptables=1")


class SyncError(Exception):
    pass


@dataclass
class ProxyConfig:
    node_name: str
    cluster_cidr: str = ""
    min_sync_period: float = 1.0
    sync_period: float = 30.0


@dataclass
class SyncResult:
    services: int
    endpoints: int
    deleted_chains: list[str]
    seconds: float
    restore_bytes: int


class Proxier:
    def __init__(self, client: Client, cfg: ProxyConfig, run: Runner | None = None):
        self.client, self.cfg = client, cfg
        self.run = run or CommandRunner()
        self.services = Informer(client.resource("services"))
        self.slices = Informer(client.resource("endpointslices"))
        self.runner = BoundedFrequencyRunner("proxy", self.sync, min_interval=cfg.min_sync_period,
                                             max_interval=cfg.sync_period, retry_base=max(cfg.min_sync_period, 0.5))
        for inf in (self.services, self.slices):
            inf.add_handler(lambda *_: self.runner.run(), lambda *_: self.runner.run(), lambda *_: self.runner.run())
        self.last: SyncResult | None = None
        self.syncs = 0
        self._said_first = False

    async def setup_node(self) -> None:
        """The sysctls kube-proxy needs; a missing br_netfilter is a warning, as kube-proxy's."""
        for s in SYSCTLS:
            r = await self.run(["sysctl", "-q", "-w", s])
            if r.returncode != 0:
                log.warning("proxy: cannot set %s: %s", s, r.stderr.strip())
                print(f"proxy: warning: cannot set {s}: {r.stderr.strip()}", flush=True)

    def rules(self, existing: dict[str, rl.TableState] | None = None) -> rl.Rules:
        state = build_state(self.services.list(), self.slices.list())
        return rl.build(state, cluster_cidr=self.cfg.cluster_cidr, node_name=self.cfg.node_name, existing=existing)

    async def sync(self) -> None:
        # until both informers have listed, a sync would delete every service's chains
        if not (self.services.synced.is_set() and self.slices.synced.is_set()):
            return
        t0 = time.perf_counter()
        saved = await self.run(["iptables-save"])
        if saved.returncode != 0:
            raise SyncError(f"iptables-save failed ({saved.returncode}): {saved.stderr.strip()}")
        r = self.rules(rl.parse_save(saved.stdout))
        res = await self.run(["iptables-restore", "--noflush"], stdin=r.text)
        if res.returncode != 0:
            raise SyncError(f"iptables-restore failed ({res.returncode}): {res.stderr.strip()}")
        self.syncs += 1
        self.last = SyncResult(r.services, r.endpoints, r.deleted_chains, time.perf_counter() - t0, len(r.text))
        msg = (f"proxy: synced {r.services} service ports with {r.endpoints} endpoints in "
               f"{self.last.seconds * 1000:.0f} ms" + (f", deleted {len(r.deleted_chains)} chains" if r.deleted_chains
                                                       else ""))
        if not self._said_first:
            print(msg, flush=True)
            self._said_first = True
        log.info("%s", msg)

    async def run_forever(self) -> None:
        await self.setup_node()
        tasks = [asyncio.create_task(i.run(), name=f"proxy-informer-{i.rc.kind.resource}")
                 for i in (self.services, self.slices)]
        try:
            for i in (self.services, self.slices):
                await i.wait_synced()
            tasks.append(asyncio.create_task(self.runner.loop(), name="proxy-sync"))
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
