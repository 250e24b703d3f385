"""The node bridge (`cni0`), what CNI's bridge plugin keeps on each node: a Linux bridge holding
the gateway address (.1) of the node's podCIDR, one host-side veth per pod attached to it.
Pods on one node talk through the bridge; everything else goes to the gateway and is routed
by the node (the overlay, in the next issue, or masquerade to the outside world).
"""
from __future__ import annotations

import hashlib
import ipaddress
import json

from worker.network.cmd import Runner, run_checked
from worker.network.errors import NetworkError

MISSING_LINK = ("does not exist", "Cannot find device")


async def link_info(run: Runner, name: str, *, netns_argv=None) -> dict | None:
    """`ip -details link show NAME` as a dict, or None when there is no such link.
    netns_argv wraps the command to look inside a pod's namespace."""
    argv = ["ip", "-j", "-d", "link", "show", "dev", name]
    res = await run_checked(run, netns_argv(argv) if netns_argv else argv, tolerate=MISSING_LINK)
    if res.returncode != 0:
        return None
    links = json.loads(res.stdout or "[]")
    return links[0] if links else None


def bridge_mac(name: str, gateway: ipaddress.IPv4Address) -> str:
    """A fixed, locally administered MAC for the bridge. Without one, Linux gives the bridge the
    lowest MAC of its ports, which changes as pods come and go and leaves stale gateway ARP
    entries in the other pods."""
    h = hashlib.sha256(f"kubelab-bridge/{name}/{gateway}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *h[:5]))


async def ensure_bridge(run: Runner, name: str, gateway: ipaddress.IPv4Interface) -> None:
    """Bridge `name` exists, is up and holds exactly the gateway address (an address of an old
    podCIDR is removed). Idempotent."""
    info = await link_info(run, name)
    if info is None:
        await run_checked(run, ["ip", "link", "add", name, "address", bridge_mac(name, gateway.ip),
                                "type", "bridge"], tolerate=("File exists",))
        info = await link_info(run, name)
    kind = (info or {}).get("linkinfo", {}).get("info_kind")
    if kind != "bridge":
        raise NetworkError(f"link {name!r} exists but is not a bridge (kind {kind or 'unknown'}); "
                           "remove it or choose another bridge name")
    res = await run_checked(run, ["ip", "-j", "-4", "addr", "show", "dev", name])
    for link in json.loads(res.stdout or "[]"):
        for a in link.get("addr_info", []):
            have = ipaddress.IPv4Interface(f"{a['local']}/{a['prefixlen']}")
            if have != gateway:
                await run_checked(run, ["ip", "addr", "del", str(have), "dev", name],
                                  tolerate=("Cannot assign requested address",))
    await run_checked(run, ["ip", "addr", "replace", str(gateway), "dev", name])
    await run_checked(run, ["ip", "link", "set", name, "up"])


async def delete_bridge(run: Runner, name: str) -> None:
    await run_checked(run, ["ip", "link", "delete", name], tolerate=MISSING_LINK)
