"""The node's iptables rules for pod traffic, in chains of our own (as kube-proxy keeps KUBE-*):

- nat KUBELAB-POSTROUTING (from POSTROUTING): pod traffic leaving the cluster CIDR is
  masqueraded behind the node's address (`-s podCIDR ! -d clusterCIDR -j MASQUERADE`), as
  flannel does, so pods reach the outside world while pod-to-pod traffic keeps its source.
- filter KUBELAB-FORWARD (from FORWARD): accept what enters or leaves the bridge, since the
  host's FORWARD policy may be DROP (Docker sets it so).

Every rule carries the comment `kubelab:<bridge> ...`, so several bridges (tests, lab VMs
sharing a namespace) can share the chains and each reconciles only its own rules: the rules
found are compared with the rules wanted, extra ones deleted, missing ones appended. Calling
it twice changes nothing.
"""
from __future__ import annotations

import shlex

from worker.network.cmd import Runner, run_checked

NAT_CHAIN = "KUBELAB-POSTROUTING"
FILTER_CHAIN = "KUBELAB-FORWARD"
# (table, our chain, the built-in chain that jumps to it)
CHAINS = (("nat", NAT_CHAIN, "POSTROUTING"), ("filter", FILTER_CHAIN, "FORWARD"))


def _tag(bridge: str) -> str:
    return f"kubelab:{bridge}"


def wanted_rules(bridge: str, pod_cidr: str, cluster_cidr: str) -> dict[str, list[list[str]]]:
    """chain -> rule specs, written the way `iptables -S` prints them back."""
    tag = _tag(bridge)
    return {
        NAT_CHAIN: [["-s", pod_cidr, "!", "-d", cluster_cidr, "-m", "comment", "--comment",
                     f"{tag} masquerade pod traffic leaving the cluster", "-j", "MASQUERADE"]],
        FILTER_CHAIN: [["-i", bridge, "-m", "comment", "--comment", f"{tag} forward from pods", "-j", "ACCEPT"],
                       ["-o", bridge, "-m", "comment", "--comment", f"{tag} forward to pods", "-j", "ACCEPT"]],
    }


async def sync_rules(run: Runner, bridge: str, pod_cidr: str, cluster_cidr: str) -> None:
    """Make our chains hold exactly the wanted rules for this bridge. Idempotent."""
    wanted = wanted_rules(bridge, pod_cidr, cluster_cidr)
    for table, chain, parent in CHAINS:
        await _ensure_chain(run, table, chain, parent)
        have = await _our_rules(run, table, chain, bridge)
        for spec in have:
            if spec not in wanted[chain]:
                await run_checked(run, ["iptables", "-w", "-t", table, "-D", chain, *spec])
        for spec in wanted[chain]:
            if spec not in have:
                await run_checked(run, ["iptables", "-w", "-t", table, "-A", chain, *spec])


async def remove_rules(run: Runner, bridge: str) -> None:
    """Delete this bridge's rules; the chains themselves go once no bridge has rules left."""
    for table, chain, parent in CHAINS:
        if not await _chain_exists(run, table, chain):
            continue
        for spec in await _our_rules(run, table, chain, bridge):
            await run_checked(run, ["iptables", "-w", "-t", table, "-D", chain, *spec])
        if await _rules(run, table, chain):
            continue
        while (await run(["iptables", "-w", "-t", table, "-C", parent, "-j", chain])).returncode == 0:
            await run_checked(run, ["iptables", "-w", "-t", table, "-D", parent, "-j", chain])
        await run_checked(run, ["iptables", "-w", "-t", table, "-X", chain])


async def _chain_exists(run: Runner, table: str, chain: str) -> bool:
    return (await run(["iptables", "-w", "-t", table, "-S", chain])).returncode == 0


async def _ensure_chain(run: Runner, table: str, chain: str, parent: str) -> None:
    if not await _chain_exists(run, table, chain):
        await run_checked(run, ["iptables", "-w", "-t", table, "-N", chain], tolerate=("already exists",))
    if (await run(["iptables", "-w", "-t", table, "-C", parent, "-j", chain])).returncode != 0:
        # first, so that a DROP rule someone else put in the built-in chain does not win
        await run_checked(run, ["iptables", "-w", "-t", table, "-I", parent, "1", "-j", chain])


async def _rules(run: Runner, table: str, chain: str) -> list[list[str]]:
    res = await run_checked(run, ["iptables", "-w", "-t", table, "-S", chain])
    prefix = ["-A", chain]
    return [words[2:] for words in map(shlex.split, res.stdout.splitlines()) if words[:2] == prefix]


async def _our_rules(run: Runner, table: str, chain: str, bridge: str) -> list[list[str]]:
    tag = _tag(bridge) + " "
    return [spec for spec in await _rules(run, table, chain) if _comment(spec).startswith(tag)]


def _comment(spec: list[str]) -> str:
    for i, word in enumerate(spec[:-1]):
        if word == "--comment":
            return spec[i + 1]
    return ""
