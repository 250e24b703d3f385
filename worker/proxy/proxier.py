"""The proxier (kube-proxy's iptables Proxier): Service and EndpointSlice informers whose every
change marks its service dirty and asks the bounded-frequency runner for a sync; a sync renders
the rule set (rules.py) and applies it with one `iptables-restore --noflush`.

Full and partial syncs, as kube-proxy's minimizeIPTablesRestore: a full sync rewrites every chain
of ours; a partial one (a request with dirty services, within --sync-period of the last full one)
rewrites KUBE-SERVICES/KUBE-NODEPORTS and only the dirty services' own chains. Which of our chains
the kernel holds is remembered from the last successful restore; the first sync after a start
(and after any failure) reads it from `iptables-save` instead, so a restarted proxier converges
to the same rules with no duplicates and no leftovers. A later full sync reads only the built-in
chains holding our jumps (`iptables -S CHAIN`), to repair a removed or duplicated jump.

Backend: kube-proxy's detection, the iptables flavour (nft or legacy) whose tables hold more KUBE-*
lines, nft on a tie. Commands go through an injected runner (worker/network's CommandRunner), so
tests apply the rules inside a network namespace of their own.
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
from worker.proxy.conntrack import Conntrack, cleanups
from worker.proxy.model import SERVICE_NAME_LABEL, ProxyState, build_state
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
    full: bool = True
    written: int = 0  # service ports whose own chains were rewritten


async def detect_backend(run: Runner) -> tuple[str, bool]:
    """(command prefix, nft?): iptables-nft or iptables-legacy, whichever holds more KUBE-* lines;
    plain `iptables` (asked for its flavour) where the two are not installed side by side."""
    counts = {}
    for flavour in ("nft", "legacy"):
        try:
            r = await run([f"iptables-{flavour}-save"])
        except FileNotFoundError:
            continue
        if r.returncode == 0:
            counts[flavour] = sum(1 for ln in r.stdout.splitlines() if "KUBE-" in ln)
    if counts:
        best = max(counts, key=lambda f: (counts[f], f == "nft"))
        return f"iptables-{best}", best == "nft"
    r = await run(["iptables", "--version"])
    return "iptables", "nf_tables" in r.stdout


class Proxier:
    def __init__(self, client: Client, cfg: ProxyConfig, run: Runner | None = None):
        self.client, self.cfg = client, cfg
        self.run = run or CommandRunner()
        self.services = Informer(client.resource("services"))
        self.slices = Informer(client.resource("endpointslices"))
        self.runner = BoundedFrequencyRunner("proxy", self.sync, min_interval=cfg.min_sync_period,
                                             max_interval=cfg.sync_period, retry_base=max(cfg.min_sync_period, 0.5))
        self.services.add_handler(self._svc_changed, lambda _o, n: self._svc_changed(n), self._svc_changed)
        self.slices.add_handler(self._slice_changed, lambda o, n: (self._slice_changed(o), self._slice_changed(n)),
                                self._slice_changed)
        self.conntrack = Conntrack(self.run)
        self.iptables, self.nft = "iptables", False  # set by setup_node
        self.dirty: set[tuple[str, str]] = set()  # (namespace, service) changed since the last sync
        self.kernel: dict[str, rl.TableState] | None = None  # our chains after the last restore
        self.state: ProxyState | None = None  # what the last restore wrote (for conntrack)
        self.last_full = float("-inf")
        self.last: SyncResult | None = None
        self.syncs = 0
        self._said_first = False

    def _svc_changed(self, svc) -> None:
        self.dirty.add((svc.metadata.namespace, svc.metadata.name))
        self.runner.run()

    def _slice_changed(self, sl) -> None:
        self.dirty.add((sl.metadata.namespace, sl.metadata.labels.get(SERVICE_NAME_LABEL, "")))
        self.runner.run()

    async def setup_node(self) -> None:
        """The sysctls kube-proxy needs (a missing br_netfilter is a warning, as kube-proxy's), and
        which iptables backend to write through."""
        for s in SYSCTLS:
            r = await self.run(["sysctl", "-q", "-w", s])
            if r.returncode != 0:
                log.warning("proxy: cannot set %s: %s", s, r.stderr.strip())
                print(f"proxy: warning: cannot set {s}: {r.stderr.strip()}", flush=True)
        self.iptables, self.nft = await detect_backend(self.run)

    def rules(self, existing: dict[str, rl.TableState] | None = None, only: set[str] | None = None,
              state: ProxyState | None = None) -> rl.Rules:
        state = state or build_state(self.services.list(), self.slices.list())
        return rl.build(state, cluster_cidr=self.cfg.cluster_cidr, node_name=self.cfg.node_name, existing=existing,
                        only=only, nft=self.nft)

    async def _builtins(self) -> dict[str, rl.TableState]:
        """Our chains as the last restore left them, and the built-in chains holding our jumps as
        the kernel has them now (a full sync repairs a jump somebody removed)."""
        assert self.kernel is not None
        wanted = sorted({(t, b) for t, b, _ in rl.HOOKS})
        listed = await asyncio.gather(*(self.run([self.iptables, "-w", "-t", t, "-S", b]) for t, b in wanted))
        out = {t: rl.TableState(set(st.chains), {}) for t, st in self.kernel.items()}
        for (t, b), res in zip(wanted, listed):
            if res.returncode != 0:
                raise SyncError(f"{self.iptables} -t {t} -S {b} failed ({res.returncode}): {res.stderr.strip()}")
            rules = rl.parse_save(f"*{t}\n{res.stdout}").get(t, rl.TableState()).rules.get(b, [])
            out.setdefault(t, rl.TableState()).rules[b] = rules
        return out

    async def sync(self) -> None:
        # until both informers have listed, a sync would delete every service's chains
        if not (self.services.synced.is_set() and self.slices.synced.is_set()):
            return
        t0 = time.perf_counter()
        dirty, self.dirty = self.dirty, set()
        full = self.kernel is None or not dirty or time.monotonic() - self.last_full >= self.cfg.sync_period
        try:
            await self._sync(t0, full, dirty)
        except BaseException:
            self.kernel = None  # not known any more: the retry reads iptables-save and writes everything
            raise

    async def _sync(self, t0: float, full: bool, dirty: set[tuple[str, str]]) -> None:
        if self.kernel is None:
            saved = await self.run([f"{self.iptables}-save"])
            if saved.returncode != 0:
                raise SyncError(f"{self.iptables}-save failed ({saved.returncode}): {saved.stderr.strip()}")
            existing = rl.parse_save(saved.stdout)
        elif full:
            existing = await self._builtins()
        else:
            existing = self.kernel  # our jumps are in: the last restore put them there
        state = build_state(self.services.list(), self.slices.list())
        only = None if full else {sp.key for sp in state.ports if (sp.namespace, sp.name) in dirty}
        r = self.rules(existing, only, state)
        res = await self.run([f"{self.iptables}-restore", "--noflush"], stdin=r.text)
        if res.returncode != 0:
            raise SyncError(f"{self.iptables}-restore failed ({res.returncode}): {res.stderr.strip()}")
        self.kernel = {t: rl.TableState(chains, {b: [spec for tb, bb, spec in rl.HOOKS if tb == t and bb == b]
                                                 for tb, b, _ in rl.HOOKS if tb == t})
                       for t, chains in r.chains.items()}
        if full:
            self.last_full = time.monotonic()
        prev, self.state = self.state, state
        await self.conntrack.clear(cleanups(prev, state))
        self.syncs += 1
        self.last = SyncResult(r.services, r.endpoints, r.deleted_chains, time.perf_counter() - t0, len(r.text),
                               full, r.written)
        msg = (f"proxy: {'full' if full else 'partial'} sync of {r.services} service ports with {r.endpoints} "
               f"endpoints ({r.written} rewritten) in {self.last.seconds * 1000:.0f} ms"
               + (f", deleted {len(r.deleted_chains)} chains" if r.deleted_chains else ""))
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
