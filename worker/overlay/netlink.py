"""The overlay's kernel side, with pyroute2: netlink messages from this process, never a
process per entry. It finds the underlay interface, keeps the VXLAN device, reads the routes,
neighbours and FDB entries the device holds and applies a peers.Plan to them.

It acts in the network namespace of the process (a node's, a lab VM's, a test's "node").
The agent only needs the four methods of `Netlink`; unit tests hand it a fake.
"""
from __future__ import annotations

import errno
import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from worker.overlay.peers import Entries, Fdb, Neigh, Plan, Route

log = logging.getLogger(__name__)

MAIN_TABLE = 254
RTPROT_KERNEL = 2
NUD_PERMANENT = 0x80
NUD_NOARP = 0x40
NTF_SELF = 0x02
AF_INET = 2
VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8


class OverlayError(Exception):
    """The kernel refused some of the overlay's entries."""


class UnderlayError(Exception):
    """The underlay interface or address cannot be chosen; the message names the flag to fix."""


@dataclass(frozen=True)
class Interface:
    name: str
    index: int
    mtu: int
    addrs: tuple[ipaddress.IPv4Address, ...]


@dataclass(frozen=True)
class Underlay:
    name: str
    index: int
    mtu: int
    ip: ipaddress.IPv4Address


@dataclass(frozen=True)
class VxlanSpec:
    name: str
    vni: int
    port: int
    local: ipaddress.IPv4Address
    link: int  # the underlay's ifindex
    mtu: int
    address: ipaddress.IPv4Address  # held as a /32
    mac: str


@dataclass(frozen=True)
class Device:
    index: int
    mac: str


def pick_underlay(interfaces: list[Interface], *, iface: str = "", node_ip: str = "",
                  default_iface: str = "") -> Underlay:
    """The interface and address the VXLAN packets leave by: --iface (its first IPv4 address,
    or --node-ip on it), else the interface holding --node-ip, else the default route's."""
    by_name = {i.name: i for i in interfaces}
    ip = ipaddress.IPv4Address(node_ip) if node_ip else None
    if iface:
        chosen = by_name.get(iface)
        if chosen is None:
            raise UnderlayError(f"--iface {iface}: no such interface (have: {', '.join(sorted(by_name))})")
        if ip is not None and ip not in chosen.addrs:
            raise UnderlayError(f"--node-ip {ip} is not an address of --iface {iface} "
                                f"(it has: {', '.join(map(str, chosen.addrs)) or 'none'})")
    elif ip is not None:
        chosen = next((i for i in interfaces if ip in i.addrs), None)
        if chosen is None:
            raise UnderlayError(f"--node-ip {ip}: no interface has this address; pass --iface")
    elif default_iface and default_iface in by_name:
        chosen = by_name[default_iface]
    else:
        raise UnderlayError("no default route to pick the underlay interface from: pass --iface or --node-ip")
    if ip is None:
        if not chosen.addrs:
            raise UnderlayError(f"--iface {chosen.name}: the interface has no IPv4 address")
        ip = chosen.addrs[0]
    return Underlay(chosen.name, chosen.index, chosen.mtu, ip)


def _attr(msg, name, default=None):
    v = msg.get(name)
    return default if v is None else v


class Netlink:
    """The real kernel. Each call opens its own netlink socket: a reconcile is a few dozen
    messages, and no socket outlives a failure."""

    def __init__(self, *, proc_sys: Path = Path("/proc/sys")):
        self.proc_sys = proc_sys

    async def interfaces(self) -> tuple[list[Interface], str]:
        """Every interface with its IPv4 addresses, and the name of the default route's."""
        async with AsyncIPRoute() as ipr:
            addrs: dict[int, list] = {}
            async for a in await ipr.addr("dump", family=AF_INET):
                addrs.setdefault(a["index"], []).append(ipaddress.IPv4Address(a.get("IFA_ADDRESS")))
            names, out = {}, []
            async for link in await ipr.link("dump"):
                names[link["index"]] = link.get("IFLA_IFNAME")
                out.append(Interface(link.get("IFLA_IFNAME"), link["index"], link.get("IFLA_MTU"),
                                     tuple(addrs.get(link["index"], ()))))
            default = ""
            async for r in await ipr.route("dump", family=AF_INET, table=MAIN_TABLE):
                if r["dst_len"] == 0 and r.get("RTA_OIF") in names:
                    default = names[r.get("RTA_OIF")]
                    break
            return out, default

    async def ensure_vxlan(self, spec: VxlanSpec) -> Device:
        """The device exists with exactly these attributes, is up and holds only its /32.
        An existing device whose VXLAN attributes differ (VNI, port, local IP, underlay) is
        deleted and made again, as flannel does; MTU, MAC and address are changed in place."""
        async with AsyncIPRoute() as ipr:
            index = await self._lookup(ipr, spec.name)
            if index is not None and not await self._compatible(ipr, index, spec):
                log.info("%s: VXLAN attributes differ from the wanted ones: recreating it", spec.name)
                await ipr.link("del", index=index)
                index = None
            if index is None:
                await ipr.link("add", ifname=spec.name, kind="vxlan", vxlan_id=spec.vni, vxlan_port=spec.port,
                               vxlan_local=str(spec.local), vxlan_link=spec.link, vxlan_learning=0,
                               mtu=spec.mtu, address=spec.mac)
                index = await self._lookup(ipr, spec.name)
            link = (await ipr.link("get", index=index))[0]
            # each only when it differs: setting the MAC, even to the same value, makes the
            # kernel flush the device's neighbour entries, permanent ones included
            if link.get("IFLA_MTU") != spec.mtu:
                await ipr.link("set", index=index, mtu=spec.mtu)
            if link.get("IFLA_ADDRESS") != spec.mac:
                await ipr.link("set", index=index, address=spec.mac)
            have = [a async for a in await ipr.addr("dump", family=AF_INET, index=index)]
            keep = False
            for a in have:
                if a.get("IFA_ADDRESS") == str(spec.address) and a["prefixlen"] == 32:
                    keep = True
                else:  # an address of an old podCIDR
                    await ipr.addr("del", index=index, address=a.get("IFA_ADDRESS"), prefixlen=a["prefixlen"])
            if not keep:
                await ipr.addr("add", index=index, address=str(spec.address), prefixlen=32)
            await ipr.link("set", index=index, state="up")
            return Device(index, spec.mac)

    async def _lookup(self, ipr, name: str) -> int | None:
        found = await ipr.link_lookup(ifname=name)
        return found[0] if found else None

    async def _compatible(self, ipr, index: int, spec: VxlanSpec) -> bool:
        info = (await ipr.link("get", index=index))[0].get("IFLA_LINKINFO")
        if info is None or info.get("IFLA_INFO_KIND") != "vxlan":
            return False
        data = info.get("IFLA_INFO_DATA")
        return (data.get("IFLA_VXLAN_ID") == spec.vni and data.get("IFLA_VXLAN_PORT") == spec.port
                and data.get("IFLA_VXLAN_LOCAL") == str(spec.local) and data.get("IFLA_VXLAN_LINK") == spec.link
                and not data.get("IFLA_VXLAN_LEARNING"))

    async def entries(self, index: int) -> Entries:
        """The IPv4 routes of the main table, the IPv4 neighbours and the FDB entries with a
        destination that the device holds (the kernel's own routes excepted)."""
        e = Entries()
        async with AsyncIPRoute() as ipr:
            async for r in await ipr.route("dump", family=AF_INET, table=MAIN_TABLE):
                if r.get("RTA_OIF") != index or r["proto"] == RTPROT_KERNEL or r.get("RTA_TABLE", MAIN_TABLE) != MAIN_TABLE:
                    continue
                dst = ipaddress.IPv4Network(f"{_attr(r, 'RTA_DST', '0.0.0.0')}/{r['dst_len']}")
                gw = ipaddress.IPv4Address(_attr(r, "RTA_GATEWAY", "0.0.0.0"))
                e.routes.append(Route(dst, gw, bool(r["flags"] & 0x04), _attr(r, "RTA_PRIORITY", 0)))
            async for n in await ipr.neigh("dump", family=AF_INET, ifindex=index):
                if n.get("NDA_DST") is None:
                    continue
                e.neighs.append(Neigh(ipaddress.IPv4Address(n.get("NDA_DST")), (n.get("NDA_LLADDR") or "").lower(),
                                      bool(n["state"] & NUD_PERMANENT)))
            async for f in await ipr.fdb("dump", ifindex=index):
                if f.get("NDA_DST") is None or f["ifindex"] != index:
                    continue
                e.fdbs.append(Fdb((f.get("NDA_LLADDR") or "").lower(), ipaddress.IPv4Address(f.get("NDA_DST"))))
        return e

    async def apply(self, index: int, p: Plan) -> None:
        """Deletes first (an entry already gone is fine), then adds as replaces, so that a
        second run, or one after a crash halfway, converges to the same state. An entry the
        kernel refuses does not stop the others; the first refusal is raised at the end (the
        pass is retried with backoff)."""
        errors: list[str] = []

        async def do(what: str, coro, *ok: int) -> None:
            try:
                await coro
            except NetlinkError as e:
                if e.code not in ok:
                    errors.append(f"{what}: {e.args[1] if len(e.args) > 1 else e}")

        async with AsyncIPRoute() as ipr:
            for r in p.delete.routes:
                await do(f"delete route {r.dst} via {r.gateway}", ipr.route(
                    "del", dst=str(r.dst), gateway=str(r.gateway), oif=index, priority=r.metric,
                    table=MAIN_TABLE), errno.ESRCH)
            for n in p.delete.neighs:
                await do(f"delete neighbour {n.ip}", ipr.neigh("del", dst=str(n.ip), lladdr=n.mac, ifindex=index),
                         errno.ENOENT)
            for f in p.delete.fdbs:
                await do(f"delete fdb {f.mac} dst {f.dst}", ipr.fdb("del", ifindex=index, lladdr=f.mac, dst=str(f.dst)),
                         errno.ENOENT)
            for f in p.add.fdbs:
                # replace, as flannel does: the kernel keeps one destination per unicast MAC
                # (an `append` of a second one succeeds and changes nothing)
                await do(f"add fdb {f.mac} dst {f.dst}", ipr.fdb(
                    "replace", ifindex=index, lladdr=f.mac, dst=str(f.dst), state=NUD_PERMANENT | NUD_NOARP,
                    flags=NTF_SELF))
            for n in p.add.neighs:
                await do(f"add neighbour {n.ip} lladdr {n.mac}", ipr.neigh(
                    "replace", dst=str(n.ip), lladdr=n.mac, ifindex=index, state=NUD_PERMANENT))
            for r in p.add.routes:
                await do(f"add route {r.dst} via {r.gateway}", ipr.route(
                    "replace", dst=str(r.dst), gateway=str(r.gateway), oif=index,
                    flags=["onlink"] if r.onlink else [], priority=r.metric, table=MAIN_TABLE))
        if errors:
            raise OverlayError(f"{len(errors)} of the overlay's entries could not be applied; first: {errors[0]}")

    def ensure_forwarding(self) -> None:
        """Packets between flannel.1 and the pods' bridge are forwarded by this node."""
        path = self.proc_sys / "net/ipv4/ip_forward"
        if path.read_text().strip() != "1":
            path.write_text("1\n")
